"""SSD's (weiliu89/caffe, branch ssd) feature-map layers: Normalize and Permute.

* Normalize: x / sqrt(sum x^2 + eps), the sum over (C, H, W) of each sample when
  across_spatial, else over C at each position; then times a learned scale - one 0-axis blob
  when channel_shared, else one value per channel (C). The scale is filled by scale_filler,
  unset: constant 1.
* Permute: top axis i is bottom axis order[i]; axes not named follow in their own order.
"""
from __future__ import annotations

from typing import Sequence

import torch

from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.common import filler_or, new_blob
from hovcaffe.layers.registry import register_layer


@register_layer("Normalize")
class Normalize(CaffeLayer):
    """L2 normalisation with a learned scale (SSD's conv4_3_norm)."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        p = param.norm_param
        shape = tuple(bottom_shapes[0])
        if len(shape) < 2:
            raise self.shape_error(f"needs a bottom with at least 2 axes, got {list(shape)}")
        self.across_spatial = bool(p.across_spatial)
        self.channel_shared = bool(p.channel_shared)
        self.eps = float(p.eps)
        self.channels = shape[1]
        blob_shape = () if self.channel_shared else (self.channels,)
        self.blobs.append(new_blob(blob_shape, filler_or(p, "scale_filler", 1.0),
                                   what=f"{self.where()} scale_filler"))

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) < 2 or s[1] != self.channels:
            raise self.shape_error(f"built for {self.channels} channels, got bottom {list(s)}")
        return [s]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        dims = tuple(range(1, x.dim())) if self.across_spatial else (1,)
        norm = torch.sqrt((x * x).sum(dim=dims, keepdim=True) + self.eps)
        scale = self.blobs[0]
        if not self.channel_shared:
            scale = scale.reshape((1, self.channels) + (1,) * (x.dim() - 2))
        return [x / norm * scale]


@register_layer("Permute")
class Permute(CaffeLayer):
    """Axis permutation, e.g. order 0 2 3 1 turns NCHW into NHWC."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        rank = len(bottom_shapes[0])
        order = [int(o) for o in param.permute_param.order]
        if any(o >= rank for o in order):
            raise self.param_error(f"order {order} names an axis beyond the bottom's {rank}")
        if len(set(order)) != len(order):
            raise self.param_error(f"order {order} repeats an axis")
        self.order = tuple(order + [i for i in range(rank) if i not in order])

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) != len(self.order):
            raise self.shape_error(f"built for {len(self.order)} axes, got bottom {list(s)}")
        return [tuple(s[i] for i in self.order)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        return [x.permute(self.order).contiguous()]
