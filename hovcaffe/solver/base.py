"""The part of Caffe's `ApplyUpdate` every solver type shares, as a torch optimizer base class.

Per `step()` (docs/caffe-semantics.md#update-order), with `rate` = the group's `lr` (the lr
policy's float32 rate, identical in every group) and `iter` = completed updates:

1. clip: if `clip_gradients >= 0`, the global L2 norm of the *raw accumulated* gradients (sum over
   `iter_size` passes) is computed and every gradient scaled by `clip/norm` when the norm exceeds it;
2. per parameter: normalise (`g /= iter_size`), regularise (L2 `g += λ·w`, L1 `g += λ·sign(w)`,
   `λ = weight_decay · decay_mult`), then the solver-specific update with `α = rate · lr_mult`;
3. `w -= Δ`, `iter += 1`.

Everything is float32 like Caffe. All hyper-parameters live in the param groups - including the
global ones (`clip_gradients`, `iter_size`, `iter`) - because `horovod.torch.DistributedOptimizer`
re-creates the optimizer from `param_groups` alone and `broadcast_optimizer_state` broadcasts group
options; per-parameter histories are created eagerly so that horovod never has to run a dummy
step to materialise them.
"""
from __future__ import annotations

from typing import Any, Callable, Iterable

import numpy as np
import torch

from hovcaffe.errors import SolverError

f32 = np.float32

# Keys every group carries, with Caffe's defaults (SolverParameter / ParamSpec).
COMMON_DEFAULTS: dict[str, Any] = {
    "lr": 0.0,               # the lr policy's rate; the loop sets it before each step
    "lr_mult": 1.0,          # ParamSpec.lr_mult
    "decay_mult": 1.0,       # ParamSpec.decay_mult
    "weight_decay": 0.0,
    "regularization_type": "L2",
    "clip_gradients": -1.0,  # < 0: off
    "iter_size": 1,
    "iter": 0,               # completed updates (Caffe's Solver::iter_)
}


def _without_dynamo_guard(name: str) -> Callable[..., Any]:
    """`torch.optim.Optimizer.<name>` without the torch.compile guard torch wraps it in.

    The guard imports `torch._dynamo` on its first call - about 1.5 s, more than everything else
    a Horovod rank does before its first iteration. Caffe solvers are never compiled, so the plain
    function (kept by `functools.wraps` as `__wrapped__`) does the same work without that import.
    """
    fn = getattr(torch.optim.Optimizer, name)
    return getattr(fn, "__wrapped__", fn)


class CaffeOptimizer(torch.optim.Optimizer):
    """Base of the Caffe solver types. Subclasses define `history_keys` and `_update`.

    Args:
        params: parameters or param groups (groups may carry any key of the defaults).
        defaults: the full defaults dict (common keys plus the subclass's own).

    .. note::
        A parameter whose `.grad` is None counts as a zero gradient, as Caffe's cleared diff does:
        like Caffe, every learnable parameter goes through regularisation and the history update at
        each step (this matters for adaptive solvers on `lr_mult: 0` parameters).
    """

    #: names of the per-parameter histories, in the order the .solverstate stores them
    #: (all parameters' first history, then all parameters' second one).
    history_keys: tuple[str, ...] = ("history",)

    add_param_group = _without_dynamo_guard("add_param_group")
    zero_grad = _without_dynamo_guard("zero_grad")
    state_dict = _without_dynamo_guard("state_dict")
    load_state_dict = _without_dynamo_guard("load_state_dict")

    def __init__(self, params: Iterable, defaults: dict[str, Any]) -> None:
        merged = {**COMMON_DEFAULTS, **defaults}
        _check_common(merged)
        super().__init__(params, merged)
        for group in self.param_groups:
            _check_common(group)
            for p in group["params"]:
                self._init_state(p)

    def __setstate__(self, state: dict[str, Any]) -> None:
        super().__setstate__(state)
        for group in self.param_groups:  # checkpoints from an older layout still load
            for key, value in COMMON_DEFAULTS.items():
                group.setdefault(key, value)

    def _init_state(self, p: torch.Tensor) -> None:
        state = self.state[p]
        for key in self.history_keys:
            if key not in state:
                state[key] = torch.zeros_like(p, memory_format=torch.preserve_format)

    # -- the iteration counter shared by all groups -------------------------------------------
    @property
    def iteration(self) -> int:
        """Completed updates (Caffe's `iter`), stored in every group."""
        return int(self.param_groups[0]["iter"])

    @iteration.setter
    def iteration(self, value: int) -> None:
        for group in self.param_groups:
            group["iter"] = int(value)

    def set_rate(self, rate: float) -> None:
        """Set the lr policy's rate for the next update (every group gets the same base rate)."""
        for group in self.param_groups:
            group["lr"] = float(rate)

    # -- the step ------------------------------------------------------------------------------
    @torch.no_grad()
    def step(self, closure: Callable[[], Any] | None = None):  # type: ignore[override]
        """One Caffe `ApplyUpdate` (see the module docstring). Returns the closure's loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        grads = self._gather_grads()
        self._clip(grads)
        first = self.param_groups[0]
        iteration, iter_size = int(first["iter"]), int(first["iter_size"])
        inv_iter_size = float(f32(1) / f32(iter_size))
        for group in self.param_groups:
            alpha = float(f32(group["lr"]) * f32(group["lr_mult"]))
            decay = float(f32(group["weight_decay"]) * f32(group["decay_mult"]))
            l1 = group["regularization_type"] == "L1"
            for p in group["params"]:
                g = grads[p]
                if iter_size > 1:
                    g.mul_(inv_iter_size)
                if decay:
                    g.add_(torch.sign(p) if l1 else p, alpha=decay)
                delta = self._update(p, g, alpha, group, self.state[p], iteration)
                if delta is not None:
                    p.sub_(delta)
        self.iteration = iteration + 1
        return loss

    def _gather_grads(self) -> dict[torch.Tensor, torch.Tensor]:
        grads: dict[torch.Tensor, torch.Tensor] = {}
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    grads[p] = torch.zeros_like(p)
                else:
                    if p.grad.is_sparse:
                        raise SolverError("Caffe solvers do not support sparse gradients")
                    grads[p] = p.grad
        return grads

    def _clip(self, grads: dict[torch.Tensor, torch.Tensor]) -> None:
        clip = float(self.param_groups[0]["clip_gradients"])
        if clip < 0:
            return
        # Caffe: float sum over params of each param's float32 sum of squares.
        sumsq = f32(0)
        for g in grads.values():
            sumsq = sumsq + f32(torch.dot(g.reshape(-1), g.reshape(-1)).item())
        norm = np.sqrt(sumsq, dtype=f32)
        if norm > f32(clip):
            scale = float(f32(clip) / norm)
            for g in grads.values():
                g.mul_(scale)

    def _update(self, p: torch.Tensor, g: torch.Tensor, alpha: float, group: dict[str, Any],
                state: dict[str, Any], iteration: int) -> torch.Tensor | None:
        """Return Δ (to subtract from `p`), updating `state`. `g` may be modified in place."""
        raise NotImplementedError


def _check_common(cfg: dict[str, Any]) -> None:
    if cfg["regularization_type"] not in ("L1", "L2"):
        raise SolverError(f"Invalid regularization_type: {cfg['regularization_type']!r} "
                          "(Caffe knows \"L1\" and \"L2\")")
    if int(cfg["iter_size"]) < 1:
        raise SolverError(f"Invalid iter_size: {cfg['iter_size']} (must be >= 1)")
    if cfg["weight_decay"] < 0:
        raise SolverError(f"Invalid weight_decay: {cfg['weight_decay']} (must be >= 0)")
