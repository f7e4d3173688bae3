"""Region pooling: ROIPooling (Fast/Faster R-CNN) and PSROIPooling (R-FCN).

Both take a feature map (N, C, H, W) and regions (R, 5) = (batch index, x1, y1, x2, y2) in image
pixels, scaled onto the map by `spatial_scale`.

ROIPooling follows rbgirshick/caffe-fast-rcnn (`roi_pooling_layer.cpp`): region corners are
rounded (half away from zero, C's `round`), the region spans x1..x2 inclusive (at least 1
cell), and bin (ph, pw) covers rows floor(ph * h / PH) .. ceil((ph + 1) * h / PH) with the bin
size h / PH in float, clipped to the map. Each bin is the maximum of its cells (0 for an empty
bin); the gradient goes to the first maximal cell in row-major order, as Caffe's argmax does.
No gradient reaches the regions.

PSROIPooling follows daijifeng001/R-FCN (`psroi_pooling_layer.cu`): the region starts at
round(x1) * scale and ends at (round(x2) + 1) * scale (at least 0.1 wide), bins use float
bounds floor/ceil, and bin (ph, pw) of output channel c averages input channel
(c * G + ph) * G + pw (G = group_size = the pooled size). Its backward is the exact derivative
of that average, which autograd gives.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from hovcaffe.layers.base import CaffeLayer
from hovcaffe.layers.common import Shape, count, eager, shape_text
from hovcaffe.layers.detection import export_refusal
from hovcaffe.layers.registry import register_layer


def c_round(x: np.ndarray) -> np.ndarray:
    """C's round(): halves away from zero (numpy's round goes to even)."""
    return np.sign(x) * np.floor(np.abs(x) + 0.5)


def roi_pool_bins(rois: np.ndarray, spatial_scale: float, pooled: tuple[int, int],
                  hw: tuple[int, int]) -> tuple[np.ndarray, ...]:
    """caffe-fast-rcnn's integer bin bounds: (hstart, hend) (R, PH) and (wstart, wend) (R, PW)."""
    f32 = np.float32
    scale = f32(spatial_scale)
    # The product is float (Dtype) in Caffe; round() then works in double.
    corners = c_round((rois[:, 1:5].astype(np.float32) * scale).astype(np.float64)).astype(np.int64)
    start_w, start_h, end_w, end_h = corners.T
    out = []
    for start, end, n, size in ((start_h, end_h, pooled[0], hw[0]), (start_w, end_w, pooled[1], hw[1])):
        length = np.maximum(end - start + 1, 1)
        bin_size = length.astype(np.float32) / f32(n)
        p = np.arange(n, dtype=np.float32)
        lo = np.floor(p[None, :] * bin_size[:, None]).astype(np.int64) + start[:, None]
        hi = np.ceil((p[None, :] + f32(1)) * bin_size[:, None]).astype(np.int64) + start[:, None]
        out += [np.clip(lo, 0, size), np.clip(hi, 0, size)]
    return tuple(out)


def _bin_maxima(x: torch.Tensor, batch_index: np.ndarray, bins: tuple[np.ndarray, ...]
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Each bin's maximum (0 when empty) and Caffe's argmax h * W + w (-1 when empty)."""
    hs, he, ws, we = bins
    n, c, h, w = (int(d) for d in x.shape)   # ints also while tracing
    r, ph, pw = len(batch_index), hs.shape[1], ws.shape[1]
    out = x.new_zeros((r, c, ph, pw))
    argmax = torch.full((r, c, ph, pw), -1, dtype=torch.long, device=x.device)
    neg = torch.tensor(-np.inf, dtype=x.dtype, device=x.device)
    for i in range(r):
        h0, h1 = int(hs[i].min()), int(he[i].max())
        w0, w1 = int(ws[i].min()), int(we[i].max())
        if h1 <= h0 or w1 <= w0:
            continue
        crop = x[int(batch_index[i]), :, h0:h1, w0:w1]                         # (C, h, w)
        hmask = _window_mask(hs[i] - h0, he[i] - h0, h1 - h0).to(x.device)        # (PH, h)
        wmask = _window_mask(ws[i] - w0, we[i] - w0, w1 - w0).to(x.device)        # (PW, w)
        rows = torch.where(wmask[None, None], crop[:, :, None, :], neg)           # (C, h, PW, w)
        row_max, row_arg = rows.max(dim=-1)                                       # (C, h, PW)
        cols = torch.where(hmask[None, :, :, None], row_max[:, None], neg)       # (C, PH, h, PW)
        best, best_h = cols.max(dim=2)                                            # (C, PH, PW)
        best_w = torch.gather(row_arg, 1, best_h)                                 # (C, PH, PW)
        empty = ~(hmask.any(1)[:, None] & wmask.any(1)[None, :])                  # (PH, PW)
        out[i] = torch.where(empty, 0.0, best)
        argmax[i] = torch.where(empty, -1, (best_h + h0) * w + (best_w + w0))
    return out, argmax


class _RoiMaxPool(torch.autograd.Function):
    """Max over each bin with Caffe's argmax routing of the gradient."""

    @staticmethod
    def forward(ctx, x, batch_index, bins):  # noqa: D102
        out, argmax = _bin_maxima(x, batch_index, bins)
        ctx.save_for_backward(argmax, torch.as_tensor(batch_index, device=x.device))
        ctx.shape = x.shape
        return out

    @staticmethod
    def backward(ctx, grad_out):  # noqa: D102
        argmax, batch_index = ctx.saved_tensors
        n, c, h, w = ctx.shape
        grad = grad_out.new_zeros(n * c * h * w)
        valid = argmax >= 0
        channels = torch.arange(c, device=grad_out.device).view(1, -1, 1, 1)
        base = (batch_index.view(-1, 1, 1, 1) * c + channels) * (h * w)
        index = (base + argmax)[valid]
        grad.index_add_(0, index, grad_out[valid])
        return grad.view(n, c, h, w), None, None


def _window_mask(lo: np.ndarray, hi: np.ndarray, size: int) -> torch.Tensor:
    pos = np.arange(size)
    return torch.from_numpy((pos[None, :] >= lo[:, None]) & (pos[None, :] < hi[:, None]))


def roi_max_pool(x: torch.Tensor, rois: torch.Tensor, pooled: tuple[int, int],
                 spatial_scale: float) -> torch.Tensor:
    """caffe-fast-rcnn ROIPooling forward (R, C, PH, PW); backward to `x` via Caffe's argmax."""
    r = rois.detach().cpu().numpy()
    bins = roi_pool_bins(r, spatial_scale, pooled, tuple(x.shape[2:]))
    batch_index = r[:, 0].astype(np.int64)
    return _RoiMaxPool.apply(x, batch_index, bins)


class _OnnxMaxRoiPool(torch.autograd.Function):
    """ROIPooling while exporting to ONNX: the values come from `roi_max_pool`, the graph gets
    ONNX's MaxRoiPool, which follows the same caffe-fast-rcnn arithmetic."""

    @staticmethod
    def forward(ctx, x, rois, pooled, spatial_scale):  # noqa: D102
        r = rois.detach().cpu().numpy()
        bins = roi_pool_bins(r, spatial_scale, pooled, tuple(int(d) for d in x.shape[2:]))
        return _bin_maxima(x, r[:, 0].astype(np.int64), bins)[0]

    @staticmethod
    def symbolic(g, x, rois, pooled, spatial_scale):  # noqa: D102
        return g.op("MaxRoiPool", x, rois, pooled_shape_i=list(pooled), spatial_scale_f=spatial_scale)


def psroi_bins(rois: np.ndarray, spatial_scale: float, group: int, hw: tuple[int, int]
               ) -> tuple[np.ndarray, ...]:
    """R-FCN's integer bin bounds (hstart, hend) (R, G) and (wstart, wend) (R, G)."""
    f32 = np.float32
    scale = f32(spatial_scale)
    rounded = c_round(rois[:, 1:5].astype(np.float32).astype(np.float64)).astype(np.float32)
    start_w, start_h = rounded[:, 0] * scale, rounded[:, 1] * scale
    end_w, end_h = (rounded[:, 2] + f32(1)) * scale, (rounded[:, 3] + f32(1)) * scale
    out = []
    p = np.arange(group, dtype=np.float32)
    for start, end, size in ((start_h, end_h, hw[0]), (start_w, end_w, hw[1])):
        bin_size = np.maximum(end - start, f32(0.1)) / f32(group)
        lo = np.floor(p[None, :] * bin_size[:, None] + start[:, None]).astype(np.int64)
        hi = np.ceil((p[None, :] + f32(1)) * bin_size[:, None] + start[:, None]).astype(np.int64)
        out += [np.clip(lo, 0, size), np.clip(hi, 0, size)]
    return tuple(out)


def psroi_avg_pool(x: torch.Tensor, rois: torch.Tensor, output_dim: int, group: int,
                   spatial_scale: float) -> torch.Tensor:
    """R-FCN PSROIPooling forward (R, output_dim, G, G), differentiable in `x`.

    Window sums come from a summed-area table in float64 (exact enough that the float32 result
    matches a direct sum), gathered per (region, output channel, bin).
    """
    r = rois.detach().cpu().numpy()
    n, c, h, w = x.shape
    hs, he, ws, we = (torch.from_numpy(a).to(x.device) for a in psroi_bins(r, spatial_scale, group, (h, w)))
    table = torch.nn.functional.pad(x.double().cumsum(2).cumsum(3), (1, 0, 1, 0))  # (N, C, H+1, W+1)
    b = torch.from_numpy(r[:, 0].astype(np.int64)).to(x.device).view(-1, 1, 1, 1)
    gh = torch.arange(group, device=x.device).view(1, 1, -1, 1)
    gw = torch.arange(group, device=x.device).view(1, 1, 1, -1)
    ch = (torch.arange(output_dim, device=x.device).view(1, -1, 1, 1) * group + gh) * group + gw
    h0, h1 = hs.view(-1, 1, group, 1), he.view(-1, 1, group, 1)
    w0, w1 = ws.view(-1, 1, 1, group), we.view(-1, 1, 1, group)
    total = (table[b, ch, h1, w1] - table[b, ch, h0, w1] - table[b, ch, h1, w0]
             + table[b, ch, h0, w0])
    area = ((h1 - h0) * (w1 - w0)).to(total.dtype)
    empty = area <= 0
    out = torch.where(empty, 0.0, total / torch.where(empty, 1.0, area))
    return out.to(x.dtype)


class _RegionPooling(CaffeLayer):
    """Shape checks shared by the two region poolings: a feature map and (R, 5) regions."""

    no_grad_bottoms = (1,)   # Caffe's region poolings send no gradient to the regions

    def refuse_tracing(self) -> None:
        if not eager():   # the bins are computed from the region values outside the graph
            raise export_refusal(self, f"export the part of the net before it (-outputs "
                                       f"{','.join(self.param.bottom)})")

    def check_bottoms(self, bottom_shapes: Sequence[Shape]) -> None:
        self.expect_bottoms(bottom_shapes, 2)
        feat, rois = bottom_shapes
        if len(feat) != 4:
            raise self.shape_error(f"bottom 0 must be a 4-D feature map (N, C, H, W), got "
                                   f"{shape_text(feat)}")
        if len(rois) < 2 or count(rois, 1) != 5:
            raise self.shape_error(f"bottom 1 must hold regions of 5 values (batch index, x1, y1, "
                                   f"x2, y2), got shape {shape_text(rois)}")


@register_layer("ROIPooling")
class ROIPooling(_RegionPooling):
    """caffe-fast-rcnn's ROIPooling (see the module docstring)."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.roi_pooling_param
        self.pooled = (int(p.pooled_h), int(p.pooled_w))
        if min(self.pooled) <= 0:
            raise self.param_error(f"roi_pooling_param needs pooled_h and pooled_w > 0, got "
                                   f"{self.pooled[0]} x {self.pooled[1]}")
        self.spatial_scale = float(p.spatial_scale)
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_bottoms(bottom_shapes)
        return [(bottom_shapes[1][0], bottom_shapes[0][1], *self.pooled)]

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> list[torch.Tensor]:
        rois = rois.reshape(-1, 5)
        if torch.onnx.is_in_onnx_export():
            return [_OnnxMaxRoiPool.apply(x, rois, self.pooled, self.spatial_scale)]
        self.refuse_tracing()
        return [roi_max_pool(x, rois, self.pooled, self.spatial_scale)]


@register_layer("PSROIPooling")
class PSROIPooling(_RegionPooling):
    """R-FCN's position-sensitive average ROI pooling (see the module docstring)."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        p = param.psroi_pooling_param
        self.output_dim, self.group = int(p.output_dim), int(p.group_size)
        self.spatial_scale = float(p.spatial_scale)
        if self.output_dim <= 0 or self.group <= 0:
            raise self.param_error(f"psroi_pooling_param needs output_dim and group_size > 0, got "
                                   f"{self.output_dim} and {self.group}")
        self.output_shapes(bottom_shapes)

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        self.check_bottoms(bottom_shapes)
        want = self.output_dim * self.group * self.group
        if bottom_shapes[0][1] != want:
            raise self.shape_error(f"bottom 0 has {bottom_shapes[0][1]} channels; output_dim "
                                   f"{self.output_dim} x group_size^2 {self.group ** 2} needs {want}")
        return [(bottom_shapes[1][0], self.output_dim, self.group, self.group)]

    def forward(self, x: torch.Tensor, rois: torch.Tensor) -> list[torch.Tensor]:
        self.refuse_tracing()
        return [psroi_avg_pool(x, rois.reshape(-1, 5), self.output_dim, self.group,
                               self.spatial_scale)]
