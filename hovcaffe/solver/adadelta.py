"""Caffe's AdaDelta solver."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from hovcaffe.solver.base import CaffeOptimizer

f32 = np.float32


class CaffeAdaDelta(CaffeOptimizer):
    r"""Caffe's `AdaDeltaSolver` (ρ = `momentum`, typically 0.95, with base_lr 1.0):

    :math:`h \leftarrow \rho h + (1-\rho) g^2;\ u = g\sqrt{(h_2+\delta)/(h+\delta)};\
    h_2 \leftarrow \rho h_2 + (1-\rho) u^2;\ w \leftarrow w - \alpha u`.

    Histories in .solverstate order: all `history` (E[g²]) blobs, then all `update_history` (E[Δ²]).

    Args:
        params: parameters or param groups.
        lr: the lr policy's rate.
        momentum: ρ (default 0, as in caffe.proto; Caffe's examples use 0.95).
        delta: δ (default 1e-8).
        **common: see :class:`hovcaffe.solver.base.CaffeOptimizer`.
    """

    history_keys = ("history", "update_history")

    def __init__(self, params: Iterable, lr: float = 0.0, momentum: float = 0.0,
                 delta: float = 1e-8, **common: Any):
        super().__init__(params, {"lr": lr, "momentum": momentum, "delta": delta, **common})

    def _update(self, p, g, alpha, group, state, iteration):
        rho = f32(group["momentum"])
        one_minus = float(f32(1) - rho)
        delta = float(f32(group["delta"]))
        history, update_history = state["history"], state["update_history"]
        history.mul_(float(rho)).add_(g * g, alpha=one_minus)
        g.mul_((update_history + delta).div_(history + delta).sqrt_())
        update_history.mul_(float(rho)).add_(g * g, alpha=one_minus)
        return g.mul_(alpha)
