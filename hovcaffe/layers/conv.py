"""Convolution, Deconvolution and Im2col.

The rules: docs/caffe-semantics.md#convolution-deconvolution-and-im2col.

All three read `convolution_param` the way Caffe's BaseConvolutionLayer does: a channel `axis`
(everything before it is folded into the batch), one kernel/stride/pad/dilation value per
spatial axis (or one for all), the 2-D-only `*_h/*_w` forms, and groups.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F

from hovcaffe.errors import NetDefinitionError, ShapeError
from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.common import canonical_axis, count, filler_or, new_blob, where
from hovcaffe.layers.registry import register_layer

_CONV = {1: F.conv1d, 2: F.conv2d, 3: F.conv3d}
_DECONV = {1: F.conv_transpose1d, 2: F.conv_transpose2d, 3: F.conv_transpose3d}


@dataclass(frozen=True)
class ConvGeometry:
    """Per-spatial-axis kernel/stride/pad/dilation of a convolution-like layer."""

    axis: int
    kernel: tuple[int, ...]
    stride: tuple[int, ...]
    pad: tuple[int, ...]
    dilation: tuple[int, ...]

    @property
    def nd(self) -> int:
        return len(self.kernel)

    def conv_out(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Convolution output size: floor((in + 2p - ext) / s) + 1, ext = d(k-1)+1."""
        return tuple((i + 2 * p - (d * (k - 1) + 1)) // s + 1 for i, k, s, p, d in
                     zip(spatial, self.kernel, self.stride, self.pad, self.dilation))

    def deconv_out(self, spatial: Sequence[int]) -> tuple[int, ...]:
        """Deconvolution output size: s(in - 1) + d(k-1) + 1 - 2p."""
        return tuple(s * (i - 1) + d * (k - 1) + 1 - 2 * p for i, k, s, p, d in
                     zip(spatial, self.kernel, self.stride, self.pad, self.dilation))


def _per_axis(values: Sequence[int], n: int, default: int, what: str, w: str) -> tuple[int, ...]:
    if len(values) == 0:
        return (default,) * n
    if len(values) == 1:
        return (int(values[0]),) * n
    if len(values) != n:
        raise NetDefinitionError(f"{w}: {what} must be given once or once per spatial axis "
                                 f"({n}), got {len(values)} values")
    return tuple(int(v) for v in values)


def conv_geometry(param, bottom_shape: Sequence[int]) -> ConvGeometry:
    """Parse `param.convolution_param` against a bottom shape (Caffe's LayerSetUp rules)."""
    w = where(param)
    cp = param.convolution_param
    axis = canonical_axis(cp.axis, len(bottom_shape), w)
    n = len(bottom_shape) - axis - 1
    if n < 1:
        raise ShapeError(f"{w}: the bottom of shape {list(bottom_shape)} has no spatial axis after "
                         f"channel axis {axis}")
    if n > 3:
        raise ShapeError(f"{w}: {n} spatial axes are not supported (at most 3)")

    def two_d(h: str, wd: str, repeated, what: str, default: int | None) -> tuple[int, ...] | None:
        has_h, has_w = cp.HasField(h), cp.HasField(wd)
        if not (has_h or has_w):
            return None
        if n != 2:
            raise NetDefinitionError(f"{w}: {h}/{wd} can only be used for 2-D convolution")
        if len(repeated):
            raise NetDefinitionError(f"{w}: give either {what} or {h}/{wd}, not both")
        if default is None and not (has_h and has_w):
            raise NetDefinitionError(f"{w}: {h} and {wd} must both be given")
        return (int(getattr(cp, h)), int(getattr(cp, wd)))

    kernel = two_d("kernel_h", "kernel_w", cp.kernel_size, "kernel_size", None)
    if kernel is None:
        if not len(cp.kernel_size):
            raise NetDefinitionError(f"{w}: kernel_size (or kernel_h and kernel_w) is required")
        kernel = _per_axis(cp.kernel_size, n, 0, "kernel_size", w)
    if min(kernel) <= 0:
        raise NetDefinitionError(f"{w}: kernel dimensions must be positive, got {list(kernel)}")
    stride = two_d("stride_h", "stride_w", cp.stride, "stride", 1) or \
        _per_axis(cp.stride, n, 1, "stride", w)
    if min(stride) <= 0:
        raise NetDefinitionError(f"{w}: stride must be positive, got {list(stride)}")
    pad = two_d("pad_h", "pad_w", cp.pad, "pad", 0) or _per_axis(cp.pad, n, 0, "pad", w)
    dilation = _per_axis(cp.dilation, n, 1, "dilation", w)
    return ConvGeometry(axis, kernel, stride, pad, dilation)


def _same_bottoms(param, bottom_shapes: Sequence[Shape]) -> None:
    if not bottom_shapes:
        raise NetDefinitionError(f"{where(param)} needs at least one bottom")
    if len(param.top) != len(bottom_shapes):
        raise NetDefinitionError(f"{where(param)}: {len(bottom_shapes)} bottoms need as many tops, "
                                 f"got {len(param.top)}")
    for s in bottom_shapes[1:]:
        if tuple(s) != tuple(bottom_shapes[0]):
            raise ShapeError(f"{where(param)}: all bottoms must have the same shape; got "
                             f"{list(bottom_shapes[0])} and {list(s)}")


class _BaseConv(CaffeLayer):
    """Shared set-up of Convolution and Deconvolution; bottom i -> top i with the same weights."""

    transposed = False

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        _same_bottoms(param, bottom_shapes)
        w = where(param)
        cp = param.convolution_param
        self.geom = conv_geometry(param, bottom_shapes[0])
        shape = tuple(bottom_shapes[0])
        self.channels = shape[self.geom.axis]
        self.num_output = int(cp.num_output)
        self.group = int(cp.group)
        if self.num_output <= 0:
            raise NetDefinitionError(f"{w}: num_output must be positive")
        if self.group <= 0 or self.channels % self.group or self.num_output % self.group:
            raise ShapeError(f"{w}: group {self.group} must divide both the input channels "
                             f"({self.channels}) and num_output ({self.num_output})")
        out_c, in_c = ((self.channels, self.num_output) if self.transposed
                       else (self.num_output, self.channels))
        weight_shape = (out_c, in_c // self.group) + self.geom.kernel
        self.blobs.append(new_blob(weight_shape, filler_or(cp, "weight_filler", 0.0),
                                   what=f"{w} weight_filler"))
        self.bias_term = bool(cp.bias_term)
        if self.bias_term:
            self.blobs.append(new_blob((self.num_output,), filler_or(cp, "bias_filler", 0.0),
                                       what=f"{w} bias_filler"))
        g = self.geom
        self._kw = dict(stride=g.stride, padding=g.pad, dilation=g.dilation, groups=self.group)
        self._fn = (_DECONV if self.transposed else _CONV)[g.nd]
        self._plain = g.axis == 1  # no batch folding needed

    def _spatial_out(self, spatial: Sequence[int]) -> tuple[int, ...]:
        return self.geom.deconv_out(spatial) if self.transposed else self.geom.conv_out(spatial)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        outs = []
        for s in bottom_shapes:
            a = self.geom.axis
            if s[a] != self.channels:
                raise ShapeError(f"{where(self.param)}: expects {self.channels} channels on axis "
                                 f"{a}, got bottom shape {list(s)}")
            sp = self._spatial_out(s[a + 1:])
            if min(sp) <= 0:
                raise ShapeError(f"{where(self.param)}: bottom {list(s)} gives an empty output "
                                 f"{list(sp)} (kernel {list(self.geom.kernel)}, pad "
                                 f"{list(self.geom.pad)}, stride {list(self.geom.stride)})")
            outs.append(tuple(s[:a]) + (self.num_output,) + sp)
        return outs

    def macs(self, bottom_shapes: Sequence[Shape]) -> int:
        k = math.prod(self.geom.kernel)
        total = 0
        for s, o in zip(bottom_shapes, self.output_shapes(bottom_shapes)):
            # Per output (conv) / input (deconv) element: (C_in/group) * prod(kernel) MACs.
            if self.transposed:
                total += count(s) * (self.num_output // self.group) * k
            else:
                total += count(o) * (self.channels // self.group) * k
        return total

    def _one(self, x: torch.Tensor) -> torch.Tensor:
        bias = self.blobs[1] if self.bias_term else None
        if self._plain:
            return self._fn(x, self.blobs[0], bias, **self._kw)
        a = self.geom.axis
        lead = x.shape[:a]
        y = self._fn(x.reshape((-1,) + tuple(x.shape[a:])), self.blobs[0], bias, **self._kw)
        return y.reshape(tuple(lead) + tuple(y.shape[1:]))

    def forward(self, *bottoms: torch.Tensor) -> list[torch.Tensor]:
        return [self._one(x) for x in bottoms]


@register_layer("Convolution")
class Convolution(_BaseConv):
    """Grouped, dilated N-d (1-3 spatial axes) cross-correlation plus bias."""


@register_layer("Deconvolution")
class Deconvolution(_BaseConv):
    """Transposed convolution; weight (C_in, num_output/group, k...) as in Caffe."""

    transposed = True


@register_layer("Im2col")
class Im2col(CaffeLayer):
    """Unfold patches: (N, C, H, W) -> (N, C*kh*kw, H_out, W_out), channel-major like Caffe."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        self.geom = conv_geometry(param, bottom_shapes[0])
        if self.geom.axis != 1 or self.geom.nd > 2:
            raise ShapeError(f"{where(param)}: only 1-D and 2-D Im2col with channel axis 1 is "
                             f"supported, got bottom {list(bottom_shapes[0])}")

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = bottom_shapes[0]
        sp = self.geom.conv_out(s[2:])
        return [(s[0], s[1] * math.prod(self.geom.kernel)) + sp]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        g = self.geom
        if g.nd == 1:
            cols = F.unfold(x.unsqueeze(2), (1,) + g.kernel, dilation=(1,) + g.dilation,
                            padding=(0,) + g.pad, stride=(1,) + g.stride)
        else:
            cols = F.unfold(x, g.kernel, dilation=g.dilation, padding=g.pad, stride=g.stride)
        out = self.output_shapes([tuple(x.shape)])[0]
        return [cols.reshape(out)]
