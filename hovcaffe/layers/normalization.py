"""BatchNorm, Scale, Bias and MVN (docs/caffe-semantics.md#batchnorm-scale-bias-and-mvn)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import NetDefinitionError, ShapeError
from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.common import canonical_axis, filler_or, new_blob, where
from hovcaffe.layers.registry import register_layer


@register_layer("BatchNorm")
class BatchNorm(CaffeLayer):
    """Caffe's BatchNorm: no affine part, three blobs [mean_sum, var_sum, scale_factor].

    The running blobs are Caffe's normalised sums: every forward with batch statistics does
    s <- maf*s + 1, mean_sum <- maf*mean_sum + mean_B, var_sum <- maf*var_sum + m/(m-1)*var_B
    (under no_grad), and global statistics are mean_sum/s, var_sum/s (0 when s == 0).
    `use_global_stats` defaults to the layer's phase (TEST: true, TRAIN: false).
    """

    #: Blob indices that are statistics: lr_mult 0, never a gradient (read by the net builder).
    frozen_blobs = (0, 1, 2)

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        w = where(param)
        p = param.batch_norm_param
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        for i, spec in enumerate(param.param[:3]):
            if spec.lr_mult != 0:
                raise NetDefinitionError(
                    f"{w}: param {i} has lr_mult {spec.lr_mult}; BatchNorm statistics cannot be "
                    "learned (use lr_mult: 0, or add a Scale layer for a learned affine part)")
        self.use_global_stats = (p.use_global_stats if p.HasField("use_global_stats")
                                 else phase == caffe_pb2.TEST)
        self.maf = float(p.moving_average_fraction)
        self.eps = float(p.eps)
        shape = tuple(bottom_shapes[0])
        self.channels = 1 if len(shape) == 1 else shape[1]
        for blob_shape in ((self.channels,), (self.channels,), (1,)):
            blob = torch.nn.Parameter(torch.zeros(blob_shape), requires_grad=False)
            self.blobs.append(blob)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        c = 1 if len(s) == 1 else s[1]
        if c != self.channels:
            raise ShapeError(f"{where(self.param)}: built for {self.channels} channels, got "
                             f"bottom shape {list(s)}")
        return [s]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        flat = x.dim() == 1
        if flat:
            x = x.reshape(-1, 1)
        y = self.normalize(x)
        return [y.reshape(-1) if flat else y]

    def normalize(self, x: torch.Tensor, weight: torch.Tensor | None = None,
                  bias: torch.Tensor | None = None) -> torch.Tensor:
        """y = (x - mean) / sqrt(var + eps) of an (N, C, ...) x, with Caffe's statistics rule.

        `weight`/`bias` (shape (C,)) fold a following per-channel Scale into the same
        F.batch_norm call (layers/fusion.py); the statistics and their update do not depend on
        them, so the blobs move exactly as without.
        """
        view = (1, self.channels) + (1,) * (x.dim() - 2)
        if self.use_global_stats:
            sf = self.blobs[2].detach()
            f = torch.where(sf == 0, torch.zeros_like(sf), 1.0 / sf)
            mean = self.blobs[0].detach() * f
            var = self.blobs[1].detach() * f
            if weight is not None:
                return F.batch_norm(x, mean, var, weight, bias, training=False, eps=self.eps)
            return (x - mean.view(view)) / torch.sqrt(var.view(view) + self.eps)
        return self._batch_stats(x, view, weight, bias)

    def _batch_stats(self, x: torch.Tensor, view: tuple[int, ...], weight: torch.Tensor | None,
                     bias: torch.Tensor | None) -> torch.Tensor:
        m = x.numel() // self.channels
        dims = [0] + list(range(2, x.dim()))
        if m > 1:
            # One pass gives both: with momentum 1, torch's running buffers receive the batch
            # mean and the unbiased batch variance m/(m-1)*var_B - Caffe's update terms.
            mean_b, var_b = x.new_zeros(self.channels), x.new_zeros(self.channels)
            y = F.batch_norm(x, mean_b, var_b, weight, bias, training=True, momentum=1.0,
                             eps=self.eps)
        else:
            mean = x.mean(dim=dims, keepdim=True)
            y = (x - mean) / torch.sqrt(((x - mean) ** 2).mean(dim=dims, keepdim=True) + self.eps)
            mean_b, var_b = mean.detach().reshape(-1), torch.zeros_like(mean).reshape(-1)
            if weight is not None:
                y = y * weight.view(view)
            if bias is not None:
                y = y + bias.view(view)
        with torch.no_grad():
            mean_sum, var_sum, sf = self.blobs
            sf.mul_(self.maf).add_(1.0)
            mean_sum.mul_(self.maf).add_(mean_b)
            var_sum.mul_(self.maf).add_(var_b)
        return y


def _affine_shape(param, x_shape: Shape, axis_field: int, num_axes: int) -> tuple[int, Shape]:
    """(axis, blob shape) of a learned Scale/Bias blob covering x_shape[axis : axis+num_axes]."""
    w = where(param)
    axis = canonical_axis(axis_field, len(x_shape), w) if len(x_shape) else 0
    if num_axes < -1:
        raise NetDefinitionError(f"{w}: num_axes must be >= -1, got {num_axes}")
    end = len(x_shape) if num_axes == -1 else axis + num_axes
    if end > len(x_shape):
        raise ShapeError(f"{w}: axis {axis} + num_axes {num_axes} exceeds the bottom's "
                         f"{len(x_shape)} axes (shape {list(x_shape)})")
    return axis, tuple(x_shape[axis:end])


def _broadcast_view(param, x_shape: Sequence[int], axis_field: int, b_shape: Sequence[int]
                    ) -> tuple[int, ...]:
    """Shape that broadcasts a (b_shape) blob over x starting at the canonical axis."""
    w = where(param)
    axis = 0 if len(b_shape) == 0 else canonical_axis(axis_field, len(x_shape), w)
    if tuple(x_shape[axis:axis + len(b_shape)]) != tuple(b_shape):
        raise ShapeError(f"{w}: the scale/bias of shape {list(b_shape)} does not match the bottom "
                         f"{list(x_shape)} from axis {axis}")
    return (1,) * axis + tuple(b_shape) + (1,) * (len(x_shape) - axis - len(b_shape))


class _AxisOperand(CaffeLayer):
    """Scale and Bias: x combined with an operand - learned (blobs[0]) or given as bottom[1] -
    that broadcasts over x from `axis` (Caffe's shared axis / num_axes rules)."""

    def _init_operand(self, param, p, bottom_shapes: Sequence[Shape], default: float) -> Shape:
        """Check the bottoms, create the learned operand if there is one; returns its shape."""
        w = where(param)
        self.expect_bottoms(bottom_shapes, 1, 2)
        self.expect_tops(1)
        x_shape = tuple(bottom_shapes[0])
        self.two_bottoms = len(bottom_shapes) == 2
        self.axis_field = int(p.axis)
        if self.two_bottoms:
            shape = tuple(bottom_shapes[1])
        else:
            _, shape = _affine_shape(param, x_shape, p.axis, p.num_axes)
            self.blobs.append(new_blob(shape, filler_or(p, "filler", default), what=f"{w} filler"))
        self._view = _broadcast_view(param, x_shape, self.axis_field, shape)
        return shape

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        x_shape = tuple(bottom_shapes[0])
        shape = tuple(bottom_shapes[1]) if self.two_bottoms else tuple(self.blobs[0].shape)
        self._view = _broadcast_view(self.param, x_shape, self.axis_field, shape)
        return [x_shape]

    def _operand(self, x: torch.Tensor, rest: Sequence[torch.Tensor]) -> tuple[torch.Tensor, tuple[int, ...]]:
        """The operand and the view that broadcasts it over `x`."""
        if self.two_bottoms:
            return rest[0], _broadcast_view(self.param, x.shape, self.axis_field, rest[0].shape)
        return self.blobs[0], self._view


@register_layer("Scale")
class Scale(_AxisOperand):
    """y = x * scale (+ bias), the scale learned (blobs[0]) or given as bottom[1]."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.scale_param
        scale_shape = self._init_operand(param, p, bottom_shapes, 1.0)
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            nb = len(scale_shape) if self.two_bottoms else p.num_axes
            _, bias_shape = _affine_shape(param, tuple(bottom_shapes[0]), p.axis, nb)
            self.blobs.append(new_blob(bias_shape, filler_or(p, "bias_filler", 0.0),
                                       what=f"{where(param)} bias_filler"))

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> list[torch.Tensor]:
        scale, view = self._operand(x, rest)
        y = x * scale.reshape(view)
        if self.bias_term:
            y = y + self.blobs[-1].reshape(view)
        return [y]


@register_layer("Bias")
class Bias(_AxisOperand):
    """y = x + bias, the bias learned (blobs[0]) or given as bottom[1]."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self._init_operand(param, param.bias_param, bottom_shapes, 0.0)

    def forward(self, x: torch.Tensor, *rest: torch.Tensor) -> list[torch.Tensor]:
        bias, view = self._operand(x, rest)
        return [x + bias.reshape(view)]


class _MVNFunction(torch.autograd.Function):
    """(x - mean) / (std + eps) per row, with Caffe's backward.

    Caffe's MVN backward is dx = (dy - mean(dy) - y*mean(y*dy)) / (std + eps), which differs
    from the exact derivative by using std + eps where the exact one has std (visible for
    large eps); hovcaffe reproduces Caffe.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, eps: float) -> torch.Tensor:  # noqa: D102
        xc = x - x.mean(dim=1, keepdim=True)
        std = torch.sqrt((xc * xc).mean(dim=1, keepdim=True)) + eps
        y = xc / std
        ctx.save_for_backward(y, std)
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # noqa: D102
        y, std = ctx.saved_tensors
        dx = dy - dy.mean(dim=1, keepdim=True) - y * (y * dy).mean(dim=1, keepdim=True)
        return dx / std, None


@register_layer("MVN")
class MVN(CaffeLayer):
    """Mean (and variance) normalisation per (n, c) plane, or per n with across_channels."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.mvn_param
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        self.normalize_variance = bool(p.normalize_variance)
        self.across_channels = bool(p.across_channels)
        self.eps = float(p.eps)
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if not 2 <= len(s) <= 4:
            raise ShapeError(f"{where(self.param)}: MVN needs a bottom with 2 to 4 axes "
                             f"(num, channels, ...), got {list(s)}")
        return [s]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        groups = x.shape[0] if self.across_channels else x.shape[0] * x.shape[1]
        x2 = x.reshape(groups, -1)
        if not self.normalize_variance:
            y = x2 - x2.mean(dim=1, keepdim=True)
        elif torch.is_grad_enabled() and x.requires_grad:
            y = _MVNFunction.apply(x2, self.eps)
        else:
            xc = x2 - x2.mean(dim=1, keepdim=True)
            y = xc / (torch.sqrt((xc * xc).mean(dim=1, keepdim=True)) + self.eps)
        return [y.reshape(x.shape)]
