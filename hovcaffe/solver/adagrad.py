"""Caffe's AdaGrad solver."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np

from hovcaffe.errors import SolverError
from hovcaffe.solver.base import CaffeOptimizer

f32 = np.float32


class CaffeAdaGrad(CaffeOptimizer):
    r"""Caffe's `AdaGradSolver`: :math:`h \leftarrow h + g^2;\ w \leftarrow w - \alpha g/(\sqrt h + \delta)`.

    Args:
        params: parameters or param groups.
        lr: the lr policy's rate.
        delta: δ (Caffe's `delta`, default 1e-8; `torch.optim.Adagrad`'s eps default is 1e-10).
        momentum: must be 0 (Caffe refuses momentum with AdaGrad).
        **common: see :class:`hovcaffe.solver.base.CaffeOptimizer`.
    """

    def __init__(self, params: Iterable, lr: float = 0.0, delta: float = 1e-8,
                 momentum: float = 0.0, **common: Any):
        if momentum != 0:
            raise SolverError(f"Momentum cannot be used with AdaGrad (got momentum: {momentum}); "
                              "remove it from the solver")
        super().__init__(params, {"lr": lr, "delta": delta, "momentum": 0.0, **common})

    def _update(self, p, g, alpha, group, state, iteration):
        history = state["history"]
        history.add_(g * g)
        denom = history.sqrt().add_(float(f32(group["delta"])))
        return g.div_(denom).mul_(alpha)
