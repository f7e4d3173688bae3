"""Caffe's SGD and Nesterov solvers (history holds the *scaled* step: lr inside the buffer)."""
from __future__ import annotations

from typing import Any, Iterable

import numpy as np
import torch

from hovcaffe.errors import SolverError
from hovcaffe.solver.base import CaffeOptimizer

f32 = np.float32


class CaffeSGD(CaffeOptimizer):
    r"""Caffe's `SGDSolver`: :math:`v \leftarrow \mu v + \alpha g;\ w \leftarrow w - v`.

    Args:
        params: parameters or param groups (keys of `base.COMMON_DEFAULTS` allowed per group).
        lr: the lr policy's rate (the loop sets it every iteration with `set_rate`).
        momentum: μ (Caffe's `momentum`, default 0).
        **common: weight_decay, regularization_type, clip_gradients, iter_size, lr_mult, ...

    .. note::
        `torch.optim.SGD` keeps :math:`b \leftarrow \mu b + g` and steps :math:`w -= \alpha b`,
        i.e. the learning rate is *outside* the buffer. Both agree while α is constant; when the
        lr policy changes α, Caffe's buffer still carries the old rate for ~1/(1-μ) steps, whereas
        torch rescales the whole buffer at once. This class reproduces Caffe.
    """

    def __init__(self, params: Iterable, lr: float = 0.0, momentum: float = 0.0, **common: Any):
        if momentum < 0:
            raise SolverError(f"Invalid momentum: {momentum} (must be >= 0)")
        super().__init__(params, {"lr": lr, "momentum": momentum, **common})

    def _update(self, p, g, alpha, group, state, iteration):
        history = state["history"]
        history.mul_(float(f32(group["momentum"]))).add_(g, alpha=alpha)
        return history


class CaffeNesterov(CaffeSGD):
    r"""Caffe's `NesterovSolver`: :math:`v' = \mu v + \alpha g;\ w \leftarrow w - ((1+\mu) v' - \mu v)`.

    Same arguments as :class:`CaffeSGD`; same note on where the learning rate lives.
    """

    def _update(self, p, g, alpha, group, state, iteration):
        history = state["history"]
        mu = f32(group["momentum"])
        previous = history.clone()
        history.mul_(float(mu)).add_(g, alpha=alpha)
        return torch.mul(history, float(f32(1) + mu)).sub_(previous, alpha=float(mu))
