"""Layers of the segmentation forks: SegNet/ENet's BN and Upsample, DeepLab v2's Interp.

* BN (alexgkendall/caffe-segnet; TimoSaemann's ENet fork has the same layer). Two blobs,
  scale then shift, each (1, C, 1, 1), filled by scale_filler / shift_filler (unset: constant
  0, as the fork's GetFiller gives). It keeps no running statistics:
    - bn_mode LEARN: y = scale * (x - mean_B) / sqrt(var_B + 1e-9) + shift with the batch's
      own mean and biased variance over (N, H, W) - in TEST as well as TRAIN. Optional tops
      1 and 2 are the batch mean and variance, (1, C, 1, 1).
    - bn_mode INFERENCE: y = scale * x + shift. SegNet's compute_bn_statistics.py (ENet's
      BN-absorber) folds the training set's statistics into scale and shift and switches
      the layers to INFERENCE; so do deploy prototxts.
  The fork's backward is the analytic gradient of these formulas, which autograd computes.
* Upsample. Two bottoms (SegNet, ENet): max-unpooling; bottom 1 is the mask top of a MAX
  Pooling layer (Caffe's argmax, h * W + w in the pooled layer's input plane); top[n, c,
  mask] = x[n, c], zeros elsewhere; the backward gathers the top's gradient at the mask.
  The top is (upsample_h, upsample_w), or scale * input - pad_out (pad_out only for scale 2).
  One bottom (the YOLO v3 ports): nearest-neighbour repetition by `scale`.
* Interp (DeepLab v2): crop by -pad_beg / -pad_end (both <= 0), then bilinear resize with
  corners aligned (source = dest * (in - 1) / (out - 1)). Output size, first rule that
  applies: shrink_factor only, (in - 1) / s + 1; zoom_factor only, in + (in - 1)(z - 1);
  height and width; both factors, shrink then zoom.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from hovcaffe.caffe import caffe_pb2
from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.common import filler_or, new_blob
from hovcaffe.layers.registry import register_layer

_BN_EPS = 1e-9   # hard-wired in the fork
LEARN, INFERENCE = caffe_pb2.BNParameter.LEARN, caffe_pb2.BNParameter.INFERENCE


@register_layer("BN")
class BN(CaffeLayer):
    """SegNet's batch normalisation with a learned per-channel scale and shift."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        p = param.bn_param
        self.mode = p.bn_mode
        self.num_tops = self.expect_tops(1, 3 if self.mode == LEARN else 1)
        shape = tuple(bottom_shapes[0])
        if len(shape) != 4:
            raise self.shape_error(f"needs a 4-D bottom (N, C, H, W), got {list(shape)}")
        self.channels = shape[1]
        blob = (1, self.channels, 1, 1)
        self.blobs.append(new_blob(blob, filler_or(p, "scale_filler", 0.0),
                                   what=f"{self.where()} scale_filler"))
        self.blobs.append(new_blob(blob, filler_or(p, "shift_filler", 0.0),
                                   what=f"{self.where()} shift_filler"))

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) != 4 or s[1] != self.channels:
            raise self.shape_error(f"built for {self.channels} channels, got bottom {list(s)}")
        return [s] + [(1, self.channels, 1, 1)] * (self.num_tops - 1)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        scale, shift = self.blobs
        if self.mode == INFERENCE:
            return [x * scale + shift]
        var, mean = torch.var_mean(x, dim=(0, 2, 3), keepdim=True, correction=0)
        y = (x - mean) / torch.sqrt(var + _BN_EPS) * scale + shift
        return [y, mean, var][:self.num_tops]


def _scatter_at_mask(x: torch.Tensor, mask: torch.Tensor, out_hw: tuple[int, int]) -> torch.Tensor:
    n, c = x.shape[0], x.shape[1]
    flat = x.reshape(n, c, -1)
    index = mask.reshape(n, c, -1).to(torch.int64)
    top = torch.zeros((n, c, out_hw[0] * out_hw[1]), dtype=x.dtype, device=x.device)
    return top.scatter(2, index, flat).reshape(n, c, out_hw[0], out_hw[1])


@register_layer("Upsample")
class Upsample(CaffeLayer):
    """Max-unpooling by a pooling mask (2 bottoms) or nearest-neighbour upsampling (1 bottom)."""

    no_grad_bottoms = (1,)   # the mask

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1, 2)
        self.expect_tops(1)
        self.unpool = len(bottom_shapes) == 2
        p = param.upsample_param
        if p.HasField("upsample_h") != p.HasField("upsample_w"):
            raise self.param_error("give both upsample_h and upsample_w")
        self.fixed = (int(p.upsample_h), int(p.upsample_w)) if p.HasField("upsample_h") else None
        if p.HasField("scale_h") != p.HasField("scale_w"):
            raise self.param_error("give both scale_h and scale_w")
        if p.HasField("scale_h") and p.HasField("scale"):
            raise self.param_error("give scale OR (scale_h and scale_w)")
        self.scale = ((int(p.scale_h), int(p.scale_w)) if p.HasField("scale_h")
                      else (int(p.scale), int(p.scale)))
        self.pad_out = (int(p.pad_out_h), int(p.pad_out_w))
        if self.fixed is None:
            if min(self.scale) < 1 or (self.unpool and min(self.scale) < 2):
                raise self.param_error(f"scale must be > 1, got {list(self.scale)}")
            for pad, s, axis in zip(self.pad_out, self.scale, "hw"):
                if pad and s != 2:
                    raise self.param_error(f"pad_out_{axis} needs scale_{axis} 2, got {s}")
        elif min(self.fixed) <= 1:
            raise self.param_error(f"upsample_h and upsample_w must be > 1, got {list(self.fixed)}")
        if not self.unpool and (self.fixed is not None or any(self.pad_out)):
            raise self.param_error("with one bottom (nearest-neighbour) only `scale` applies; "
                                   "max-unpooling needs the pooling mask as bottom 1")
        self.output_shapes(bottom_shapes)

    def _out_hw(self, h: int, w: int) -> tuple[int, int]:
        if self.fixed is not None:
            return self.fixed
        return h * self.scale[0] - self.pad_out[0], w * self.scale[1] - self.pad_out[1]

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        x = tuple(bottom_shapes[0])
        if len(x) != 4:
            raise self.shape_error(f"needs a 4-D bottom (N, C, H, W), got {list(x)}")
        if self.unpool and tuple(bottom_shapes[1]) != x:
            raise self.shape_error(f"the mask {list(bottom_shapes[1])} must have the shape of "
                                   f"the data {list(x)}")
        return [x[:2] + self._out_hw(x[2], x[3])]

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> list[torch.Tensor]:
        h, w = int(x.shape[2]), int(x.shape[3])
        if mask is None:
            return [F.interpolate(x, scale_factor=self.scale, mode="nearest")]
        out_hw = self._out_hw(h, w)
        if not torch.jit.is_tracing() and not torch.onnx.is_in_onnx_export():
            lo, hi = int(mask.min()), int(mask.max())
            if lo < 0 or hi >= out_hw[0] * out_hw[1]:
                raise self.shape_error(
                    f"mask index {hi if hi >= 0 else lo} is outside the {out_hw[0]}x{out_hw[1]} "
                    "top; the scale must match the pooling layer that made the mask")
        return [_scatter_at_mask(x, mask.detach(), out_hw)]


@register_layer("Interp")
class Interp(CaffeLayer):
    """DeepLab's bilinear resize (corners aligned), after an optional crop."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        p = param.interp_param
        self.pad_beg, self.pad_end = int(p.pad_beg), int(p.pad_end)
        if self.pad_beg > 0 or self.pad_end > 0:
            raise self.param_error("only pad_beg, pad_end <= 0 (cropping) are supported, as in "
                                   "DeepLab")
        self.p = p
        self.output_shapes(bottom_shapes)

    def _size(self, h: int, w: int) -> tuple[int, int]:
        p = self.p
        shrink, zoom = p.HasField("shrink_factor"), p.HasField("zoom_factor")
        for name in ("shrink_factor", "zoom_factor"):
            if p.HasField(name) and getattr(p, name) < 1:
                raise self.param_error(f"{name} must be >= 1, got {getattr(p, name)}")
        if shrink and not zoom:
            return (h - 1) // p.shrink_factor + 1, (w - 1) // p.shrink_factor + 1
        if zoom and not shrink:
            return h + (h - 1) * (p.zoom_factor - 1), w + (w - 1) * (p.zoom_factor - 1)
        if p.HasField("height") and p.HasField("width"):
            return int(p.height), int(p.width)
        if shrink and zoom:
            sh, sw = (h - 1) // p.shrink_factor + 1, (w - 1) // p.shrink_factor + 1
            return sh + (sh - 1) * (p.zoom_factor - 1), sw + (sw - 1) * (p.zoom_factor - 1)
        raise self.param_error("give shrink_factor and/or zoom_factor, or height and width")

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) != 4:
            raise self.shape_error(f"needs a 4-D bottom (N, C, H, W), got {list(s)}")
        h, w = s[2] + self.pad_beg + self.pad_end, s[3] + self.pad_beg + self.pad_end
        if h <= 0 or w <= 0:
            raise self.shape_error(f"cropping {-self.pad_beg}/{-self.pad_end} leaves nothing of "
                                   f"bottom {list(s)}")
        out = self._size(h, w)
        if min(out) <= 0:
            raise self.shape_error(f"bottom {list(s)} gives an empty output {list(out)}")
        return [s[:2] + out]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        h, w = int(x.shape[2]), int(x.shape[3])
        b = -self.pad_beg
        hh, ww = h + self.pad_beg + self.pad_end, w + self.pad_beg + self.pad_end
        if (b, hh, ww) != (0, h, w):
            x = x[:, :, b:b + hh, b:b + ww]
        out = self._size(hh, ww)
        if out == (hh, ww):
            return [x]
        return [F.interpolate(x, size=out, mode="bilinear", align_corners=True)]
