"""The contract every built Caffe layer fulfils (see registry.py for how builders are found)."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn

Shape = tuple[int, ...]


class CaffeLayer(nn.Module):
    """Base class of a built Caffe layer.

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
    """

    def __init__(self, param) -> None:
        super().__init__()
        self.param = param  # caffe_pb2.LayerParameter, read-only
        self.blobs = nn.ParameterList()

    @property
    def name(self) -> str:
        return self.param.name

    @property
    def type(self) -> str:
        return self.param.type

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:  # pragma: no cover
        raise NotImplementedError(f"{type(self).__name__}.output_shapes")

    def macs(self, bottom_shapes: Sequence[Shape]) -> int:
        return 0

    def forward(self, *bottoms: torch.Tensor) -> list[torch.Tensor]:  # pragma: no cover
        raise NotImplementedError
