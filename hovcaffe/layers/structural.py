"""Structural layers: they move, combine, select or reduce values but learn nothing.

Eltwise, Concat, Slice, Split, Flatten, Reshape, Tile, Reduction, ArgMax, Filter, BatchReindex
and Crop, each following BVLC Caffe (docs/caffe-semantics.md#structural-layers). The blob
sources and sinks (Input, Parameter, Silence) live in data_layers.py.
`output_shapes` reproduces each layer's Caffe `Reshape`; `forward` recomputes shapes from the
actual tensors, so a net built for one batch size runs on another.
"""
from __future__ import annotations

from typing import Sequence

import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.layers.base import MANY, CaffeLayer
from hovcaffe.layers.common import count, eager, shape_text
from hovcaffe.layers.registry import register_layer


@register_layer("Eltwise")
class Eltwise(CaffeLayer):
    """Elementwise SUM (with coeff), PROD or MAX over >= 2 bottoms of identical shape."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        p = param.eltwise_param
        self.op = p.operation
        self.expect_bottoms(bottom_shapes, 2, MANY)
        self.expect_tops(1)
        if p.coeff and self.op == caffe_pb2.EltwiseParameter.PROD:  # MAX ignores them, as Caffe
            raise self.param_error("coeff is only allowed with operation SUM")
        if p.coeff and len(p.coeff) != len(bottom_shapes):
            raise self.param_error(f"needs one coeff per bottom ({len(bottom_shapes)}), got {len(p.coeff)}")
        self.coeff = list(p.coeff) or [1.0] * len(bottom_shapes)
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes):
        first = tuple(bottom_shapes[0])
        for i, s in enumerate(bottom_shapes[1:], 1):
            if tuple(s) != first:
                raise self.shape_error(f"bottom {i} has shape {shape_text(s)} but bottom 0 has "
                                       f"{shape_text(first)}; Eltwise needs identical shapes")
        return [first]

    def forward(self, *xs):
        if any(x.shape != xs[0].shape for x in xs):  # torch would broadcast; Caffe may not
            self.output_shapes([tuple(x.shape) for x in xs])  # raises the ShapeError
        if self.op == caffe_pb2.EltwiseParameter.SUM:
            y = None
            for c, x in zip(self.coeff, xs):
                term = x if c == 1.0 else x * c
                y = term if y is None else y + term
        elif self.op == caffe_pb2.EltwiseParameter.PROD:
            # The exact product rule; equals Caffe's stable_prod_grad (the default). Caffe's
            # unstable variant (top / x_i) differs only where some x_i is 0 (it gives NaN there).
            y = xs[0]
            for x in xs[1:]:
                y = y * x
        else:
            # Caffe's tie rule: between bottoms 0 and 1 the later wins on equality; later
            # bottoms win only when strictly greater. torch.where sends the gradient only to
            # the chosen input, i.e. to Caffe's recorded winner.
            y = torch.where(xs[0] > xs[1], xs[0], xs[1])
            for x in xs[2:]:
                y = torch.where(x > y, x, y)
        return [y]


@register_layer("Concat")
class Concat(CaffeLayer):
    """Concatenate bottoms along `axis` (or legacy `concat_dim`, which may not be negative)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1, MANY)
        self.expect_tops(1)
        p = param.concat_param
        if p.HasField("axis") and p.HasField("concat_dim"):
            raise self.param_error("set either concat_param.axis or the legacy concat_dim, not both")
        self.output_shapes(bottom_shapes)

    def _axis(self, rank: int) -> int:
        p = self.param.concat_param
        if p.HasField("concat_dim"):
            if p.concat_dim >= rank:
                raise self.shape_error(f"concat_dim {p.concat_dim} is out of range for a {rank}-axis blob")
            return p.concat_dim
        return self.canon(p.axis, rank)

    def output_shapes(self, bottom_shapes):
        first = list(bottom_shapes[0])
        axis = self._axis(len(first))
        for i, s in enumerate(bottom_shapes[1:], 1):
            if len(s) != len(first) or any(a != b for j, (a, b) in enumerate(zip(s, first)) if j != axis):
                raise self.shape_error(f"bottom {i} has shape {shape_text(s)}, bottom 0 has "
                                       f"{shape_text(first)}: all dims except axis {axis} must match")
            first[axis] += s[axis]
        return [tuple(first)]

    def forward(self, *xs):
        if len(xs) == 1:
            return [xs[0]]
        return [torch.cat(xs, dim=self._axis(xs[0].dim()))]


@register_layer("Slice")
class Slice(CaffeLayer):
    """Split one bottom along `axis`/`slice_dim` at `slice_point`s, or into equal parts."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.num_tops = self.expect_tops(1, MANY)
        p = param.slice_param
        if p.HasField("axis") and p.HasField("slice_dim"):
            raise self.param_error("set either slice_param.axis or the legacy slice_dim, not both")
        self.points = list(p.slice_point)
        if self.points and len(self.points) != self.num_tops - 1:
            raise self.param_error(f"needs #tops - 1 = {self.num_tops - 1} slice_point values, "
                                   f"got {len(self.points)}")
        if any(b <= a for a, b in zip([0] + self.points, self.points)):
            raise self.param_error(f"slice_point values {self.points} must be positive and "
                                   f"strictly increasing")
        self.output_shapes(bottom_shapes)

    def _axis(self, rank: int) -> int:
        p = self.param.slice_param
        if p.HasField("slice_dim"):
            if p.slice_dim >= rank:
                raise self.shape_error(f"slice_dim {p.slice_dim} is out of range for a {rank}-axis blob")
            return p.slice_dim
        return self.canon(p.axis, rank)

    def _sizes(self, shape: Sequence[int]) -> tuple[int, list[int]]:
        axis = self._axis(len(shape))
        dim = shape[axis]
        if self.points:
            if self.num_tops > dim or self.points[-1] > dim:
                raise self.shape_error(f"slice_point {self.points} do not fit axis {axis} of "
                                       f"size {dim} (bottom {shape_text(shape)})")
            edges = [0] + self.points + [dim]
            return axis, [b - a for a, b in zip(edges, edges[1:])]
        if dim % self.num_tops:
            raise self.shape_error(f"axis {axis} of size {dim} (bottom {shape_text(shape)}) cannot be "
                                   f"split into {self.num_tops} equal parts")
        return axis, [dim // self.num_tops] * self.num_tops

    def output_shapes(self, bottom_shapes):
        shape = tuple(bottom_shapes[0])
        axis, sizes = self._sizes(shape)
        return [shape[:axis] + (n,) + shape[axis + 1:] for n in sizes]

    def forward(self, x):
        axis, sizes = self._sizes(tuple(x.shape))
        return list(torch.split(x, sizes, dim=axis))


@register_layer("Split")
class Split(CaffeLayer):
    """Copy one bottom to every top; autograd sums the gradients like Caffe's Split backward."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.num_tops = self.expect_tops(1, MANY)

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])] * self.num_tops

    def forward(self, x):
        return [x] * self.num_tops


@register_layer("Flatten")
class Flatten(CaffeLayer):
    """Merge axes `axis..end_axis` (both canonicalised) into one."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        self.output_shapes(bottom_shapes)

    def _span(self, rank: int) -> tuple[int, int]:
        p = self.param.flatten_param
        start = self.canon(p.axis, rank)
        end = self.canon(p.end_axis, rank, "end_axis")
        if end < start:
            raise self.shape_error(f"end_axis {p.end_axis} comes before axis {p.axis} "
                                   f"for a {rank}-axis blob")
        return start, end

    def output_shapes(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        start, end = self._span(len(s))
        return [s[:start] + (count(s, start, end + 1),) + s[end + 1:]]

    def forward(self, x):
        start, end = self._span(x.dim())
        return [torch.flatten(x, start, end)]


@register_layer("Reshape")
class Reshape(CaffeLayer):
    """Replace the axes `[axis, axis+num_axes)` by `shape`; 0 copies a dim, -1 infers one."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        p = param.reshape_param
        self.dims = [int(d) for d in p.shape.dim]
        if any(d < -1 for d in self.dims):
            raise self.param_error(f"reshape_param.shape {self.dims} has a dim below -1")
        if self.dims.count(-1) > 1:
            raise self.param_error(f"reshape_param.shape {self.dims} has more than one -1")
        if p.num_axes < -1:
            raise self.param_error(f"num_axes must be >= 0, or -1 for all; got {p.num_axes}")
        self.output_shapes(bottom_shapes)

    def _span(self, rank: int) -> tuple[int, int]:
        p = self.param.reshape_param
        # Unlike CanonicalAxisIndex, a negative axis here means "after axis + rank": -1 is the end.
        start = p.axis if p.axis >= 0 else rank + p.axis + 1
        if not 0 <= start <= rank:
            raise self.shape_error(f"axis {p.axis} is out of range for a {rank}-axis blob")
        end = rank if p.num_axes == -1 else start + p.num_axes
        if end > rank:
            raise self.shape_error(f"axis {p.axis} + num_axes {p.num_axes} is out of range "
                                   f"for a {rank}-axis blob")
        return start, end

    def _new_dims(self, shape: Sequence[int]) -> tuple[int, int, list[int]]:
        """The replacement dims with 0s resolved (a -1 is left for the caller)."""
        start, end = self._span(len(shape))
        new = list(self.dims)
        for i, d in enumerate(new):
            if d == 0:
                if start + i >= len(shape):
                    raise self.shape_error(f"shape dim {i} is 0 but the bottom {shape_text(shape)} "
                                           f"has no axis {start + i} to copy")
                new[i] = shape[start + i]
        return start, end, new

    def output_shapes(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        start, end, new = self._new_dims(s)
        top = list(s[:start]) + new + list(s[end:])
        total = count(s)
        if -1 in new:
            known = count([d for d in top if d != -1])
            if known == 0 or total % known:
                raise self.shape_error(f"bottom {shape_text(s)} (count {total}) is not divisible by "
                                       f"the product of the given dims ({known})")
            top[top.index(-1)] = total // known
        if count(top) != total:
            raise self.shape_error(f"shape {shape_text(top)} has count {count(top)}, bottom "
                                   f"{shape_text(s)} has count {total}")
        return [tuple(top)]

    def forward(self, x):
        start, end, new = self._new_dims(tuple(x.shape))
        # Pass -1 through to torch so dynamic batch sizes (and ONNX export) keep working.
        return [x.reshape(list(x.shape[:start]) + new + list(x.shape[end:]))]


@register_layer("Tile")
class Tile(CaffeLayer):
    """Repeat the block from `axis` on `tiles` times (block tiling, like Tensor.repeat)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        p = param.tile_param
        if not p.HasField("tiles"):
            raise self.param_error("tile_param.tiles must be specified")
        if p.tiles <= 0:
            raise self.param_error(f"tile_param.tiles must be positive, got {p.tiles}")
        self.tiles = p.tiles
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes):
        s = list(bottom_shapes[0])
        axis = self.canon(self.param.tile_param.axis, len(s))
        s[axis] *= self.tiles
        return [tuple(s)]

    def forward(self, x):
        reps = [1] * x.dim()
        reps[self.canon(self.param.tile_param.axis, x.dim())] = self.tiles
        return [x.repeat(reps)]


@register_layer("Reduction")
class Reduction(CaffeLayer):
    """SUM / ASUM / SUMSQ / MEAN over every axis from `axis` on, times `coeff`."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        self.op = param.reduction_param.operation
        self.coeff = float(param.reduction_param.coeff)
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        return [s[:self.canon(self.param.reduction_param.axis, len(s))]]

    def forward(self, x):
        axis = self.canon(self.param.reduction_param.axis, x.dim())
        flat = x.reshape(tuple(x.shape[:axis]) + (-1,))
        R = caffe_pb2.ReductionParameter
        if self.op == R.ASUM:
            y = flat.abs().sum(-1)
        elif self.op == R.SUMSQ:
            y = (flat * flat).sum(-1)
        else:
            y = flat.sum(-1)
        coeff = self.coeff / flat.shape[-1] if self.op == R.MEAN else self.coeff
        return [y if coeff == 1.0 else y * coeff]


@register_layer("ArgMax")
class ArgMax(CaffeLayer):
    """Top-k indices (and/or values); equal values rank the larger index first, like Caffe."""

    has_backward = False

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        p = param.argmax_param
        self.top_k, self.out_max_val, self.has_axis = p.top_k, p.out_max_val, p.HasField("axis")
        if self.top_k < 1:
            raise self.param_error("argmax_param.top_k must be at least 1")
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes):
        s = tuple(bottom_shapes[0])
        if self.has_axis:
            axis = self.canon(self.param.argmax_param.axis, len(s))
            if self.top_k > s[axis]:
                raise self.shape_error(f"top_k {self.top_k} exceeds axis {axis} of {shape_text(s)}")
            return [s[:axis] + (self.top_k,) + s[axis + 1:]]
        if self.top_k > count(s, 1):
            raise self.shape_error(f"top_k {self.top_k} exceeds the {count(s, 1)} values per item "
                                   f"of {shape_text(s)}")
        top = [1] * max(len(s), 3)
        top[0], top[1], top[2] = s[0], 2 if self.out_max_val else 1, self.top_k
        return [tuple(top)]

    def forward(self, x):
        x = x.detach()  # Caffe has no ArgMax backward
        if self.has_axis:
            axis = self.canon(self.param.argmax_param.axis, x.dim())
            values, index = _topk_larger_index_first(x, axis, self.top_k)
            return [values if self.out_max_val else index.to(x.dtype)]
        flat = x.reshape(x.shape[0], -1)
        values, index = _topk_larger_index_first(flat, 1, self.top_k)
        parts = [index.to(x.dtype)] + ([values] if self.out_max_val else [])
        y = torch.stack(parts, dim=1)  # (N, 1 or 2, top_k)
        return [y.reshape(self.output_shapes([tuple(x.shape)])[0])]


def _topk_larger_index_first(x: torch.Tensor, dim: int, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k along `dim` ordered by (value, index) descending, as Caffe's std::greater on pairs.

    A stable descending sort of the reversed axis keeps equal values in reversed order, i.e.
    the larger original index first (torch.topk leaves the tie order unspecified).
    """
    n = x.shape[dim]
    values, rev_index = torch.sort(x.flip(dim), dim=dim, descending=True, stable=True)
    values, rev_index = values.narrow(dim, 0, k), rev_index.narrow(dim, 0, k)
    return values, (n - 1) - rev_index


@register_layer("Filter")
class Filter(CaffeLayer):
    """Keep the items n whose selector (last bottom, shape (N,1,...,1)) is non-zero."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 2, MANY)
        if self.expect_tops(1, MANY) != len(bottom_shapes) - 1:
            raise self.param_error(f"needs one top per filtered bottom ({len(bottom_shapes) - 1}), "
                                   f"got {len(param.top)}")
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes):
        # Caffe's first Reshape keeps the full batch; later ones depend on the selector's data.
        sel = tuple(bottom_shapes[-1])
        if any(d != 1 for d in sel[1:]):
            raise self.shape_error(f"selector blob {shape_text(sel)} must be (N, 1, ..., 1)")
        for i, s in enumerate(bottom_shapes[:-1]):
            if s[0] != sel[0]:
                raise self.shape_error(f"bottom {i} {shape_text(s)} and the selector {shape_text(sel)} "
                                       f"differ in their first dim")
        return [tuple(s) for s in bottom_shapes[:-1]]

    def forward(self, *bottoms):
        *data, selector = bottoms
        keep = torch.nonzero(selector.detach().reshape(-1) != 0).reshape(-1)
        return [x.index_select(0, keep) for x in data]


@register_layer("BatchReindex")
class BatchReindex(CaffeLayer):
    """y[i] = x[int(perm[i])] along axis 0; gradients accumulate into repeated items."""

    no_grad_bottoms = (1,)  # the permutation

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 2)
        self.expect_tops(1)
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes):
        x, perm = tuple(bottom_shapes[0]), tuple(bottom_shapes[1])
        if len(perm) != 1:
            raise self.shape_error(f"the index bottom must have 1 axis, got {shape_text(perm)}")
        return [perm + x[1:]]

    def forward(self, x, perm):
        p = perm.detach()
        if eager() and p.numel() and bool((p.min() < 0) | (p.max() >= x.shape[0])):
            raise self.shape_error(f"indices must lie in [0, {x.shape[0]}), got "
                                   f"min {p.min().item()} max {p.max().item()}")
        return [x.index_select(0, p.to(torch.long))]


@register_layer("Crop")
class Crop(CaffeLayer):
    """Crop bottom 0 to bottom 1's size on every axis from `axis`, at `offset`s."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 2)
        self.expect_tops(1)
        self.output_shapes(bottom_shapes)

    def _offsets(self, shape: Sequence[int], ref: Sequence[int]) -> list[tuple[int, int]]:
        """(offset, size) per axis of bottom 0."""
        p = self.param.crop_param
        rank = len(shape)
        start = self.canon(p.axis, rank)
        offsets = list(p.offset)
        if len(offsets) > 1 and start + len(offsets) != rank:
            raise self.param_error(f"{len(offsets)} offsets given, but {rank - start} axes "
                                   f"(from axis {start}) are cropped")
        if len(ref) < rank:
            raise self.shape_error(f"reference bottom {shape_text(ref)} has fewer axes than "
                                   f"bottom 0 {shape_text(shape)}")
        out = []
        for i in range(rank):
            if i < start:
                out.append((0, shape[i]))
                continue
            off = offsets[0] if len(offsets) == 1 else (offsets[i - start] if offsets else 0)
            if shape[i] - off < ref[i]:
                raise self.shape_error(f"crop of axis {i} to size {ref[i]} at offset {off} does not fit "
                                       f"bottom 0 {shape_text(shape)}")
            out.append((off, ref[i]))
        return out

    def output_shapes(self, bottom_shapes):
        return [tuple(n for _, n in self._offsets(bottom_shapes[0], bottom_shapes[1]))]

    def forward(self, x, ref):
        y = x
        for axis, (off, n) in enumerate(self._offsets(tuple(x.shape), tuple(ref.shape))):
            if off or n != x.shape[axis]:
                y = y.narrow(axis, off, n)
        return [y]
