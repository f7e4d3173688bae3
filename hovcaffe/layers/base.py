"""The one base class of every built Caffe layer (see registry.py for how builders are found)."""
from __future__ import annotations

from typing import ClassVar, Sequence

import torch
from torch import nn

from hovcaffe.errors import NetDefinitionError, ShapeError
from hovcaffe.layers.common import Shape, canonical_axis, where

MANY = 1 << 30  # "no upper limit" for expect_bottoms / expect_tops


def _arity(low: int, high: int) -> str:
    if low == high:
        return str(low)
    return f"at least {low}" if high >= MANY else f"{low} to {high}"


class CaffeLayer(nn.Module):
    """Base class of a built Caffe layer.

    * A layer class is its own builder: `Cls(param, bottom_shapes, phase)` (the signature in
      registry.py), and passes the same three arguments to `CaffeLayer.__init__`. A replacement
      for a Caffe Python layer may pass only `param`; its `phase` is None then.
    * `self.blobs` - an `nn.ParameterList` holding the layer's Caffe blobs in Caffe's order
      (the order a .caffemodel stores them: conv [weight, bias], BatchNorm [mean_sum, var_sum,
      scale_factor], ...). Every blob is an `nn.Parameter`, including statistics that the solver
      never moves (Caffe treats them as params with lr_mult 0); those have requires_grad=False.
      Shared params (`param { name: ... }`) are the *same* Parameter object in several layers.
    * `forward(*bottoms) -> list[Tensor]`, one tensor per top, never modifying a bottom in place
      (the net gives in-place tops a new version of the blob name instead).
    * `output_shapes(bottom_shapes) -> list[Shape]`: pure shape inference (Caffe's Reshape),
      used by the net builder, `hovcaffe inspect` and the MAC counter; no tensors are touched.
    * `macs(bottom_shapes) -> int`: multiply-accumulates per forward pass (0 when negligible).

    The class attributes below are the layer's *traits*: what the net needs to know about a type
    besides its shapes. A subclass overrides the ones that differ from Caffe's defaults.
    """

    #: A Caffe LossLayer: loss_weight defaults to 1 on top 0, and the top may be left unnamed.
    is_loss: ClassVar[bool] = False
    #: False where Caffe's layer has no Backward at all: the net detaches every bottom.
    has_backward: ClassVar[bool] = True
    #: Bottoms that never receive a gradient, even under force_backward (Caffe's
    #: AllowForceBackward false for that bottom, e.g. the labels of a loss).
    no_grad_bottoms: ClassVar[tuple[int, ...]] = ()
    #: Blobs the solver never moves (statistics kept as params, such as BatchNorm's).
    frozen_blobs: ClassVar[tuple[int, ...]] = ()

    def __init__(self, param, bottom_shapes: Sequence[Shape] = (), phase: int | None = None) -> None:
        super().__init__()
        self.param = param  # caffe_pb2.LayerParameter, read-only
        self.phase = phase  # caffe_pb2.TRAIN or TEST: the layer's own phase
        self.blobs = nn.ParameterList()

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def type(self) -> str:
        return self.param.type

    def where(self) -> str:
        """`layer 'name' (Type)`, the head of this layer's error messages."""
        return where(self.param)

    def shape_error(self, message: str) -> ShapeError:
        return ShapeError(f"{self.where()}: {message}")

    def param_error(self, message: str) -> NetDefinitionError:
        return NetDefinitionError(f"{self.where()}: {message}")

    def canon(self, axis: int, rank: int, field: str = "axis") -> int:
        """Caffe's CanonicalAxisIndex of a `field` value for a `rank`-axis blob."""
        return canonical_axis(axis, rank, f"{self.where()} {field}")

    def expect_bottoms(self, bottom_shapes: Sequence[Shape], low: int, high: int | None = None) -> None:
        """Raise unless the layer has between `low` and `high` (default: `low`) bottoms."""
        high = low if high is None else high
        if not low <= len(bottom_shapes) <= high:
            raise self.param_error(f"takes {_arity(low, high)} bottom blob(s), got {len(bottom_shapes)}")

    def expect_tops(self, low: int, high: int | None = None) -> int:
        """Raise unless the prototxt names between `low` and `high` tops; returns the number."""
        high = low if high is None else high
        n = len(self.param.top)
        if not low <= n <= high:
            raise self.param_error(f"takes {_arity(low, high)} top blob(s), got {n}")
        return n

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__}.output_shapes")

    def macs(self, bottom_shapes: Sequence[Shape]) -> int:
        return 0

    def forward(self, *bottoms: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
