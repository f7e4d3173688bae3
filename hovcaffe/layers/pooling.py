"""Pooling and SPP with Caffe's exact output sizes and windows.

The rules: docs/caffe-semantics.md#pooling-and-spp.

Caffe's rules differ from torch's defaults: CEIL rounding by default, a "clip" of a last window
that would start in the padding only when pad > 0, AVE divisors that count padding but stop at
H + pad, pad up to kernel - 1. Each (H, W) gets a `PoolPlan`: when torch's own pooling gives the
same windows (the common case) it is called directly; otherwise the input is padded explicitly
(-inf for MAX, 0 for AVE) and pooled without padding, with a precomputed divisor map for AVE.
STOCHASTIC follows Caffe's CUDA kernels (the CPU build has none): sampling in TRAIN,
sum(x^2)/sum(x) in TEST.
"""
from __future__ import annotations

import logging
import math
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import NetDefinitionError, ShapeError
from hovcaffe.layers.base import CaffeLayer, Shape
from hovcaffe.layers.common import where
from hovcaffe.layers.registry import register_layer

log = logging.getLogger(__name__)

MAX, AVE, STOCHASTIC = (caffe_pb2.PoolingParameter.MAX, caffe_pb2.PoolingParameter.AVE,
                        caffe_pb2.PoolingParameter.STOCHASTIC)
FLT_MAX = float(np.finfo(np.float32).max)
_METHOD_NAMES = {MAX: "MAX", AVE: "AVE", STOCHASTIC: "STOCHASTIC"}


def pooled_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool,
                clip: bool) -> int:
    """Caffe's pooled output size along one axis.

    `clip` (Caffe applies it when pad_h or pad_w is non-zero) drops a last window that would
    start at or beyond size + pad.
    """
    span = size + 2 * pad - kernel
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if clip and (out - 1) * stride >= size + pad:
        out -= 1
    return out


def _torch_size(size: int, kernel: int, stride: int, pad: int, ceil_mode: bool) -> int | None:
    """What torch's pooling would produce, or None where torch refuses the configuration."""
    span = size + 2 * pad - kernel
    if span < 0 or pad > kernel // 2:
        return None
    out = (-(-span // stride) if ceil_mode else span // stride) + 1
    if ceil_mode and (out - 1) * stride >= size + pad:
        out -= 1
    return out


@dataclass
class PoolPlan:
    """Everything the forward pass needs for one input (H, W)."""

    hw: tuple[int, int]
    kernel: tuple[int, int]
    stride: tuple[int, int]
    pad: tuple[int, int]
    ceil_mode: bool
    out: tuple[int, int]
    fast: bool                          # torch's pooling reproduces Caffe's windows
    pads: tuple[int, int, int, int]     # F.pad (left, right, top, bottom) for the general path
    empty_windows: bool                 # some window lies entirely outside the image
    divisor: torch.Tensor | None = field(default=None, repr=False)  # AVE general path


def plan_pool(hw: Sequence[int], kernel: Sequence[int], stride: Sequence[int],
              pad: Sequence[int], ceil_mode: bool) -> PoolPlan:
    """Work out Caffe's output size and how to compute it for input spatial size `hw`."""
    (h, w), (kh, kw), (sh, sw), (ph, pw) = hw, kernel, stride, pad
    clip = ph > 0 or pw > 0
    oh = pooled_size(h, kh, sh, ph, ceil_mode, clip)
    ow = pooled_size(w, kw, sw, pw, ceil_mode, clip)
    fast = (_torch_size(h, kh, sh, ph, ceil_mode) == oh
            and _torch_size(w, kw, sw, pw, ceil_mode) == ow)
    hp, wp = (oh - 1) * sh + kh, (ow - 1) * sw + kw   # padded extent the windows cover
    pads = (pw, wp - w - pw, ph, hp - h - ph)
    empty = (oh - 1) * sh - ph >= h or (ow - 1) * sw - pw >= w
    plan = PoolPlan((h, w), (kh, kw), (sh, sw), (ph, pw), ceil_mode, (oh, ow), fast, pads, empty)
    if not fast:
        dh = [min(o * sh - ph + kh, h + ph) - (o * sh - ph) for o in range(oh)]
        dw = [min(o * sw - pw + kw, w + pw) - (o * sw - pw) for o in range(ow)]
        plan.divisor = torch.tensor(np.outer(dh, dw), dtype=torch.float32)
    return plan


def _max(x: torch.Tensor, p: PoolPlan, want_mask: bool):
    if p.fast:
        if not want_mask:
            return F.max_pool2d(x, p.kernel, p.stride, p.pad, ceil_mode=p.ceil_mode), None
        y, idx = F.max_pool2d(x, p.kernel, p.stride, p.pad, ceil_mode=p.ceil_mode,
                              return_indices=True)
        return y, idx.to(x.dtype)
    xp = F.pad(x, p.pads, value=-math.inf)
    if want_mask:
        y, idx = F.max_pool2d(xp, p.kernel, p.stride, return_indices=True)
        wp = xp.shape[-1]
        # Indices into the padded plane -> Caffe's h*W + w in the unpadded input.
        idx = (torch.div(idx, wp, rounding_mode="floor") - p.pad[0]) * p.hw[1] + \
            (idx % wp - p.pad[1])
        mask = idx.to(x.dtype)
    else:
        y, mask = F.max_pool2d(xp, p.kernel, p.stride), None
    if p.empty_windows:
        empty = y == -math.inf
        y = torch.where(empty, -FLT_MAX, y)   # Caffe's initial value, argmax -1
        if mask is not None:
            mask = torch.where(empty, -1.0, mask)
    return y, mask


def _window_sums(x: torch.Tensor, p: PoolPlan) -> torch.Tensor:
    return F.avg_pool2d(F.pad(x, p.pads), p.kernel, p.stride, divisor_override=1)


def _ave(x: torch.Tensor, p: PoolPlan) -> torch.Tensor:
    if p.fast:
        return F.avg_pool2d(x, p.kernel, p.stride, p.pad, ceil_mode=p.ceil_mode,
                            count_include_pad=True)
    if p.divisor.device != x.device or p.divisor.dtype != x.dtype:
        p.divisor = p.divisor.to(x.device, x.dtype)   # cached on the input's device
    return _window_sums(x, p) / p.divisor


def _stochastic_plan(p: PoolPlan) -> PoolPlan:
    # Caffe's stochastic kernels ignore pad and clip windows at H, W (no padding cells).
    (h, w), (oh, ow) = p.hw, p.out
    hp, wp = (oh - 1) * p.stride[0] + p.kernel[0], (ow - 1) * p.stride[1] + p.kernel[1]
    return PoolPlan(p.hw, p.kernel, p.stride, (0, 0), p.ceil_mode, p.out, False,
                    (0, wp - w, 0, hp - h), p.empty_windows)


def _stochastic_test(x: torch.Tensor, p: PoolPlan) -> torch.Tensor:
    q = _stochastic_plan(p)
    s1 = _window_sums(x, q)
    s2 = _window_sums(x * x, q)
    return torch.where(s1 > 0, s2 / torch.where(s1 > 0, s1, 1.0), 0.0)


def _stochastic_train(x: torch.Tensor, p: PoolPlan) -> torch.Tensor:
    q = _stochastic_plan(p)
    n, c = x.shape[:2]
    kk = q.kernel[0] * q.kernel[1]
    cols = F.unfold(F.pad(x, q.pads), q.kernel, stride=q.stride)      # (N, C*kk, L)
    cols = cols.reshape(n, c, kk, -1)
    csum = torch.cumsum(cols.detach(), dim=2)
    thres = torch.rand(n, c, 1, cols.shape[-1], dtype=x.dtype, device=x.device) * csum[:, :, -1:]
    # First position (row-major within the window) whose running sum reaches u * sum.
    pick = (csum >= thres).to(torch.uint8).argmax(dim=2, keepdim=True)
    y = torch.gather(cols, 2, pick)
    return y.reshape(n, c, q.out[0], q.out[1])


def run_pool(x: torch.Tensor, plan: PoolPlan, method: int, *, train: bool,
             want_mask: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pool a 4-D tensor with Caffe's semantics; the mask (MAX only) is Caffe's argmax top."""
    if method == MAX:
        return _max(x, plan, want_mask)
    if method == AVE:
        return _ave(x, plan), None
    return (_stochastic_train(x, plan) if train else _stochastic_test(x, plan)), None


def _rounds_up(pp, w: str) -> bool:
    """CEIL rounding of the output size: BVLC's round_mode, or the DenseNet fork's ceil_mode."""
    ceil = pp.round_mode == caffe_pb2.PoolingParameter.CEIL
    if pp.HasField("ceil_mode"):
        if pp.HasField("round_mode") and pp.ceil_mode != ceil:
            raise NetDefinitionError(f"{w}: ceil_mode: {str(pp.ceil_mode).lower()} contradicts "
                                     f"round_mode: {'CEIL' if ceil else 'FLOOR'}")
        return pp.ceil_mode
    return ceil


@register_layer("Pooling")
class Pooling(CaffeLayer):
    """MAX / AVE / STOCHASTIC pooling over the last two axes of a 4-D blob."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        w = where(param)
        pp = param.pooling_param
        if len(bottom_shapes) != 1:
            raise NetDefinitionError(f"{w} takes exactly one bottom")
        self.method = pp.pool
        max_tops = 2 if self.method == MAX else 1
        if not 1 <= len(param.top) <= max_tops:
            raise NetDefinitionError(f"{w}: {_METHOD_NAMES[self.method]} pooling has 1"
                                     f"{' or 2' if max_tops == 2 else ''} tops, "
                                     f"got {len(param.top)}")
        self.want_mask = len(param.top) == 2
        self.train_phase = phase == caffe_pb2.TRAIN
        self.ceil_mode = _rounds_up(pp, w)
        self.global_pooling = pp.global_pooling
        has_k, has_khw = pp.HasField("kernel_size"), pp.HasField("kernel_h") or pp.HasField("kernel_w")
        if self.global_pooling:
            if has_k or has_khw:
                raise NetDefinitionError(f"{w}: with global_pooling no kernel size may be given")
            self.kernel = None
        else:
            if has_k == has_khw:
                raise NetDefinitionError(f"{w}: give kernel_size OR (kernel_h and kernel_w)")
            if has_khw and not (pp.HasField("kernel_h") and pp.HasField("kernel_w")):
                raise NetDefinitionError(f"{w}: non-square kernels need both kernel_h and kernel_w")
            self.kernel = ((pp.kernel_size, pp.kernel_size) if has_k
                           else (pp.kernel_h, pp.kernel_w))
            if min(self.kernel) <= 0:
                raise NetDefinitionError(f"{w}: kernel size must be positive")
        self.pad = self._pair(pp, "pad", "pad_h", "pad_w", w)
        self.stride = self._pair(pp, "stride", "stride_h", "stride_w", w)
        if min(self.stride) <= 0:
            raise NetDefinitionError(f"{w}: stride must be positive")
        if self.global_pooling and (self.pad != (0, 0) or self.stride != (1, 1)):
            raise NetDefinitionError(f"{w}: global pooling needs pad 0 and stride 1")
        if self.pad != (0, 0):
            if self.method not in (MAX, AVE):
                raise NetDefinitionError(f"{w}: padding is implemented only for MAX and AVE")
            if not self.global_pooling and (self.pad[0] >= self.kernel[0]
                                            or self.pad[1] >= self.kernel[1]):
                raise NetDefinitionError(f"{w}: pad {list(self.pad)} must be smaller than the "
                                         f"kernel {list(self.kernel)}")
        self._plans: dict[tuple[int, int], PoolPlan] = {}
        self.output_shapes(bottom_shapes)

    @staticmethod
    def _pair(pp, one: str, h: str, w_: str, w: str) -> tuple[int, int]:
        if pp.HasField(h) or pp.HasField(w_):
            if pp.HasField(one):
                raise NetDefinitionError(f"{w}: give {one} OR ({h} and {w_}), not both")
            if not (pp.HasField(h) and pp.HasField(w_)):
                raise NetDefinitionError(f"{w}: {h} and {w_} must both be given")
            return int(getattr(pp, h)), int(getattr(pp, w_))
        v = int(getattr(pp, one))
        return v, v

    def plan(self, h: int, w: int) -> PoolPlan:
        """The (cached) PoolPlan for an input of spatial size (h, w)."""
        p = self._plans.get((h, w))
        if p is None:
            kernel = (h, w) if self.global_pooling else self.kernel
            p = plan_pool((h, w), kernel, self.stride, self.pad, self.ceil_mode)
            if min(p.out) <= 0:
                raise ShapeError(f"{where(self.param)}: input {h}x{w} gives an empty output "
                                 f"{list(p.out)} (kernel {list(kernel)}, pad {list(self.pad)})")
            if p.empty_windows:
                log.warning("%s: on a %dx%d input the last row or column of windows starts "
                            "outside the image (pad 0, stride > kernel, CEIL rounding); Caffe "
                            "keeps it and so does hovcaffe (MAX gives -FLT_MAX there, AVE NaN)",
                            where(self.param), h, w)
            self._plans[(h, w)] = p
        return p

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) != 4:
            raise ShapeError(f"{where(self.param)}: Pooling needs a 4-D bottom (N, C, H, W), "
                             f"got shape {list(s)}")
        p = self.plan(s[2], s[3])
        out = s[:2] + p.out
        return [out] * len(self.param.top)

    def macs(self, bottom_shapes: Sequence[Shape]) -> int:
        s = bottom_shapes[0]
        p = self.plan(s[2], s[3])
        return s[0] * s[1] * p.out[0] * p.out[1] * p.kernel[0] * p.kernel[1]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        shape = x.shape
        p = self._plans.get((shape[2], shape[3]))
        if p is None:
            # int(): spatial sizes are build-time constants for tracers too (only N is dynamic).
            p = self.plan(int(shape[2]), int(shape[3]))
        if p.fast and not self.want_mask:   # the common case, without further dispatch
            if self.method == MAX:
                return [F.max_pool2d(x, p.kernel, p.stride, p.pad, ceil_mode=p.ceil_mode)]
            if self.method == AVE:
                return [F.avg_pool2d(x, p.kernel, p.stride, p.pad, p.ceil_mode, True)]
        y, mask = run_pool(x, p, self.method, train=self.train_phase, want_mask=self.want_mask)
        return [y, mask] if self.want_mask else [y]


@register_layer("SPP")
class SPP(CaffeLayer):
    """Spatial pyramid pooling: level l pools into 2^l x 2^l bins, flattened and concatenated."""

    def __init__(self, param, bottom_shapes: Sequence[Shape], phase: int) -> None:
        super().__init__(param, bottom_shapes, phase)
        w = where(param)
        sp = param.spp_param
        self.expect_bottoms(bottom_shapes, 1)
        self.expect_tops(1)
        if not sp.HasField("pyramid_height") or sp.pyramid_height < 1:
            raise NetDefinitionError(f"{w}: spp_param.pyramid_height (>= 1) is required")
        self.height = int(sp.pyramid_height)
        self.method = sp.pool
        self.train_phase = phase == caffe_pb2.TRAIN
        self._plans: dict[tuple[int, int], list[PoolPlan]] = {}
        self.output_shapes(bottom_shapes)

    def plans(self, h: int, w: int) -> list[PoolPlan]:
        """One PoolPlan per pyramid level for an (h, w) input (Caffe's GetPoolingParam)."""
        got = self._plans.get((h, w))
        if got is None:
            got = []
            for level in range(self.height):
                bins = 2 ** level
                kh, kw = math.ceil(h / bins), math.ceil(w / bins)
                ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
                if ph >= kh or pw >= kw:
                    raise ShapeError(f"{where(self.param)}: input {h}x{w} is too small for "
                                     f"{bins}x{bins} bins (pad {ph},{pw} >= kernel {kh},{kw})")
                got.append(plan_pool((h, w), (kh, kw), (kh, kw), (ph, pw), True))
            self._plans[(h, w)] = got
        return got

    def output_shapes(self, bottom_shapes: Sequence[Shape]) -> list[Shape]:
        s = tuple(bottom_shapes[0])
        if len(s) != 4:
            raise ShapeError(f"{where(self.param)}: SPP needs a 4-D bottom, got {list(s)}")
        plans = self.plans(s[2], s[3])
        if self.height == 1:
            return [s[:2] + plans[0].out]
        return [(s[0], sum(s[1] * p.out[0] * p.out[1] for p in plans))]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        plans = self.plans(int(x.shape[2]), int(x.shape[3]))
        levels = [run_pool(x, p, self.method, train=self.train_phase)[0] for p in plans]
        if self.height == 1:
            return [levels[0]]
        return [torch.cat([y.flatten(1) for y in levels], dim=1)]
