"""InnerProduct and Embed (docs/caffe-semantics.md#innerproduct-and-embed)."""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from hovcaffe.errors import NetDefinitionError, ShapeError
from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.common import canonical_axis, count, filler_or, new_blob, where
from hovcaffe.layers.registry import register_layer


@register_layer("InnerProduct")
class InnerProduct(CaffeLayer):
    """y = x.flatten(axis) @ W^T + b; W is (N_out, K), or (K, N_out) with `transpose: true`."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        w = where(param)
        p = param.inner_product_param
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        shape = tuple(bottom_shapes[0])
        self.axis = canonical_axis(p.axis, len(shape), w)
        self.num_output = int(p.num_output)
        if self.num_output <= 0:
            raise NetDefinitionError(f"{w}: num_output must be positive")
        self.k = count(shape, self.axis)
        self.transpose = bool(p.transpose)
        wshape = (self.k, self.num_output) if self.transpose else (self.num_output, self.k)
        self.blobs.append(new_blob(wshape, filler_or(p, "weight_filler", 0.0),
                                   what=f"{w} weight_filler"))
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.blobs.append(new_blob((self.num_output,), filler_or(p, "bias_filler", 0.0),
                                       what=f"{w} bias_filler"))
        # Flatten needed only when more than one axis follows `axis`.
        self._flat = len(shape) > self.axis + 1

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) <= self.axis or count(s, self.axis) != self.k:
            raise ShapeError(f"{where(self.param)}: input size incompatible with the inner product "
                             f"weights: bottom {list(s)} flattened from axis {self.axis} has "
                             f"{count(s, self.axis) if len(s) > self.axis else 0} values, "
                             f"the weights expect {self.k}")
        return [s[:self.axis] + (self.num_output,)]

    def macs(self, bottom_shapes: Sequence[Shape]) -> int:
        return count(bottom_shapes[0]) * self.num_output

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        if x.dim() > self.axis + 1:
            x = x.flatten(self.axis)
        w = self.blobs[0]
        b = self.blobs[1] if self.bias_term else None
        return [F.linear(x, w.t() if self.transpose else w, b)]


@register_layer("Embed")
class Embed(CaffeLayer):
    """y[..., :] = W[int(x[...]), :] + b with W (input_dim, num_output); no gradient to x."""

    no_grad_bottoms = (0,)  # the indices

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        w = where(param)
        p = param.embed_param
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        self.num_output, self.input_dim = int(p.num_output), int(p.input_dim)
        if self.num_output <= 0 or self.input_dim <= 0:
            raise NetDefinitionError(f"{w}: num_output and input_dim must be positive")
        self.blobs.append(new_blob((self.input_dim, self.num_output),
                                   filler_or(p, "weight_filler", 0.0), what=f"{w} weight_filler"))
        self.bias_term = bool(p.bias_term)
        if self.bias_term:
            self.blobs.append(new_blob((self.num_output,), filler_or(p, "bias_filler", 0.0),
                                       what=f"{w} bias_filler"))

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        return [tuple(bottom_shapes[0]) + (self.num_output,)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        # Caffe casts the float indices with static_cast<int> (truncation toward zero).
        idx = x.detach().to(torch.long)
        if idx.numel() and not torch.jit.is_tracing() and (int(idx.min()) < 0 or int(idx.max()) >= self.input_dim):
            raise ShapeError(f"{where(self.param)}: index out of range [0, {self.input_dim}): "
                             f"got values from {int(idx.min())} to {int(idx.max())}")
        y = F.embedding(idx, self.blobs[0])
        return [y + self.blobs[1] if self.bias_term else y]
