"""Softmax, the loss layers and Accuracy, with Caffe's normalisation and gradients.

The rules: docs/caffe-semantics.md#softmax-losses-and-accuracy.

Every loss layer returns its *normalised* loss as a 0-d tensor; the net multiplies by
`loss_weight`. Gradients come from autograd and equal Caffe's closed forms, including where
Caffe clamps a probability in the forward pass but not in the backward (SoftmaxWithLoss's
FLT_MIN, InfogainLoss's 1e-20): there the clamped value is used and the unclamped gradient kept.
Labels are float tensors holding integers; they are cast by truncation toward zero (C's
static_cast<int>) and never receive gradients (Caffe aborts if asked to backpropagate to them).
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import DataSourceError, HovcaffeError
from hovcaffe.layers.base import CaffeLayer
from hovcaffe.layers.common import count, eager, shape_text
from hovcaffe.layers.registry import register_layer

_Norm = caffe_pb2.LossParameter
# -log(FLT_MIN) and log(1e-20) in float32, Caffe's clamps inside log().
_FLT_MIN_NLL = float(-np.log(np.float32(np.finfo(np.float32).tiny)))
_LOG_THRESHOLD = float(np.log(np.float32(1e-20)))


def _keep_value_pass_grad(x: torch.Tensor, value: torch.Tensor) -> torch.Tensor:
    """`value` in the forward pass, but the gradient of `x` (for Caffe's clamp-in-forward-only)."""
    return x + (value - x).detach()


def _labels(label: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """Labels as int64, truncated toward zero, detached, reshaped to `shape`."""
    return label.detach().reshape(shape).to(torch.long)


class LossBase(CaffeLayer):
    """Common loss-layer rules: a 0-d top, matching batch sizes, ignore_label, normalisation."""

    is_loss = True

    #: mode used when neither `normalization` nor legacy `normalize` is set
    default_normalization = _Norm.VALID
    min_bottoms, max_bottoms = 2, 2
    max_tops = 1

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, self.min_bottoms, self.max_bottoms)
        self.num_tops = self.expect_tops(0, self.max_tops)  # Caffe adds an anonymous top to none
        lp = param.loss_param
        self.ignore_label = lp.ignore_label if lp.HasField("ignore_label") else None
        if lp.HasField("normalization"):
            self.normalization = lp.normalization
        elif lp.HasField("normalize"):
            self.normalization = _Norm.VALID if lp.normalize else _Norm.BATCH_SIZE
        else:
            self.normalization = self.default_normalization
        a, b = bottom_shapes[0], bottom_shapes[1]
        if len(a) == 0 or len(b) == 0 or a[0] != b[0]:
            raise self.shape_error(f"bottoms 0 {shape_text(a)} and 1 {shape_text(b)} must have the "
                                   f"same first dim (the batch)")

    def output_shapes(self, bottom_shapes):
        return [()] + [tuple(bottom_shapes[0])] * (self.num_tops - 1)

    def normalizer(self, full: int, batch: int, valid: torch.Tensor | int) -> torch.Tensor | float:
        """Caffe's get_normalizer, clamped to >= 1 so an all-ignored batch gives 0, not NaN."""
        if self.normalization == _Norm.FULL:
            return float(max(1, full))
        if self.normalization == _Norm.VALID:
            if self.ignore_label is None:
                return float(max(1, full))
            return valid.clamp(min=1) if isinstance(valid, torch.Tensor) else float(max(1, valid))
        if self.normalization == _Norm.BATCH_SIZE:
            return float(max(1, batch))
        return 1.0

    def valid_mask(self, labels: torch.Tensor) -> torch.Tensor:
        if self.ignore_label is None:
            return torch.ones_like(labels, dtype=torch.bool)
        return labels != self.ignore_label


def check_label_range(layer: CaffeLayer, labels: torch.Tensor, valid: torch.Tensor,
                      num_classes: int) -> None:
    """Caffe leaves out-of-range labels undefined (release builds); we say so instead.

    On CPU the error names the first bad label. On other devices reading the result back would
    stall every step on a host synchronisation, so the check is a device-side assertion instead
    (it fails the next synchronising call, with the layer and the range but not the value).
    """
    if not eager():
        return
    bad = valid & ((labels < 0) | (labels >= num_classes))
    if labels.device.type != "cpu":
        torch._assert_async(~bad.any(), f"{layer.where()}: a label is outside [0, {num_classes})")
        return
    if bool(bad.any()):
        ignore = getattr(layer, "ignore_label", None)
        also = "" if ignore is None else f" and is not the ignore_label ({ignore})"
        raise HovcaffeError(f"{layer.where()}: label {labels[bad][0].item()} is outside "
                            f"[0, {num_classes}){also}")


def _split_axis(x_shape, axis: int) -> tuple[int, int, int]:
    """(outer, channels, inner) around `axis`."""
    return count(x_shape, 0, axis), x_shape[axis], count(x_shape, axis + 1)


@register_layer("Softmax")
class Softmax(CaffeLayer):
    """Softmax over `softmax_param.axis` (default 1, not the last dim)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        self.canon(param.softmax_param.axis, len(bottom_shapes[0]))

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        return [F.softmax(x, dim=self.canon(self.param.softmax_param.axis, x.dim()))]


class _SoftmaxLossBase(LossBase):
    """Shared shape rules of SoftmaxWithLoss and InfogainLoss: label count = outer * inner."""

    no_grad_bottoms = (1,)  # the labels

    max_tops = 2

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        if self.num_tops == 2 and len(param.loss_weight) != 2:
            raise self.param_error("a loss layer with 2 tops (loss, prob) needs two loss_weight "
                                   "values, usually 1 and 0")
        x = bottom_shapes[0]
        outer, _, inner = _split_axis(x, self.canon(self.axis, len(x)))
        if outer * inner != count(bottom_shapes[1]):
            raise self.shape_error(f"label count {count(bottom_shapes[1])} {shape_text(bottom_shapes[1])} "
                                   f"must equal outer*inner = {outer * inner} of scores {shape_text(x)}")

    axis: int

    def log_probs(self, x: torch.Tensor, label: torch.Tensor):
        """(log p as (outer, C, inner), labels (outer, inner), valid mask, outer, inner)."""
        axis = self.canon(self.axis, x.dim())
        outer, channels, inner = _split_axis(tuple(x.shape), axis)
        logp = F.log_softmax(x.reshape(outer, channels, inner), dim=1)
        labels = _labels(label, (outer, inner))
        valid = self.valid_mask(labels)
        check_label_range(self, labels, valid, channels)
        return logp, torch.where(valid, labels, 0), valid, outer, inner

    def prob_top(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Caffe's backward reads only top[0]'s diff: the probability top carries no gradient.
        if self.num_tops < 2:
            return []
        axis = self.canon(self.axis, x.dim())
        return [F.softmax(x.detach(), dim=axis)]


@register_layer("SoftmaxWithLoss")
class SoftmaxWithLoss(_SoftmaxLossBase):
    """L = -(1/Z) sum over valid positions of log(max(p[label], FLT_MIN)); dL/dx = (p - onehot)/Z.

    SegNet's fork: with loss_param.weight_by_label_freqs each position's term is multiplied by
    class_weighting[label] (one value per class); Z is unchanged.
    """

    def __init__(self, param, bottom_shapes, phase):
        self.axis = param.softmax_param.axis
        super().__init__(param, bottom_shapes, phase)
        lp = param.loss_param
        self.class_weights = None
        if lp.weight_by_label_freqs:
            x = bottom_shapes[0]
            classes = x[self.canon(self.axis, len(x))]
            if len(lp.class_weighting) != classes:
                raise self.param_error(f"weight_by_label_freqs needs one class_weighting per class "
                                       f"({classes}), got {len(lp.class_weighting)}")
            self.class_weights = torch.tensor(list(lp.class_weighting), dtype=torch.float32)

    def forward(self, x, label):
        logp, labels, valid, outer, inner = self.log_probs(x, label)
        nll = -logp.gather(1, labels.unsqueeze(1)).squeeze(1)
        nll = _keep_value_pass_grad(nll, nll.clamp(max=_FLT_MIN_NLL))
        if self.class_weights is not None:
            nll = nll * self.class_weights.to(nll)[labels]
        loss = torch.where(valid, nll, torch.zeros_like(nll)).sum()
        z = self.normalizer(outer * inner, outer, valid.sum())
        return [loss / z] + self.prob_top(x)


@register_layer("InfogainLoss")
class InfogainLoss(_SoftmaxLossBase):
    """L = -(1/Z) sum_valid sum_l H[label, l] log(max(p_l, 1e-20)), p = softmax(x, axis).

    H comes from `infogain_loss_param.source` (a binaryproto BlobProto with K*K values) or from a
    third bottom; it never receives gradients.
    """

    no_grad_bottoms = (1, 2)  # the labels and H

    max_bottoms = 3

    def __init__(self, param, bottom_shapes, phase):
        self.axis = param.infogain_loss_param.axis
        super().__init__(param, bottom_shapes, phase)
        if param.loss_param.HasField("normalize"):
            raise self.param_error("loss_param.normalize is deprecated for InfogainLoss (Caffe rejects "
                                   "it); use loss_param.normalization")
        x = bottom_shapes[0]
        k = x[self.canon(self.axis, len(x))]
        if len(bottom_shapes) == 3:
            h_count = count(bottom_shapes[2])
            self.register_buffer("infogain", torch.empty(0), persistent=False)
        else:
            if not param.infogain_loss_param.source:
                raise self.param_error("needs infogain_loss_param.source or a third bottom holding H")
            h = self._read_matrix(param.infogain_loss_param.source)
            h_count = h.size
            self.register_buffer("infogain", torch.from_numpy(h.reshape(-1)), persistent=False)
        if h_count != k * k:
            raise self.shape_error(f"H has {h_count} values; {k} classes need {k}*{k} = {k * k}")

    def _read_matrix(self, path: str) -> np.ndarray:
        from hovcaffe.caffe.io import blob_to_array, read_blobproto

        try:
            return np.ascontiguousarray(blob_to_array(read_blobproto(path)), dtype=np.float32)
        except (OSError, ValueError) as exc:
            raise DataSourceError(f"{self.where()}: cannot read the infogain matrix "
                                  f"{path!r}: {exc}") from exc

    def forward(self, x, label, h=None):
        logp, labels, valid, outer, inner = self.log_probs(x, label)
        k = logp.shape[1]
        h = (self.infogain if h is None else h.detach()).reshape(k, k).to(x.dtype)
        logp = _keep_value_pass_grad(logp, logp.clamp(min=_LOG_THRESHOLD))
        weights = h[labels].permute(0, 2, 1)  # (outer, K, inner): H[label, l] at each position
        per_pos = -(weights * logp).sum(1)
        loss = torch.where(valid, per_pos, torch.zeros_like(per_pos)).sum()
        z = self.normalizer(outer * inner, outer, valid.sum())
        return [loss / z] + self.prob_top(x)


@register_layer("SigmoidCrossEntropyLoss")
class SigmoidCrossEntropyLoss(LossBase):
    """Stable BCE with logits; default normalisation BATCH_SIZE (shape(0)), not VALID."""

    no_grad_bottoms = (1,)  # the targets

    default_normalization = _Norm.BATCH_SIZE

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        if count(bottom_shapes[0]) != count(bottom_shapes[1]):
            raise self.shape_error(f"logits {shape_text(bottom_shapes[0])} and targets "
                                   f"{shape_text(bottom_shapes[1])} must have the same count")

    def forward(self, x, target):
        t = target.detach().reshape(x.shape).to(x.dtype)
        # Its backward is exactly sigmoid(x) - t, as Caffe's (also at x == 0).
        ell = F.binary_cross_entropy_with_logits(x, t, reduction="none")
        if self.ignore_label is None:
            loss, valid = ell.sum(), x.numel()
        else:
            keep = t.to(torch.long) != self.ignore_label
            loss, valid = torch.where(keep, ell, torch.zeros_like(ell)).sum(), keep.sum()
        z = self.normalizer(x.numel(), x.shape[0], valid)
        return [loss / z]


@register_layer("EuclideanLoss")
class EuclideanLoss(LossBase):
    """L = sum((a - b)^2) / (2 N); both bottoms get gradients (+-(a - b)/N)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        if count(bottom_shapes[0]) != count(bottom_shapes[1]):
            raise self.shape_error(f"bottoms {shape_text(bottom_shapes[0])} and "
                                   f"{shape_text(bottom_shapes[1])} must have the same count")

    def forward(self, a, b):
        diff = a - b.reshape(a.shape)
        return [(diff * diff).sum() / a.shape[0] / 2]


@register_layer("HingeLoss")
class HingeLoss(LossBase):
    """One-vs-all hinge: (1/N) sum_ij max(0, 1 + t_ij)^p, t = -x at the label, +x elsewhere."""

    no_grad_bottoms = (1,)  # the labels

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.squared = param.hinge_loss_param.norm == caffe_pb2.HingeLossParameter.L2

    def forward(self, x, label):
        n = x.shape[0]
        scores = x.reshape(n, -1)
        labels = _labels(label, (-1,))[:n]
        check_label_range(self, labels, torch.ones_like(labels, dtype=torch.bool), scores.shape[1])
        sign = torch.ones_like(scores).scatter(1, labels.unsqueeze(1), -1.0)
        margin = torch.relu(1 + scores * sign)
        loss = (margin * margin).sum() if self.squared else margin.sum()
        return [loss / n]


class _ContrastiveFn(torch.autograd.Function):
    """ContrastiveLoss with Caffe's backward, which divides by (d + 1e-4) for dissimilar pairs."""

    @staticmethod
    def forward(ctx, a, b, similar, margin: float, legacy: bool):
        n = a.shape[0]
        diff = (a - b).reshape(n, -1)
        dist_sq = (diff * diff).sum(1)
        if legacy:
            dissim = torch.clamp(margin - dist_sq, min=0)
        else:
            dissim = torch.clamp(margin - dist_sq.sqrt(), min=0) ** 2
        loss = torch.where(similar, dist_sq, dissim).sum() / n / 2
        ctx.save_for_backward(diff, dist_sq, similar)
        ctx.margin, ctx.legacy, ctx.shape_a, ctx.shape_b = margin, legacy, a.shape, b.shape
        return loss

    @staticmethod
    def backward(ctx, grad):
        diff, dist_sq, similar = ctx.saved_tensors
        n = diff.shape[0]
        alpha = grad / n
        if ctx.legacy:
            mdist = ctx.margin - dist_sq
            beta = -alpha * torch.ones_like(mdist)
        else:
            dist = dist_sq.sqrt()
            mdist = ctx.margin - dist
            beta = -alpha * mdist / (dist + 1e-4)
        coef = torch.where(similar, alpha.expand_as(mdist),
                           torch.where(mdist > 0, beta, torch.zeros_like(beta)))
        g = coef.unsqueeze(1) * diff
        return g.reshape(ctx.shape_a), (-g).reshape(ctx.shape_b), None, None, None


@register_layer("ContrastiveLoss")
class ContrastiveLoss(LossBase):
    """(1/2N) sum [y d^2 + (1-y) max(margin - d, 0)^2] (legacy: max(margin - d^2, 0))."""

    no_grad_bottoms = (2,)  # the similarity labels

    min_bottoms, max_bottoms = 3, 3

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        a, b, y = (tuple(s) for s in bottom_shapes)
        if count(a, 2) != 1 or count(b, 2) != 1 or a[:2] != b[:2]:
            raise self.shape_error(f"bottoms 0 {shape_text(a)} and 1 {shape_text(b)} must both be "
                                   f"(N, C, 1, 1) with the same N and C")
        if count(y) != a[0]:
            raise self.shape_error(f"the similarity bottom {shape_text(y)} must hold one value per item "
                                   f"(N = {a[0]})")
        self.margin = float(param.contrastive_loss_param.margin)
        self.legacy = bool(param.contrastive_loss_param.legacy_version)

    def forward(self, a, b, y):
        similar = _labels(y, (-1,)) != 0
        return [_ContrastiveFn.apply(a, b, similar, self.margin, self.legacy)]


@register_layer("MultinomialLogisticLoss")
class MultinomialLogisticLoss(LossBase):
    """L = -(1/N) sum log(max(p[n, label_n], 1e-20)) on probabilities; grad -1/(N max(p, 1e-20))."""

    no_grad_bottoms = (1,)  # the labels

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        if count(bottom_shapes[1], 1) != 1:
            raise self.shape_error(f"labels {shape_text(bottom_shapes[1])} must be (N, 1, 1, 1)")

    def forward(self, p, label):
        n = p.shape[0]
        probs = p.reshape(n, -1)
        labels = _labels(label, (n,))
        check_label_range(self, labels, torch.ones_like(labels, dtype=torch.bool), probs.shape[1])
        picked = probs.gather(1, labels.unsqueeze(1)).squeeze(1)
        # Caffe's gradient uses the clamped probability too: -1 / (N * max(p, 1e-20)).
        picked = _keep_value_pass_grad(picked, picked.clamp(min=1e-20))
        return [-torch.log(picked).sum() / n]


@register_layer("Accuracy")
class Accuracy(CaffeLayer):
    """Top-k accuracy where ties count against; optional per-class accuracy top. No backward."""

    has_backward = False

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 2)
        self.num_tops = self.expect_tops(1, 2)
        p = param.accuracy_param
        self.top_k = p.top_k
        self.ignore_label = p.ignore_label if p.HasField("ignore_label") else None
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes):
        x, lab = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        axis = self.canon(self.param.accuracy_param.axis, len(x))
        outer, channels, inner = _split_axis(x, axis)
        if outer * inner != count(lab):
            raise self.shape_error(f"label count {count(lab)} {shape_text(lab)} must equal "
                                   f"outer*inner = {outer * inner} of scores {shape_text(x)}")
        if self.top_k > channels:
            raise self.shape_error(f"top_k {self.top_k} exceeds the {channels} classes of {shape_text(x)}")
        return [()] + ([(channels,)] if self.num_tops == 2 else [])

    def forward(self, x, label):
        x = x.detach()
        axis = self.canon(self.param.accuracy_param.axis, x.dim())
        outer, channels, inner = _split_axis(tuple(x.shape), axis)
        scores = x.reshape(outer, channels, inner)
        labels = _labels(label, (outer, inner))
        valid = torch.ones_like(labels, dtype=torch.bool) if self.ignore_label is None \
            else labels != self.ignore_label
        check_label_range(self, labels, valid, channels)
        safe = torch.where(valid, labels, 0)
        true_score = scores.gather(1, safe.unsqueeze(1))
        # Classes scoring >= the true class, the true class itself excluded.
        better = (scores >= true_score).sum(1) - 1
        correct = valid & (better < self.top_k)
        n_valid = valid.sum()
        acc = torch.where(n_valid > 0, correct.sum().to(x.dtype) / n_valid.clamp(min=1).to(x.dtype),
                          torch.zeros((), dtype=x.dtype, device=x.device))
        tops = [acc]
        if self.num_tops == 2:
            seen = torch.bincount(safe[valid], minlength=channels).to(x.dtype)
            hits = torch.bincount(safe[correct], minlength=channels).to(x.dtype)
            tops.append(torch.where(seen > 0, hits / seen.clamp(min=1), torch.zeros_like(seen)))
        return tops
