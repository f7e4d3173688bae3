"""The solver table (Caffe `type` string -> optimizer class and its SolverParameter fields).

`build_optimizer(solver_param, learnables)` is the one place that turns a SolverParameter and the
net's learnable parameters into a Caffe-exact torch optimizer.
"""
from __future__ import annotations

import dataclasses
import difflib
from typing import Any, Iterable, Protocol, Sequence

import torch

from hovcaffe.errors import SolverError
from hovcaffe.solver.adadelta import CaffeAdaDelta
from hovcaffe.solver.adagrad import CaffeAdaGrad
from hovcaffe.solver.adam import CaffeAdam
from hovcaffe.solver.base import CaffeOptimizer
from hovcaffe.solver.rmsprop import CaffeRMSProp
from hovcaffe.solver.sgd import CaffeNesterov, CaffeSGD


class Learnable(Protocol):
    """What the net's `learnable_params()` entries provide (hovcaffe.net.LearnableParam)."""

    name: str
    param: torch.nn.Parameter
    lr_mult: float
    decay_mult: float


@dataclasses.dataclass(frozen=True)
class SolverInfo:
    """One Caffe solver type.

    Attributes:
        type: Caffe's `type` string (also the upgraded legacy `solver_type` enum name).
        cls: the optimizer class.
        fields: SolverParameter fields passed to the class as keyword arguments.
        num_histories: history blobs per learnable parameter in the .solverstate.
    """

    type: str
    cls: type[CaffeOptimizer]
    fields: tuple[str, ...]
    num_histories: int = 1


SOLVERS: dict[str, SolverInfo] = {info.type: info for info in (
    SolverInfo("SGD", CaffeSGD, ("momentum",)),
    SolverInfo("Nesterov", CaffeNesterov, ("momentum",)),
    SolverInfo("AdaGrad", CaffeAdaGrad, ("delta", "momentum")),
    SolverInfo("RMSProp", CaffeRMSProp, ("rms_decay", "delta", "momentum")),
    SolverInfo("AdaDelta", CaffeAdaDelta, ("momentum", "delta"), num_histories=2),
    SolverInfo("Adam", CaffeAdam, ("momentum", "momentum2", "delta"), num_histories=2),
)}

# Fields every solver type reads (ApplyUpdate's shared part).
COMMON_FIELDS = ("weight_decay", "regularization_type", "clip_gradients", "iter_size")


def list_solvers() -> list[str]:
    return list(SOLVERS)


def solver_info(solver_type: str) -> SolverInfo:
    """The table row of `solver_type`, or a SolverError naming the supported types."""
    try:
        return SOLVERS[solver_type]
    except KeyError:
        close = difflib.get_close_matches(solver_type, list(SOLVERS), n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise SolverError(f"unknown solver type {solver_type!r}{hint} Caffe's solver types: "
                          f"{', '.join(SOLVERS)}") from None


def param_groups(learnables: Sequence[Learnable]) -> list[dict[str, Any]]:
    """One param group per distinct (lr_mult, decay_mult), in order of first appearance."""
    groups: dict[tuple[float, float], dict[str, Any]] = {}
    for item in learnables:
        key = (float(item.lr_mult), float(item.decay_mult))
        if key not in groups:
            groups[key] = {"params": [], "lr_mult": key[0], "decay_mult": key[1]}
        groups[key]["params"].append(item.param)
    return list(groups.values())


def solver_kwargs(sp, info: SolverInfo) -> dict[str, Any]:
    """Keyword arguments for `info.cls` from a caffe_pb2.SolverParameter (proto defaults apply)."""
    kwargs = {name: getattr(sp, name) for name in info.fields + COMMON_FIELDS}
    kwargs["iter_size"] = max(1, int(kwargs["iter_size"]))
    return kwargs


def build_optimizer(sp, learnables: Sequence[Learnable] | Iterable[dict[str, Any]]
                    ) -> CaffeOptimizer:
    """The Caffe-exact optimizer for SolverParameter `sp` over the net's learnable params.

    Args:
        sp: caffe_pb2.SolverParameter (type already upgraded from the legacy enum).
        learnables: `net.learnable_params()` (owners in Caffe's learnable order), or ready-made
            param groups.

    Returns:
        The optimizer, with `iter` 0 and the rate unset (call `set_rate` before each step).
    """
    info = solver_info(sp.type or "SGD")
    items = list(learnables)
    groups = items if items and isinstance(items[0], dict) else param_groups(items)
    return info.cls(groups, **solver_kwargs(sp, info))
