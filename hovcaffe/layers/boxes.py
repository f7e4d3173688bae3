"""Box arithmetic shared by the detection layers: prior boxes, decoding, overlap, greedy NMS.

Two box conventions meet here:

* SSD's *normalized* boxes (weiliu89/caffe `bbox_util.cpp`): corners in [0, 1] image units,
  width = xmax - xmin, and an overlap is 0 unless the intersection has a positive width and
  height;
* Faster R-CNN's *pixel* boxes (py-faster-rcnn `nms/py_cpu_nms.py`, `bbox_transform.py`):
  inclusive pixel corners, width = x2 - x1 + 1.

Arithmetic runs in float32 where the forks compute in `float`, so thresholds cut where theirs do.
Nothing here knows about layers or protos.
"""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

# PriorBoxParameter.CodeType values (SSD's caffe.proto numbers).
CORNER, CENTER_SIZE, CORNER_SIZE = 1, 2, 3
CODE_TYPE_NAMES = {CORNER: "CORNER", CENTER_SIZE: "CENTER_SIZE", CORNER_SIZE: "CORNER_SIZE"}


def expand_aspect_ratios(ratios: Sequence[float], flip: bool) -> list[float]:
    """SSD's prior aspect ratios: 1 first, then each new ratio (and 1/ratio when flipping).

    A ratio within 1e-6 of one already listed is skipped, as PriorBoxLayer::LayerSetUp does.
    """
    out = [1.0]
    for ar in ratios:
        ar = float(np.float32(ar))
        if any(abs(ar - have) < 1e-6 for have in out):
            continue
        out.append(ar)
        if flip:
            out.append(float(np.float32(1.0 / ar)))
    return out


def prior_box_sizes(min_sizes: Sequence[float], max_sizes: Sequence[float],
                    aspect_ratios: Sequence[float]) -> list[tuple[float, float]]:
    """(width, height) of the priors at one location, in SSD's order.

    Per min_size: the square min_size box, then the square sqrt(min_size * max_size) box when
    max sizes are given, then min_size * sqrt(ar) x min_size / sqrt(ar) for every ratio != 1.
    """
    f32 = np.float32
    sizes = []
    for s, min_size in enumerate(min_sizes):
        m = f32(min_size)
        sizes.append((m, m))
        if max_sizes:
            side = np.sqrt(f32(m * f32(max_sizes[s])), dtype=np.float32)
            sizes.append((side, side))
        for ar in aspect_ratios:
            if abs(ar - 1.0) < 1e-6:
                continue
            root = np.sqrt(f32(ar), dtype=np.float32)
            sizes.append((f32(m * root), f32(m / root)))
    return [(float(w), float(h)) for w, h in sizes]


def prior_boxes(layer_hw: tuple[int, int], image_hw: tuple[float, float],
                step_hw: tuple[float, float], offset: float, sizes: Sequence[tuple[float, float]],
                clip: bool, variances: Sequence[float]) -> np.ndarray:
    """PriorBox's top as a (2, H*W*P*4) float32 array: corners, then variances.

    Locations run row by row (h outer, w inner), priors within a location in `sizes` order,
    each as (xmin, ymin, xmax, ymax) divided by the image size. The centre of cell (h, w) is
    ((w + offset) * step_w, (h + offset) * step_h), computed in float as SSD does; the corner
    arithmetic then runs in double and is rounded once (SSD divides by `2.`).
    """
    f32 = np.float32
    lh, lw = layer_hw
    img_h, img_w = float(image_hw[0]), float(image_hw[1])
    cx = (np.arange(lw, dtype=np.float32) + f32(offset)) * f32(step_hw[1])
    cy = (np.arange(lh, dtype=np.float32) + f32(offset)) * f32(step_hw[0])
    wh = np.asarray(sizes, dtype=np.float64)                       # (P, 2)
    cxg = np.broadcast_to(cx.astype(np.float64)[None, :, None], (lh, lw, len(sizes)))
    cyg = np.broadcast_to(cy.astype(np.float64)[:, None, None], (lh, lw, len(sizes)))
    half_w, half_h = wh[:, 0] / 2.0, wh[:, 1] / 2.0
    corners = np.stack([(cxg - half_w) / img_w, (cyg - half_h) / img_h,
                        (cxg + half_w) / img_w, (cyg + half_h) / img_h], axis=-1).astype(np.float32)
    if clip:
        np.clip(corners, 0.0, 1.0, out=corners)
    corners = corners.reshape(-1)
    var = np.asarray(variances, dtype=np.float32)
    variance = np.tile(var, corners.size // 4) if var.size == 4 else np.full_like(corners, var[0])
    return np.stack([corners, variance])


def decode_boxes(loc: torch.Tensor, priors: torch.Tensor, variances: torch.Tensor,
                 code_type: int, variance_encoded_in_target: bool) -> torch.Tensor:
    """SSD's DecodeBBox for every prior: `loc` (..., P, 4) offsets -> (..., P, 4) corners.

    `priors` and `variances` are (P, 4). With `variance_encoded_in_target` the variances are
    taken as already applied (1 everywhere).
    """
    var = torch.ones_like(variances) if variance_encoded_in_target else variances
    pxmin, pymin, pxmax, pymax = priors.unbind(-1)
    lx0, ly0, lx1, ly1 = loc.unbind(-1)
    v0, v1, v2, v3 = var.unbind(-1)
    if code_type == CORNER:
        out = (pxmin + v0 * lx0, pymin + v1 * ly0, pxmax + v2 * lx1, pymax + v3 * ly1)
    elif code_type in (CENTER_SIZE, CORNER_SIZE):
        pw, ph = pxmax - pxmin, pymax - pymin
        if code_type == CORNER_SIZE:
            out = (pxmin + v0 * lx0 * pw, pymin + v1 * ly0 * ph,
                   pxmax + v2 * lx1 * pw, pymax + v3 * ly1 * ph)
        else:
            pcx, pcy = (pxmin + pxmax) / 2, (pymin + pymax) / 2
            cx, cy = v0 * lx0 * pw + pcx, v1 * ly0 * ph + pcy
            w, h = torch.exp(v2 * lx1) * pw, torch.exp(v3 * ly1) * ph
            out = (cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2)
    else:
        raise ValueError(f"unknown code_type {code_type}")
    return torch.stack(out, dim=-1)


def pairwise_overlaps(a: np.ndarray, b: np.ndarray, *, pixel: bool = False) -> np.ndarray:
    """Jaccard overlap of each of `a` (N, 4) with each of `b` (M, 4): (N, M) in b's dtype.

    Normalized (SSD): sizes are xmax - xmin (0 for an inverted box), no overlap unless the
    intersection is positive in both directions. Pixel (py-faster-rcnn): sizes get + 1.
    """
    one = b.dtype.type(1 if pixel else 0)
    a, b = a[:, None, :], b[None, :, :]
    iw = np.minimum(a[..., 2], b[..., 2]) - np.maximum(a[..., 0], b[..., 0]) + one
    ih = np.minimum(a[..., 3], b[..., 3]) - np.maximum(a[..., 1], b[..., 1]) + one
    if pixel:
        inter = np.maximum(iw, 0) * np.maximum(ih, 0)
        area_a = (a[..., 2] - a[..., 0] + one) * (a[..., 3] - a[..., 1] + one)
        area_b = (b[..., 2] - b[..., 0] + one) * (b[..., 3] - b[..., 1] + one)
        return inter / (area_a + area_b - inter)
    positive = (iw > 0) & (ih > 0)
    inter = np.where(positive, iw * ih, 0).astype(b.dtype)
    union = _size(a) + _size(b) - inter
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(positive, inter / np.where(positive, union, 1), 0).astype(b.dtype)


def overlaps(box: np.ndarray, boxes: np.ndarray, *, pixel: bool = False) -> np.ndarray:
    """Jaccard overlap of one box (4,) with each of `boxes` (K, 4) (see `pairwise_overlaps`)."""
    return pairwise_overlaps(np.asarray(box)[None], boxes, pixel=pixel)[0]


def _size(boxes: np.ndarray) -> np.ndarray:
    w, h = boxes[..., 2] - boxes[..., 0], boxes[..., 3] - boxes[..., 1]
    return np.where((w < 0) | (h < 0), 0, w * h).astype(boxes.dtype)


# Up to this many candidates NMS first computes all their overlaps at once (16 MB of float32).
MATRIX_NMS_LIMIT = 2048


def greedy_nms(boxes: np.ndarray, order: np.ndarray, threshold: float, *, eta: float = 1.0,
               pixel: bool = False) -> list[int]:
    """Indices kept by greedy NMS over candidates `order` (best first).

    A candidate is kept when its overlap with every kept box is <= the current threshold.
    With eta < 1 the threshold shrinks by eta after each kept box while it is above 0.5 (SSD's
    adaptive NMS); a candidate is then checked against all kept boxes with the threshold of
    its own turn, as ApplyNMSFast does.
    """
    thr = float(np.float32(threshold))
    order = np.asarray(order, dtype=np.int64)
    if eta >= 1 and order.size <= MATRIX_NMS_LIMIT:
        cand = boxes[order]
        above = pairwise_overlaps(cand, cand, pixel=pixel) > thr
        suppressed = np.zeros(order.size, bool)
        picked = []
        for k in range(order.size):
            if not suppressed[k]:
                picked.append(k)
                suppressed |= above[k]
        return order[picked].tolist()
    kept: list[int] = []
    remaining = order
    while remaining.size:
        i = int(remaining[0])
        rest = remaining[1:]
        if eta < 1 and kept and overlaps(boxes[i], boxes[kept], pixel=pixel).max() > thr:
            remaining = rest
            continue
        kept.append(i)
        if rest.size:
            # Thresholds only shrink, so what this box suppresses now stays suppressed.
            remaining = rest[overlaps(boxes[i], boxes[rest], pixel=pixel) <= thr]
        else:
            remaining = rest
        if eta < 1 and thr > 0.5:
            thr = float(np.float32(thr * eta))
    return kept


def top_scores(scores: np.ndarray, threshold: float, top_k: int) -> np.ndarray:
    """Indices of scores > threshold, best first (stable among equals), at most top_k (-1: all)."""
    idx = np.nonzero(scores > np.float32(threshold))[0]
    idx = idx[np.argsort(-scores[idx], kind="stable")]
    return idx[:top_k] if top_k > -1 else idx


def anchors(base_size: int, ratios: Sequence[float], scales: Sequence[float]) -> np.ndarray:
    """py-faster-rcnn's `generate_anchors`: (len(ratios) * len(scales), 4) pixel boxes.

    Centred on the base cell ((base_size - 1) / 2), one aspect ratio at a time (scales inner);
    widths and heights rounded half to even as numpy's `round` does.
    """
    size = float(base_size)
    ctr = (size - 1) / 2
    out = []
    for ratio in ratios:
        ws = np.round(math.sqrt(size * size / ratio))
        hs = np.round(ws * ratio)
        for scale in scales:
            w, h = ws * scale, hs * scale
            out.append([ctr - (w - 1) / 2, ctr - (h - 1) / 2, ctr + (w - 1) / 2, ctr + (h - 1) / 2])
    return np.asarray(out, dtype=np.float64)


def apply_deltas_pixel(boxes: np.ndarray, deltas: np.ndarray) -> np.ndarray:
    """py-faster-rcnn's `bbox_transform_inv` (pixel boxes, width = x2 - x1 + 1), in float32."""
    boxes = boxes.astype(np.float32)
    deltas = deltas.astype(np.float32)
    one, half = np.float32(1), np.float32(0.5)
    widths = boxes[:, 2] - boxes[:, 0] + one
    heights = boxes[:, 3] - boxes[:, 1] + one
    ctr_x = boxes[:, 0] + half * widths
    ctr_y = boxes[:, 1] + half * heights
    cx = deltas[:, 0] * widths + ctr_x
    cy = deltas[:, 1] * heights + ctr_y
    w = np.exp(deltas[:, 2]) * widths
    h = np.exp(deltas[:, 3]) * heights
    return np.stack([cx - half * w, cy - half * h, cx + half * w, cy + half * h], axis=1)
