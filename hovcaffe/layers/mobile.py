"""Layers of the MobileNet / ShuffleNet / SENet Caffe ports: ConvolutionDepthwise (and its
other spelling DepthwiseConvolution), ShuffleChannel, ReLU6 and Axpy.

Semantics follow the ports people download models for:

* ConvolutionDepthwise - yonghenglh6/DepthwiseConvolution: one k x k filter per input channel,
  weight (C, 1, kh, kw), bias (C); the top always has C channels. That port ignores
  `num_output` and `group`; so does hovcaffe, with a warning when they disagree with C.
* DepthwiseConvolution - the other ports (e.g. the MobileNet v2 ones) subclass Caffe's
  Convolution and honour `num_output` and `group`: it is exactly our Convolution.
* ShuffleChannel - farmingyard/ShuffleNet: channels seen as a (group, C / group) matrix and
  transposed.
* ReLU6 - min(max(x, 0), 6); the ports' backward passes the gradient where 0 < x < 6.
* Axpy - hujie-frank/SENet: top = a * x + y with a (N, C[, 1, 1]) per-channel scale.
"""
from __future__ import annotations

import logging
import math
from typing import Sequence

import torch
import torch.nn.functional as F

from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.common import filler_or, new_blob
from hovcaffe.layers.conv import Convolution, conv_geometry
from hovcaffe.layers.registry import register_layer

log = logging.getLogger(__name__)


@register_layer("ConvolutionDepthwise")
class ConvolutionDepthwise(CaffeLayer):
    """Per-channel 2-D convolution: weight (C, 1, kh, kw), optional bias (C)."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        shape = tuple(bottom_shapes[0])
        if len(shape) != 4:
            raise self.shape_error(f"needs a 4-D bottom (N, C, H, W), got {list(shape)}")
        cp = param.convolution_param
        if cp.axis != 1:
            raise self.param_error("only channel axis 1 is supported")
        self.geom = conv_geometry(param, shape)
        self.channels = shape[1]
        for field in ("num_output", "group"):
            if cp.HasField(field) and getattr(cp, field) != self.channels:
                log.warning("%s: %s %d is ignored, as by the ConvolutionDepthwise port: the "
                            "top has the bottom's %d channels", self.where(), field,
                            getattr(cp, field), self.channels)
        c = self.channels
        self.blobs.append(new_blob((c, 1) + self.geom.kernel, filler_or(cp, "weight_filler", 0.0),
                                   what=f"{self.where()} weight_filler"))
        self.bias_term = bool(cp.bias_term)
        if self.bias_term:
            self.blobs.append(new_blob((c,), filler_or(cp, "bias_filler", 0.0),
                                       what=f"{self.where()} bias_filler"))

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) != 4 or s[1] != self.channels:
            raise self.shape_error(f"built for {self.channels} channels, got bottom {list(s)}")
        out = self.geom.conv_out(s[2:])
        if min(out) <= 0:
            raise self.shape_error(f"bottom {list(s)} gives an empty output {list(out)}")
        return [s[:2] + out]

    def macs(self, bottom_shapes: Sequence[Shape]) -> int:
        return math.prod(self.output_shapes(bottom_shapes)[0]) * math.prod(self.geom.kernel)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        g = self.geom
        bias = self.blobs[1] if self.bias_term else None
        return [F.conv2d(x, self.blobs[0], bias, stride=g.stride, padding=g.pad,
                         dilation=g.dilation, groups=self.channels)]


@register_layer("DepthwiseConvolution")
class DepthwiseConvolution(Convolution):
    """The ports that subclass Caffe's Convolution: num_output and group as written."""


@register_layer("ShuffleChannel")
class ShuffleChannel(CaffeLayer):
    """Channel c = i * (C / g) + j moves to j * g + i."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        self.group = int(param.shuffle_channel_param.group)
        if self.group <= 0:
            raise self.param_error(f"shuffle_channel_param.group must be positive, got "
                                   f"{self.group}")
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) < 2 or s[1] % self.group:
            raise self.shape_error(f"group {self.group} must divide the channels of bottom "
                                   f"{list(s)}")
        return [s]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        n, c = x.shape[0], x.shape[1]
        rest = tuple(int(d) for d in x.shape[2:])
        y = x.reshape((n, self.group, int(c) // self.group) + rest).transpose(1, 2)
        return [y.reshape(x.shape)]


class _ReLU6Grad(torch.autograd.Function):
    """clamp(x, 0, 6) whose gradient passes where 0 < x < 6 (the ports' backward)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:  # noqa: D102
        ctx.save_for_backward(x)
        return x.clamp(0.0, 6.0)

    @staticmethod
    def backward(ctx, dy: torch.Tensor) -> torch.Tensor:  # noqa: D102
        (x,) = ctx.saved_tensors
        return dy * ((x > 0) & (x < 6)).to(dy.dtype)


@register_layer("ReLU6")
class ReLU6(CaffeLayer):
    """min(max(x, 0), 6). In place, the backward reads the top (y > 0 and y < 6: the same set)."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        if param.relu6_param.negative_slope != 0:
            raise self.param_error("relu6_param.negative_slope is not used by the ReLU6 ports' "
                                   "forward; leave it 0 (or use ReLU + Clip)")

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0])]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if torch.is_grad_enabled() and x.requires_grad:
            return [_ReLU6Grad.apply(x)]
        return [x.clamp(0.0, 6.0)]


@register_layer("Axpy")
class Axpy(CaffeLayer):
    """top = a * x + y: bottoms a (N, C) or (N, C, 1, 1), x and y of one shape (N, C, ...)."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 3)
        self.expect_tops(1)
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        a, x, y = (tuple(s) for s in bottom_shapes)
        if len(x) < 2 or a[:2] != x[:2] or any(d != 1 for d in a[2:]) or len(a) > 4:
            raise self.shape_error(f"the scale {list(a)} must be (N, C) or (N, C, 1, 1) of x "
                                   f"{list(x)}")
        if x != y:
            raise self.shape_error(f"x {list(x)} and y {list(y)} must have one shape")
        return [x]

    def forward(self, a: torch.Tensor, x: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
        scale = a.reshape(tuple(a.shape[:2]) + (1,) * (x.dim() - 2))
        return [scale * x + y]
