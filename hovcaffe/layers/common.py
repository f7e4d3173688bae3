"""Small helpers shared by the layer families: axes, counts, blobs, Caffe-style gradients."""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch
from torch import nn

from hovcaffe import fillers
from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import ShapeError

Shape = tuple[int, ...]


def canonical_axis(axis: int, num_axes: int, where: str) -> int:
    """Caffe's CanonicalAxisIndex: a negative axis counts from the end; out of range is an error."""
    if not -num_axes <= axis < num_axes:
        raise ShapeError(f"{where}: axis {axis} is out of range for a blob with {num_axes} axes")
    return axis + num_axes if axis < 0 else axis


def count(shape: Sequence[int], start: int = 0, end: int | None = None) -> int:
    """Product of `shape[start:end]` (1 for an empty range), like Blob::count(start, end)."""
    return math.prod(shape[start:end])


def where(param: caffe_pb2.LayerParameter) -> str:
    """`layer 'name' (Type)` for error messages."""
    return f"layer {param.name!r} ({param.type})"


def shape_text(shape: Sequence[int]) -> str:
    """`(2, 3, 4)`: a shape as error messages print it."""
    return "(" + ", ".join(str(d) for d in shape) + ")"


def eager() -> bool:
    """False while torch traces or compiles (export): data-dependent checks are skipped then."""
    return not (torch.jit.is_tracing() or torch.compiler.is_compiling())


def new_blob(shape: Sequence[int], filler: caffe_pb2.FillerParameter, *,
             what: str = "blob") -> nn.Parameter:
    """An nn.Parameter of `shape` initialised by `filler` (Caffe formula, torch RNG)."""
    return nn.Parameter(fillers.fill(shape, filler, where=what))


def filler_or(param_msg, field: str, default_value: float) -> caffe_pb2.FillerParameter:
    """`param_msg.<field>` when set, else Caffe's hard-wired constant default for that blob."""
    if param_msg.HasField(field):
        return getattr(param_msg, field)
    return fillers.constant_filler(default_value)


def is_in_place(param: caffe_pb2.LayerParameter, index: int = 0) -> bool:
    """True when top[index] names the same blob as bottom[index] (Caffe's in-place rule)."""
    return (len(param.top) > index and len(param.bottom) > index
            and param.top[index] == param.bottom[index])


class LocalGrad(torch.autograd.Function):
    """y = fwd(x) with dx = dy * local(x, y): Caffe's own elementwise backward formula.

    Used where Caffe's backward is not the exact derivative torch would compute, e.g. an in-place
    layer whose backward reads the (overwritten) bottom and so sees the top instead.
    """

    @staticmethod
    def forward(ctx, x: torch.Tensor, fwd: Callable, local: Callable) -> torch.Tensor:  # noqa: D102
        y = fwd(x)
        ctx.save_for_backward(local(x, y))
        return y

    @staticmethod
    def backward(ctx, dy: torch.Tensor):  # noqa: D102
        (d,) = ctx.saved_tensors
        return dy * d, None, None


def elementwise(x: torch.Tensor, fwd: Callable, local: Callable | None) -> torch.Tensor:
    """Apply `fwd`; when a gradient is needed and `local` is given, use Caffe's backward."""
    if local is not None and torch.is_grad_enabled() and x.requires_grad:
        return LocalGrad.apply(x, fwd, local)
    return fwd(x)
