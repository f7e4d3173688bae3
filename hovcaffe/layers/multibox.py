"""SSD's MultiBoxLoss (weiliu89/caffe, branch ssd: `multibox_loss_layer.cpp`, `bbox_util.cpp`).

Bottoms: loc (N, P*4), conf (N, P*C), priors (1, 2, P*4) from PriorBox, ground truth
(1, 1, G, 8) rows (see `box_matching`). Per image with ground truth:

1. match the priors (or, with use_prior_for_matching false, the decoded predictions) to the
   ground truth: bipartite, then PER_PREDICTION with overlap_threshold;
2. MAX_NEGATIVE mining: the confidence loss of every prior against its target (background for
   unmatched priors) ranks the eligible negatives (unmatched, match overlap < neg_overlap);
   the top int(num_pos * neg_pos_ratio) are kept. Images without ground truth give nothing.
   With mining NONE every prior of every image counts, unmatched ones as background;
3. localisation: the matched priors' predictions against the encoded ground truth, smooth L1
   (|d| < 1: d^2 / 2, else |d| - 1/2) or L2 (d^2 / 2), summed; with encode_variance_in_target
   both sides are divided by the prior variances;
4. confidence: softmax cross-entropy (-log max(p, FLT_MIN)) or logistic (sigmoid
   cross-entropy over all C outputs, one-hot targets), summed over the selected priors;
5. loss = (loc_weight * loc + conf) / normalizer, with LossParameter's normalization over
   (N, P, matches): FULL N*P, VALID the number of matches, BATCH_SIZE N, NONE 1; at least 1.

The gradient flows to loc and conf only (the selections are fixed by the inputs); priors and
ground truth get none, as the fork's Backward refuses them. Not built here (refused at build
time): share_location false, mining_type HARD_EXAMPLE, and mining with nms_param.

LOGISTIC with mining NONE: the fork fills the targets with background_label_id (0 in every
published net) and sets a 1 only for matched priors, so unmatched priors have all-zero targets;
we do the same. Its code then writes image i > 0's targets at the wrong offset (the pointer
advances by P, not P*C); we follow the evident intent: each image's targets at its own priors.
Equal losses in the negative ranking keep prior order (the fork's std::sort leaves them open).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import HovcaffeError
from hovcaffe.layers import box_matching as bm
from hovcaffe.layers import boxes
from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.common import shape_text
from hovcaffe.layers.detection import check_head_shapes
from hovcaffe.layers.loss import _FLT_MIN_NLL, _keep_value_pass_grad
from hovcaffe.layers.registry import register_layer

_P = caffe_pb2.MultiBoxLossParameter
_Norm = caffe_pb2.LossParameter
f32 = np.float32


def normalizer(mode: int, num: int, num_priors: int, num_matches: int) -> float:
    """Caffe's LossLayer::GetNormalizer as MultiBoxLoss calls it (valid count = matches)."""
    value = {_Norm.FULL: num * num_priors, _Norm.VALID: num_matches,
             _Norm.BATCH_SIZE: num, _Norm.NONE: 1}[mode]
    return float(max(1, value))


def _softmax_nll(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Per-row -log(max(softmax[label], FLT_MIN)), with the unclamped gradient (Caffe's)."""
    nll = -F.log_softmax(logits, dim=1).gather(1, labels[:, None])[:, 0]
    return _keep_value_pass_grad(nll, nll.clamp(max=_FLT_MIN_NLL))


def _logistic_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-row sigmoid cross-entropy summed over the classes."""
    return F.binary_cross_entropy_with_logits(logits, targets, reduction="none").sum(dim=1)


@register_layer("MultiBoxLoss")
class MultiBoxLoss(CaffeLayer):
    """SSD's localisation + confidence loss over matched and mined priors; see the module doc."""

    is_loss = True
    no_grad_bottoms = (2, 3)   # priors, ground truth

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 4)
        self.expect_tops(0, 1)
        p = param.multibox_loss_param
        if not p.HasField("num_classes") or p.num_classes < 1:
            raise self.param_error("multibox_loss_param needs num_classes >= 1")
        self.num_classes = int(p.num_classes)
        self.background = int(p.background_label_id)
        if not p.share_location:
            raise self.param_error("share_location: false is not supported (per-class "
                                   "locations); SSD and MobileNet-SSD share them")
        self.mining = int(p.mining_type)
        if p.HasField("do_neg_mining") and p.do_neg_mining != (self.mining != _P.NONE):
            raise self.param_error(f"do_neg_mining: {str(p.do_neg_mining).lower()} contradicts "
                                   f"mining_type {_P.MiningType.Name(self.mining)} (the fork "
                                   f"aborts on this; do_neg_mining is deprecated)")
        if self.mining == _P.HARD_EXAMPLE:
            raise self.param_error("mining_type HARD_EXAMPLE is not supported; use MAX_NEGATIVE "
                                   "or NONE")
        if self.mining != _P.NONE and p.HasField("nms_param") and p.nms_param.nms_threshold > 0:
            raise self.param_error("negative mining with nms_param is not supported")
        if p.code_type not in boxes.CODE_TYPE_NAMES:
            raise self.param_error(f"unknown code_type {p.code_type}")
        if p.map_object_to_agnostic and self.num_classes != 2:
            raise self.param_error(f"map_object_to_agnostic needs num_classes 2, got "
                                   f"{self.num_classes}")
        if not 0 <= self.background < self.num_classes:
            raise self.param_error(f"background_label_id {self.background} is outside "
                                   f"[0, {self.num_classes})")
        self.p = p
        lp = param.loss_param
        if not lp.HasField("normalization") and lp.HasField("normalize"):
            self.normalization = _Norm.VALID if lp.normalize else _Norm.BATCH_SIZE
        else:
            self.normalization = lp.normalization
        down = list(param.propagate_down)
        self.use_loc = down[0] if down else True
        self.use_conf = down[1] if len(down) > 1 else True
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        loc, conf, prior, gt = bottom_shapes
        check_head_shapes(self, loc, conf, prior, self.num_classes, 1)
        if len(gt) != 4 or gt[3] != bm.GT_WIDTH:
            raise self.shape_error(f"bottom 3 must be ground truth (1, 1, G, 8), got "
                                   f"{shape_text(gt)}")
        return [()]

    # ------------------------------------------------------------------------------ selection
    def _targets(self, gt: bm.GroundTruth, match: np.ndarray) -> np.ndarray:
        """Per-prior class targets: the matched box's label (or the agnostic 1), else background."""
        labels = np.full(len(match), self.background, dtype=np.int64)
        hit = match > -1
        labels[hit] = self.background + 1 if self.p.map_object_to_agnostic else gt.labels[match[hit]]
        return labels

    def _row_conf_loss(self, conf: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        if self.p.conf_loss_type == _P.SOFTMAX:
            return _softmax_nll(conf, labels)
        return _logistic_loss(conf, F.one_hot(labels, self.num_classes).to(conf.dtype))

    def select(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor,
               gt_blob: torch.Tensor):
        """The fork's matching and mining: per image, (match, match overlap, negatives).

        Returns (ground truth per image, [(image, match indices, negative prior indices)]).
        """
        p = self.p
        n = loc.shape[0]
        num_priors = prior.shape[2] // 4
        pri = prior[0].detach().to(torch.float32).reshape(2, num_priors, 4)
        pri_np, var_np = pri[0].cpu().numpy(), pri[1].cpu().numpy()
        try:
            truth = bm.ground_truth(gt_blob, background_label_id=self.background,
                                    use_difficult_gt=bool(p.use_difficult_gt), where=self.where())
        except ValueError as e:
            raise HovcaffeError(str(e)) from None
        conf_d = conf.detach().to(torch.float32).reshape(n, num_priors, self.num_classes)
        picks = []
        for i in sorted(t for t in truth if 0 <= t < n):
            gt = truth[i]
            if p.use_prior_for_matching:
                candidates = pri_np
            else:
                candidates = boxes.decode_boxes(
                    loc[i].detach().to(torch.float32).reshape(num_priors, 4), pri[0], pri[1],
                    int(p.code_type), bool(p.encode_variance_in_target)).cpu().numpy()
            match, overlap = bm.match_priors(gt.boxes, candidates, int(p.match_type),
                                             float(p.overlap_threshold),
                                             bool(p.ignore_cross_boundary_bbox))
            negatives = np.zeros(0, dtype=np.int64)
            if self.mining == _P.MAX_NEGATIVE:
                labels = torch.from_numpy(self._targets(gt, match))
                loss = self._row_conf_loss(conf_d[i], labels).numpy().astype(f32)
                eligible = np.nonzero((match == bm.NO_MATCH) & (overlap < f32(p.neg_overlap)))[0]
                num_pos = int((match > -1).sum())
                keep = min(int(f32(num_pos) * f32(p.neg_pos_ratio)), len(eligible))
                # Highest loss first, prior order among equals.
                order = np.argsort(-loss[eligible], kind="stable")[:keep]
                negatives = np.sort(eligible[order])
            picks.append((i, match, negatives, candidates))
        return truth, picks, pri_np, var_np

    # -------------------------------------------------------------------------------- forward
    def forward(self, loc: torch.Tensor, conf: torch.Tensor, prior: torch.Tensor,
                gt_blob: torch.Tensor) -> list[torch.Tensor]:
        p = self.p
        n = loc.shape[0]
        num_priors = prior.shape[2] // 4
        truth, picks, pri_np, var_np = self.select(loc, conf, prior, gt_blob)
        loc_v = loc.reshape(n, num_priors, 4)
        conf_v = conf.reshape(n, num_priors, self.num_classes)
        num_matches = sum(int((m > -1).sum()) for _, m, _, _ in picks)
        zero = loc.new_zeros(())

        loc_loss = zero
        if num_matches:
            preds, targets = [], []
            for i, match, _, candidates in picks:
                idx = np.nonzero(match > -1)[0]
                enc = bm.encode_boxes(truth[i].boxes[match[idx]], pri_np[idx], var_np[idx],
                                      int(p.code_type), bool(p.encode_variance_in_target))
                target = torch.from_numpy(enc).to(loc.dtype)
                pred = loc_v[i, torch.from_numpy(idx)]
                if p.bp_inside:
                    # Coordinates of the matched box outside the image learn nothing.
                    outside = torch.from_numpy((candidates[idx] < 0) | (candidates[idx] > 1))
                    pred = torch.where(outside, target, pred)
                if p.encode_variance_in_target:
                    v = torch.from_numpy(var_np[idx]).to(loc.dtype)
                    pred, target = pred / v, target / v
                preds.append(pred)
                targets.append(target)
            d = torch.cat(preds) - torch.cat(targets)
            if p.loc_loss_type == _P.SMOOTH_L1:
                a = d.abs()
                loc_loss = torch.where(a < 1, 0.5 * d * d, a - 0.5).sum()
            else:
                loc_loss = 0.5 * (d * d).sum()

        if self.mining != _P.NONE:
            rows, labels = [], []
            for i, match, negatives, _ in picks:
                target = self._targets(truth[i], match)
                pos = np.nonzero(match > -1)[0]
                sel = np.concatenate([pos, negatives])
                rows.append(conf_v[i, torch.from_numpy(sel)])
                labels.append(torch.from_numpy(target[sel]))
            conf_rows = torch.cat(rows) if rows else conf_v.new_zeros((0, self.num_classes))
            conf_labels = torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long)
        else:
            label_grid = np.full((n, num_priors), self.background, dtype=np.int64)
            for i, match, _, _ in picks:
                label_grid[i] = self._targets(truth[i], match)
            conf_rows = conf_v.reshape(-1, self.num_classes)
            conf_labels = torch.from_numpy(label_grid.reshape(-1))
        if self.mining == _P.NONE and p.conf_loss_type == _P.LOGISTIC:
            # The fork's targets start at 0 (background_label_id 0) and only matched priors
            # get a 1: unmatched priors have no positive class at all here.
            onehot = F.one_hot(conf_labels, self.num_classes).to(conf.dtype)
            onehot[conf_labels == self.background] = 0
            conf_loss = _logistic_loss(conf_rows, onehot).sum()
        elif len(conf_labels):
            conf_loss = self._row_conf_loss(conf_rows, conf_labels).sum()
        else:
            conf_loss = zero

        z = normalizer(self.normalization, n, num_priors, num_matches)
        total = zero
        if self.use_loc:
            total = total + float(f32(p.loc_weight)) * loc_loss / z
        if self.use_conf:
            total = total + conf_loss / z
        return [total]
