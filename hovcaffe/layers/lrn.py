"""Local response normalisation (docs/caffe-semantics.md#lrn).

ACROSS_CHANNELS: y = x * (k + alpha/n * sum over n neighbouring channels of x^2)^-beta, which is
exactly `F.local_response_norm` for odd n. WITHIN_CHANNEL: y = x * (1 + alpha/n^2 * sum over the
n x n zero-padded window of x^2)^-beta - Caffe builds it from pooling + Power and so ignores `k`.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import NetDefinitionError, ShapeError
from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.common import count, where
from hovcaffe.layers.registry import register_layer

ACROSS = caffe_pb2.LRNParameter.ACROSS_CHANNELS


@register_layer("LRN")
class LRN(CaffeLayer):
    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        w = where(param)
        p = param.lrn_param
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        self.size = int(p.local_size)
        if self.size % 2 == 0:
            raise NetDefinitionError(f"{w}: local_size must be odd, got {self.size}")
        self.alpha, self.beta, self.k = float(p.alpha), float(p.beta), float(p.k)
        self.across = p.norm_region == ACROSS
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) != 4:
            raise ShapeError(f"{where(self.param)}: LRN needs a 4-D bottom (N, C, H, W), "
                             f"got shape {list(s)}")
        return [s]

    def macs(self, bottom_shapes: Sequence[Shape]) -> int:
        n = self.size if self.across else self.size * self.size
        return count(bottom_shapes[0]) * (n + 2)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if self.across:
            return [F.local_response_norm(x, self.size, self.alpha, self.beta, self.k)]
        pad = (self.size - 1) // 2
        # avg_pool with count_include_pad divides by n^2 everywhere (stride-1 windows never
        # reach beyond H + pad), which is Caffe's alpha / n^2.
        mean_sq = F.avg_pool2d(x * x, self.size, 1, pad, count_include_pad=True)
        return [x * torch.pow(1.0 + self.alpha * mean_sq, -self.beta)]
