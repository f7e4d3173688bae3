"""Caffe's weight fillers (`FillerParameter`), drawn from torch's global generator.

The formulas are Caffe's (`include/caffe/filler.hpp`, docs/caffe-semantics.md#fillers),
the random streams are torch's: the same `torch.manual_seed` gives the same weights, but never Caffe's own numbers (those
come from a loaded .caffemodel). Fan sizes follow Caffe: `fan_in = count / shape[0]`,
`fan_out = count / shape[1]` (or `count` for a 1-axis blob).
"""
from __future__ import annotations

import math
from typing import Callable, Sequence

import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import NetDefinitionError

Shape = Sequence[int]
FillFn = Callable[[tuple[int, ...], caffe_pb2.FillerParameter], torch.Tensor]

_FILLERS: dict[str, FillFn] = {}


def _register(name: str) -> Callable[[FillFn], FillFn]:
    def deco(fn: FillFn) -> FillFn:
        _FILLERS[name] = fn
        return fn
    return deco


def list_fillers() -> list[str]:
    """The filler `type` strings hovcaffe implements (Caffe's full set)."""
    return sorted(_FILLERS)


def constant_filler(value: float) -> caffe_pb2.FillerParameter:
    """A `FillerParameter` of type constant (Caffe's built-in defaults: 0, Scale 1, PReLU 0.25)."""
    return caffe_pb2.FillerParameter(type="constant", value=value)


def fill(shape: Shape, filler: caffe_pb2.FillerParameter, *, where: str = "") -> torch.Tensor:
    """A new float32 tensor of `shape` filled as Caffe's `filler` would (distribution-wise).

    Args:
        shape: blob shape (may be empty for a 0-axis scalar blob).
        filler: the layer's FillerParameter (its proto defaults apply: type constant, value 0).
        where: "layer 'x' weight_filler", used in error messages.

    Raises:
        NetDefinitionError: unknown filler type, or a filler that does not fit the blob shape.
    """
    shape = tuple(int(d) for d in shape)
    try:
        fn = _FILLERS[filler.type]
    except KeyError:
        raise NetDefinitionError(
            f"{where or 'filler'}: unknown filler type {filler.type!r}; "
            f"Caffe's fillers are {', '.join(list_fillers())}") from None
    sparse_ok = filler.type == "gaussian"
    if filler.sparse != -1 and not sparse_ok:
        raise NetDefinitionError(f"{where or 'filler'}: `sparse` is only supported by the "
                                 f"gaussian filler, not {filler.type!r}")
    with torch.no_grad():
        try:
            return fn(shape, filler)
        except _FillerShapeError as exc:
            raise NetDefinitionError(f"{where or 'filler'} ({filler.type}) for a blob of shape "
                                     f"{list(shape)}: {exc}") from None


class _FillerShapeError(Exception):
    pass


def _count(shape: tuple[int, ...]) -> int:
    return math.prod(shape)


def _fans(shape: tuple[int, ...]) -> tuple[int, int]:
    if not shape or shape[0] == 0:
        raise _FillerShapeError("the blob needs at least one non-empty axis")
    count = _count(shape)
    fan_in = count // shape[0]
    fan_out = count // shape[1] if len(shape) > 1 and shape[1] else count
    return fan_in, fan_out


def _scale_n(shape: tuple[int, ...], filler: caffe_pb2.FillerParameter) -> float:
    fan_in, fan_out = _fans(shape)
    norm = filler.variance_norm
    if norm == caffe_pb2.FillerParameter.AVERAGE:
        return (fan_in + fan_out) / 2.0
    if norm == caffe_pb2.FillerParameter.FAN_OUT:
        return float(fan_out)
    return float(fan_in)


@_register("constant")
def _constant(shape, filler):
    return torch.full(shape, float(filler.value), dtype=torch.float32)


@_register("uniform")
def _uniform(shape, filler):
    return torch.empty(shape, dtype=torch.float32).uniform_(filler.min, filler.max)


@_register("gaussian")
def _gaussian(shape, filler):
    out = torch.empty(shape, dtype=torch.float32).normal_(filler.mean, filler.std)
    if filler.sparse >= 0:
        # Caffe keeps each weight with probability sparse / num_outputs (num_outputs = shape[0]).
        if not shape:
            raise _FillerShapeError("sparse gaussian needs at least one axis")
        keep = min(1.0, filler.sparse / shape[0])
        out.mul_(torch.bernoulli(torch.full(shape, keep)))
    return out


@_register("positive_unitball")
def _positive_unitball(shape, filler):
    out = torch.rand(shape, dtype=torch.float32)
    if not shape:
        return torch.ones(shape)
    rows = out.reshape(shape[0], -1)
    rows.div_(rows.sum(dim=1, keepdim=True))
    return out


@_register("xavier")
def _xavier(shape, filler):
    bound = math.sqrt(3.0 / _scale_n(shape, filler))
    return torch.empty(shape, dtype=torch.float32).uniform_(-bound, bound)


@_register("msra")
def _msra(shape, filler):
    std = math.sqrt(2.0 / _scale_n(shape, filler))
    return torch.empty(shape, dtype=torch.float32).normal_(0.0, std)


def bilinear_kernel(size: int) -> torch.Tensor:
    """The (size, size) bilinear interpolation kernel of Caffe's `bilinear` filler."""
    f = math.ceil(size / 2.0)
    c = (size - 1) / (2.0 * f)
    pos = torch.arange(size, dtype=torch.float64)
    line = 1.0 - torch.abs(pos / f - c)
    return torch.outer(line, line).to(torch.float32)


@_register("bilinear")
def _bilinear(shape, filler):
    if len(shape) != 4:
        raise _FillerShapeError("the blob must have 4 axes")
    if shape[2] != shape[3]:
        raise _FillerShapeError("the kernel must be square")
    return bilinear_kernel(shape[3]).expand(shape).contiguous()
