"""Neuron (elementwise) layers: ReLU, PReLU, ELU, Sigmoid, TanH, AbsVal, BNLL, Power, Exp, Log,
Threshold, Swish, Clip, Dropout (docs/caffe-semantics.md#neuron-layers).

Each keeps the bottom's shape. Where Caffe's backward is not torch's exact derivative - an in-place
layer whose backward reads the overwritten bottom, or Power's y/x form - the layer reproduces
Caffe's backward through `common.elementwise`.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import NetDefinitionError
from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.common import elementwise, filler_or, is_in_place, new_blob, where
from hovcaffe.layers.registry import register_layer

TRAIN = caffe_pb2.TRAIN
_F32 = np.float32


class NeuronLayer(CaffeLayer):
    """One bottom, one top of the same shape; subclasses implement `apply(x)`."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        self.in_place = is_in_place(param)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])]

    def apply(self, x: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [self.apply(x)]


@register_layer("ReLU")
class ReLU(NeuronLayer):
    """max(x,0) + slope*min(x,0). In place with slope < 0, Caffe's backward tests the top
    (y > 0), so every x != 0 gets the full gradient; that quirk is reproduced."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.slope = float(param.relu_param.negative_slope)

    def apply(self, x):
        s = self.slope
        if s == 0.0:
            return F.relu(x)
        if self.in_place and s < 0:
            return elementwise(x, lambda t: F.leaky_relu(t, s),
                               lambda t, y: torch.where(y > 0, 1.0, s).to(y.dtype))
        return F.leaky_relu(x, s)


@register_layer("PReLU")
class PReLU(NeuronLayer):
    """Learned per-channel (axis 1) slope; `channel_shared` keeps one 0-axis scalar blob."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        shape = bottom_shapes[0]
        if len(shape) < 2:
            raise NetDefinitionError(f"{where(param)}: the bottom needs at least 2 axes, "
                                     f"got shape {list(shape)}")
        p = param.prelu_param
        self.shared = p.channel_shared
        blob_shape = () if self.shared else (shape[1],)
        self.blobs.append(new_blob(blob_shape, filler_or(p, "filler", 0.25),
                                   what=f"{where(param)} filler"))

    def apply(self, x):
        w = self.blobs[0]
        return F.prelu(x, w.reshape(1) if self.shared else w)


@register_layer("ELU")
class ELU(NeuronLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.alpha = float(param.elu_param.alpha)

    def apply(self, x):
        return F.elu(x, self.alpha)


@register_layer("Sigmoid")
class Sigmoid(NeuronLayer):
    def apply(self, x):
        return torch.sigmoid(x)


@register_layer("TanH")
class TanH(NeuronLayer):
    def apply(self, x):
        return torch.tanh(x)


@register_layer("AbsVal")
class AbsVal(NeuronLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        if self.in_place:
            raise NetDefinitionError(f"{where(param)}: AbsVal does not allow in-place computation "
                                     "(Caffe refuses it); give the top its own name")

    def apply(self, x):
        return torch.abs(x)


_BNLL_THRESHOLD = 50.0


@register_layer("BNLL")
class BNLL(NeuronLayer):
    """log(1 + e^x) computed stably; Caffe's backward is sigmoid(min(x, 50))."""

    def apply(self, x):
        if self.in_place:
            return elementwise(x, F.softplus,
                               lambda t, y: torch.sigmoid(torch.clamp(y, max=_BNLL_THRESHOLD)))
        return F.softplus(x)


@register_layer("Power")
class Power(NeuronLayer):
    """(shift + scale*x)^power, with Caffe's constant special case and its backward formulas."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.power_param
        self.power, self.scale, self.shift = float(p.power), float(p.scale), float(p.shift)
        self.diff_scale = float(_F32(p.power) * _F32(p.scale))

    def _forward(self, x):
        y = x
        if self.scale != 1.0:
            y = y * self.scale
        if self.shift != 0.0:
            y = y + self.shift
        if self.power != 1.0:
            y = torch.pow(y, self.power)
        return y if y is not x else x.clone()

    def _local(self, x, y):
        # Caffe's PowerLayer::Backward_cpu; `x` is whatever Caffe reads as bottom data
        # (the top itself when the layer runs in place).
        b = y if self.in_place else x
        p, a, s, ds = self.power, self.scale, self.shift, self.diff_scale
        if p == 1.0:
            return torch.full_like(y, ds)
        if p == 2.0:
            out = b * (ds * a)
            return out + ds * s if s != 0.0 else out
        if s == 0.0:
            return (y / b) * p
        base = b * a if a != 1.0 else b
        return (y / (base + s)) * ds

    def apply(self, x):
        if self.diff_scale == 0.0:
            value = 1.0 if self.power == 0.0 else float(_F32(self.shift) ** _F32(self.power))
            return torch.full_like(x, value)
        return elementwise(x, self._forward, self._local)


def _log_base(base: float) -> np.float32:
    return _F32(1.0) if base == -1.0 else np.log(_F32(base))


@register_layer("Exp")
class Exp(NeuronLayer):
    """base^(shift + scale*x) = outer * exp(inner*x), constants computed in float32 as Caffe."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.exp_param
        if p.base != -1.0 and p.base <= 0:
            raise NetDefinitionError(f"{where(param)}: base must be strictly positive, got {p.base}")
        self.inner = float(_log_base(p.base) * _F32(p.scale))
        if p.shift == 0.0:
            self.outer = 1.0
        elif p.base != -1.0:
            self.outer = float(_F32(p.base) ** _F32(p.shift))
        else:
            self.outer = float(np.exp(_F32(p.shift)))

    def apply(self, x):
        y = torch.exp(x if self.inner == 1.0 else x * self.inner)
        return y * self.outer if self.outer != 1.0 else y


@register_layer("Log")
class Log(NeuronLayer):
    """log_base(shift + scale*x) = ln(shift + scale*x) * (1/ln(base))."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.log_param
        if p.base != -1.0 and p.base <= 0:
            raise NetDefinitionError(f"{where(param)}: base must be strictly positive, got {p.base}")
        self.base_scale = 1.0 if p.base == -1.0 else float(_F32(1.0) / _log_base(p.base))
        self.scale, self.shift = float(p.scale), float(p.shift)

    def _forward(self, x):
        t = x * self.scale if self.scale != 1.0 else x
        t = t + self.shift if self.shift != 0.0 else t
        y = torch.log(t)
        return y * self.base_scale if self.base_scale != 1.0 else y

    def apply(self, x):
        if not self.in_place:
            return self._forward(x)
        num = float(_F32(self.scale) * _F32(self.base_scale))
        return elementwise(x, self._forward,
                           lambda t, y: num / (y * self.scale + self.shift))


@register_layer("Threshold")
class Threshold(NeuronLayer):
    """1 where x > threshold (strict), else 0; never propagates a gradient (as in Caffe)."""

    has_backward = False

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.threshold = float(param.threshold_param.threshold)

    def apply(self, x):
        return (x.detach() > self.threshold).to(x.dtype)


@register_layer("Swish")
class Swish(NeuronLayer):
    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.beta = float(param.swish_param.beta)

    def apply(self, x):
        return x * torch.sigmoid(x * self.beta if self.beta != 1.0 else x)


@register_layer("Clip")
class Clip(NeuronLayer):
    """clamp to [min, max]; in place, Caffe's backward tests the (already clipped) top, so the
    whole gradient passes - reproduced."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.clip_param
        if not (p.HasField("min") and p.HasField("max")):
            raise NetDefinitionError(f"{where(param)}: clip_param needs both min and max")
        if p.min > p.max:
            raise NetDefinitionError(f"{where(param)}: clip_param min {p.min} > max {p.max}")
        self.lo, self.hi = float(p.min), float(p.max)

    def apply(self, x):
        if self.in_place:
            return elementwise(x, lambda t: torch.clamp(t, self.lo, self.hi),
                               lambda t, y: torch.ones_like(y))
        return torch.clamp(x, self.lo, self.hi)


@register_layer("Dropout")
class Dropout(NeuronLayer):
    """Inverted dropout in the layer's TRAIN phase (x * mask / (1 - p)); identity in TEST.

    The behaviour follows the layer phase fixed at build time, not `module.train()/eval()`,
    exactly as Caffe's does. py-faster-rcnn's `scale_train: false` moves the scaling to TEST:
    x * mask in TRAIN, x * (1 - p) in TEST.
    """

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.ratio = float(param.dropout_param.dropout_ratio)
        if not 0.0 <= self.ratio < 1.0:
            raise NetDefinitionError(f"{where(param)}: dropout_ratio must be in [0, 1), "
                                     f"got {self.ratio}")
        self.scale_train = bool(param.dropout_param.scale_train)

    def apply(self, x):
        keep = 1.0 - self.ratio
        if self.phase == TRAIN and self.ratio > 0.0:
            y = F.dropout(x, self.ratio, training=True)
            return y if self.scale_train else y * keep
        return x if self.scale_train else x * keep
