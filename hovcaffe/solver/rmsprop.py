"""Caffe's RMSProp solver."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from hovcaffe.errors import SolverError
from hovcaffe.solver.base import CaffeOptimizer

f32 = np.float32


class CaffeRMSProp(CaffeOptimizer):
    r"""Caffe's `RMSPropSolver`:
    :math:`h \leftarrow \rho h + (1-\rho) g^2;\ w \leftarrow w - \alpha g/(\sqrt h + \delta)`.

    Args:
        params: parameters or param groups.
        lr: the lr policy's rate.
        rms_decay: ρ (default 0.99), in [0, 1).
        delta: δ (default 1e-8).
        momentum: must be 0 (Caffe refuses momentum with RMSProp).
        **common: see :class:`hovcaffe.solver.base.CaffeOptimizer`.
    """

    def __init__(self, params: Iterable, lr: float = 0.0, rms_decay: float = 0.99,
                 delta: float = 1e-8, momentum: float = 0.0, **common: Any):
        if momentum != 0:
            raise SolverError(f"Momentum cannot be used with RMSProp (got momentum: {momentum}); "
                              "remove it from the solver")
        if not 0 <= rms_decay < 1:
            raise SolverError(f"Invalid rms_decay: {rms_decay} (RMSProp needs 0 <= rms_decay < 1)")
        super().__init__(params, {"lr": lr, "rms_decay": rms_decay, "delta": delta,
                                  "momentum": 0.0, **common})

    def _update(self, p, g, alpha, group, state, iteration):
        rho = f32(group["rms_decay"])
        history = state["history"]
        history.mul_(float(rho)).add_(g * g, alpha=float(f32(1) - rho))
        denom = history.sqrt().add_(float(f32(group["delta"])))
        return g.div_(denom).mul_(alpha)
