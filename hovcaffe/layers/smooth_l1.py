"""SmoothL1Loss of py-faster-rcnn (rbgirshick/caffe-fast-rcnn), the box-regression loss.

Bottoms: prediction, target and optionally inside and outside weights (both or neither), all
of one (N, ...) shape. With d = w_in * (prediction - target) and s = sigma^2:

    loss = sum(w_out * f(d)) / N,   f(d) = 0.5 s d^2 if |d| < 1 / s, else |d| - 0.5 / s

(divided by N, the first axis, not by the element count). The fork's backward is the
analytic gradient of this to the prediction and the target; the weights get none.
"""
from __future__ import annotations

from typing import Sequence

import torch

from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.registry import register_layer


@register_layer("SmoothL1Loss")
class SmoothL1Loss(CaffeLayer):
    """Weighted smooth-L1 distance, summed and divided by the batch size."""

    is_loss = True
    no_grad_bottoms = (2, 3)   # inside / outside weights

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 2, 4)
        if len(bottom_shapes) == 3:
            raise self.param_error("give both inside and outside weights (4 bottoms) or neither")
        self.expect_tops(0, 1)
        self.sigma2 = float(param.smooth_l1_loss_param.sigma) ** 2
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        first = tuple(bottom_shapes[0])
        for s in bottom_shapes[1:]:
            if tuple(s) != first:
                raise self.shape_error(f"all bottoms must have one shape, got {list(first)} and "
                                       f"{list(s)}")
        return [()]

    def forward(self, pred: torch.Tensor, target: torch.Tensor,
                w_in: torch.Tensor | None = None, w_out: torch.Tensor | None = None
                ) -> list[torch.Tensor]:
        d = pred - target
        if w_in is not None:
            d = w_in.detach() * d
        s = self.sigma2
        a = d.abs()
        err = torch.where(a < 1.0 / s, 0.5 * s * d * d, a - 0.5 / s)
        if w_out is not None:
            err = w_out.detach() * err
        return [err.sum() / pred.shape[0]]
