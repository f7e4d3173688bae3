"""SSD's training-side box arithmetic: ground-truth rows, prior matching and box encoding.

Facts from weiliu89/caffe (branch ssd, `bbox_util.cpp`), shared by MultiBoxLoss and
DetectionEvaluate; the overlap itself and decoding live in `hovcaffe.layers.boxes`.

* Ground truth is a (1, 1, N, 8) blob of rows [item_id, label, instance_id, xmin, ymin, xmax,
  ymax, difficult] (what SSD's AnnotatedData layer emits); item_id -1 marks a padding row.
* Matching (`MatchBBox`): overlaps <= 1e-6 count as none. Bipartite first: repeatedly the
  largest remaining (prior, gt) overlap among unmatched priors and unused ground truths, ties to
  the lowest prior, then the lowest gt. PER_PREDICTION then gives every still unmatched prior
  its best gt with overlap >= overlap_threshold. A prior's *match overlap* is its largest
  overlap with any gt (hard-negative mining reads it), or the overlap of the gt it was given.
* Encoding (`EncodeBBox`) is the inverse of `boxes.decode_boxes` for CORNER, CENTER_SIZE and
  CORNER_SIZE; with `encode_variance_in_target` the variances are not divided out here.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from hovcaffe.layers import boxes

BIPARTITE, PER_PREDICTION = 0, 1      # MultiBoxLossParameter.MatchType
GT_WIDTH = 8                          # columns of a ground-truth row
NO_MATCH, CROSS_BOUNDARY = -1, -2     # match index of an unmatched / ignored prior
_MIN_OVERLAP = 1e-6

f32 = np.float32


@dataclass
class GroundTruth:
    """One image's ground-truth boxes, in the order of their rows."""

    boxes: np.ndarray       # (G, 4) float32 corners
    labels: np.ndarray      # (G,) int64
    difficult: np.ndarray   # (G,) bool


def ground_truth(gt: torch.Tensor, *, background_label_id: int, use_difficult_gt: bool,
                 where: str) -> dict[int, GroundTruth]:
    """Images -> their boxes, from the (1, 1, N, 8) ground-truth blob (SSD's GetGroundTruth).

    Raises ValueError naming `where` when a row carries the background label (SSD aborts).
    """
    rows = gt.detach().to(torch.float32).reshape(-1, GT_WIDTH).cpu().numpy()
    out: dict[int, list[np.ndarray]] = {}
    for row in rows:
        item = int(row[0])
        if item == -1:
            continue
        label = int(row[1])
        if label == background_label_id:
            raise ValueError(f"{where}: ground-truth row {row.tolist()} has the background label "
                             f"{background_label_id}")
        if not use_difficult_gt and bool(row[7]):
            continue
        out.setdefault(item, []).append(row)
    return {item: GroundTruth(np.stack(r)[:, 3:7].astype(f32), np.stack(r)[:, 1].astype(np.int64),
                              np.stack(r)[:, 7] != 0)
            for item, r in out.items()}


def overlap_matrix(pred: np.ndarray, gt: np.ndarray) -> np.ndarray:
    """(P, G) Jaccard overlaps of normalized boxes, float32 as SSD computes them."""
    if len(gt) == 0:
        return np.zeros((len(pred), 0), dtype=f32)
    return np.stack([boxes.overlaps(g, pred) for g in gt], axis=1).astype(f32)


def cross_boundary(pred: np.ndarray) -> np.ndarray:
    """(P,) True where a box has a corner outside [0, 1] (SSD's IsCrossBoundaryBBox)."""
    return ((pred < 0) | (pred > 1)).any(axis=1)


def match_priors(gt: np.ndarray, pred: np.ndarray, match_type: int, overlap_threshold: float,
                 ignore_cross_boundary: bool = False) -> tuple[np.ndarray, np.ndarray]:
    """SSD's MatchBBox of `pred` (P, 4) boxes (priors, or decoded predictions) to `gt` (G, 4).

    Returns (match index per prior: a gt row, NO_MATCH or CROSS_BOUNDARY; match overlap per
    prior, float32), as described in the module docstring.
    """
    num_pred = len(pred)
    match = np.full(num_pred, NO_MATCH, dtype=np.int64)
    match_overlap = np.zeros(num_pred, dtype=f32)
    if len(gt) == 0:
        return match, match_overlap
    ov = overlap_matrix(pred, gt)
    if ignore_cross_boundary:
        ignored = cross_boundary(pred)
        match[ignored] = CROSS_BOUNDARY
        ov[ignored] = 0
    present = ov > _MIN_OVERLAP
    match_overlap[:] = np.where(present, ov, 0).max(axis=1)
    # Bipartite: the best remaining pair, first in (prior, gt) order among equals (argmax of a
    # row-major matrix returns the first maximum, as SSD's scan with a strict > keeps it).
    pool = np.ones(len(gt), dtype=bool)
    while pool.any():
        free = (match == NO_MATCH)[:, None] & pool[None, :] & present
        if not free.any():
            break
        i, j = np.unravel_index(int(np.argmax(np.where(free, ov, -1))), ov.shape)
        match[i] = j
        match_overlap[i] = ov[i, j]
        pool[j] = False
    if match_type == PER_PREDICTION:
        good = present & (ov >= f32(overlap_threshold)) & (match == NO_MATCH)[:, None]
        rows = np.nonzero(good.any(axis=1))[0]
        best = np.argmax(np.where(good[rows], ov[rows], -1), axis=1)
        match[rows] = best
        match_overlap[rows] = ov[rows, best]
    elif match_type != BIPARTITE:
        raise ValueError(f"unknown match_type {match_type}")
    return match, match_overlap


def encode_boxes(gt: np.ndarray, priors: np.ndarray, variances: np.ndarray, code_type: int,
                 encode_variance_in_target: bool) -> np.ndarray:
    """SSD's EncodeBBox of ground truths `gt` (K, 4) against their priors (K, 4): (K, 4) float32.

    Raises ValueError for a prior or (CENTER_SIZE) a box of zero or negative width or height,
    where SSD's CHECK_GT aborts.
    """
    gt = gt.astype(f32)
    priors = priors.astype(f32)
    var = np.ones_like(priors) if encode_variance_in_target else variances.astype(f32)
    if code_type == boxes.CORNER:
        return ((gt - priors) / var).astype(f32)
    pw, ph = priors[:, 2] - priors[:, 0], priors[:, 3] - priors[:, 1]
    if (pw <= 0).any() or (ph <= 0).any():
        raise ValueError("a matched prior box has zero or negative width or height")
    if code_type == boxes.CORNER_SIZE:
        size = np.stack([pw, ph, pw, ph], axis=1)
        return ((gt - priors) / size / var).astype(f32)
    if code_type != boxes.CENTER_SIZE:
        raise ValueError(f"unknown code_type {code_type}")
    bw, bh = gt[:, 2] - gt[:, 0], gt[:, 3] - gt[:, 1]
    if (bw <= 0).any() or (bh <= 0).any():
        raise ValueError("a ground-truth box has zero or negative width or height")
    # Centres: a float sum halved in double and stored as float, as SSD writes `/ 2.`.
    pcx = ((priors[:, 0] + priors[:, 2]).astype(np.float64) / 2).astype(f32)
    pcy = ((priors[:, 1] + priors[:, 3]).astype(np.float64) / 2).astype(f32)
    bcx = ((gt[:, 0] + gt[:, 2]).astype(np.float64) / 2).astype(f32)
    bcy = ((gt[:, 1] + gt[:, 3]).astype(np.float64) / 2).astype(f32)
    out = np.stack([(bcx - pcx) / pw / var[:, 0], (bcy - pcy) / ph / var[:, 1],
                    np.log(bw / pw) / var[:, 2], np.log(bh / ph) / var[:, 3]], axis=1)
    return out.astype(f32)
