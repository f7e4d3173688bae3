"""Caffe's Adam solver."""
from __future__ import annotations

import math
from typing import Any, Iterable

import numpy as np

from hovcaffe.solver.base import CaffeOptimizer

f32 = np.float32


def adam_correction(beta1: float, beta2: float, t: int) -> float:
    """Caffe's float32 bias correction sqrt(1-β2^t)/(1-β1^t), evaluated in double as Caffe does."""
    b1, b2 = float(f32(beta1)), float(f32(beta2))
    return float(f32(math.sqrt(1.0 - b2 ** t) / (1.0 - b1 ** t)))


class CaffeAdam(CaffeOptimizer):
    r"""Caffe's `AdamSolver` (β1 = `momentum`, β2 = `momentum2`, ε = `delta`, t = iter + 1):

    :math:`m \leftarrow \beta_1 m + (1-\beta_1) g;\ v \leftarrow \beta_2 v + (1-\beta_2) g^2;\
    w \leftarrow w - \alpha\frac{\sqrt{1-\beta_2^t}}{1-\beta_1^t}\frac{m}{\sqrt v + \epsilon}`.

    Histories in .solverstate order: all `m` blobs, then all `v` blobs.

    Args:
        params: parameters or param groups.
        lr: the lr policy's rate.
        momentum: β1 (caffe.proto default 0 - Caffe users set 0.9 explicitly).
        momentum2: β2 (default 0.999).
        delta: ε (default 1e-8).
        **common: see :class:`hovcaffe.solver.base.CaffeOptimizer`.

    .. note::
        `torch.optim.Adam` divides the bias-corrected moments, :math:`\hat m/(\sqrt{\hat v}+\epsilon)`;
        Caffe's form equals :math:`\hat m/(\sqrt{\hat v} + \epsilon/\sqrt{1-\beta_2^t})`, so ε weighs
        more early in training. Weight decay is coupled (added to g), not AdamW's decoupled decay.
    """

    history_keys = ("m", "v")

    def __init__(self, params: Iterable, lr: float = 0.0, momentum: float = 0.0,
                 momentum2: float = 0.999, delta: float = 1e-8, **common: Any):
        super().__init__(params, {"lr": lr, "momentum": momentum, "momentum2": momentum2,
                                  "delta": delta, **common})

    def _update(self, p, g, alpha, group, state, iteration):
        beta1, beta2 = f32(group["momentum"]), f32(group["momentum2"])
        m, v = state["m"], state["v"]
        m.mul_(float(beta1)).add_(g, alpha=float(f32(1) - beta1))
        v.mul_(float(beta2)).add_(g * g, alpha=float(f32(1) - beta2))
        scale = f32(alpha) * f32(adam_correction(beta1, beta2, iteration + 1))
        denom = v.sqrt().add_(float(f32(group["delta"])))
        return (m / denom).mul_(float(scale))
