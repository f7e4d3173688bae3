"""Caffe's learning-rate policies, computed with Caffe's float32/float64 mix.

Caffe's `SGDSolver::GetLearningRate` returns a float32 rate built from float32 solver fields
(`base_lr`, `gamma`, `power` are `float` in caffe.proto). Where an integer exponent is involved
(`step`, `exp`, `multistep`, Adam's bias correction) C++ promotes `pow(float, int)` to double; the
other policies stay in float32 arithmetic. We redo those steps with NumPy scalars so the returned
value is the float32 number Caffe uses (checked against the oracle's `lr.json` to <= 1e-9).

Caffe's float `pow`/`exp` are glibc's correctly rounded `powf`/`expf`; NumPy's float32 ufuncs are not
always, so those two are computed in float64 and rounded once (`_powf`, `_expf`), which gives the
same float32 as glibc.

`iter` is the number of completed updates (0 before the first one). `multistep` carries state
(`current_step`), advanced by at most one step per call, exactly like Caffe - which is why a
restored run with a stale `current_step` catches up one step per iteration and why `current_step`
is saved in the `.solverstate`.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

import numpy as np

from hovcaffe.errors import SolverError

f32 = np.float32


def _powf(base: f32, exponent: f32) -> f32:
    return f32(math.pow(float(base), float(exponent)))


def _expf(x: f32) -> f32:
    return f32(math.exp(float(x)))


@dataclasses.dataclass
class LrConfig:
    """The SolverParameter fields the policies read (proto defaults when unset)."""

    lr_policy: str
    base_lr: float = 0.0
    gamma: float = 0.0
    power: float = 0.0
    stepsize: int = 0
    stepvalue: tuple[int, ...] = ()
    max_iter: int = 0

    @classmethod
    def from_solver(cls, sp) -> "LrConfig":
        """Read the fields from a caffe_pb2.SolverParameter."""
        return cls(lr_policy=sp.lr_policy, base_lr=sp.base_lr, gamma=sp.gamma, power=sp.power,
                   stepsize=sp.stepsize, stepvalue=tuple(sp.stepvalue), max_iter=sp.max_iter)


def _fixed(c: LrConfig, it: int, step: int) -> tuple[f32, int]:
    return f32(c.base_lr), step


def _step(c: LrConfig, it: int, step: int) -> tuple[f32, int]:
    step = it // c.stepsize
    return f32(float(f32(c.base_lr)) * float(f32(c.gamma)) ** step), step


def _exp(c: LrConfig, it: int, step: int) -> tuple[f32, int]:
    return f32(float(f32(c.base_lr)) * float(f32(c.gamma)) ** it), step


def _inv(c: LrConfig, it: int, step: int) -> tuple[f32, int]:
    base = f32(1) + f32(c.gamma) * f32(it)
    return f32(c.base_lr) * _powf(base, -f32(c.power)), step


def _multistep(c: LrConfig, it: int, step: int) -> tuple[f32, int]:
    if step < len(c.stepvalue) and it >= c.stepvalue[step]:
        step += 1  # one step per call at most: Caffe's catch-up behaviour after a restore
    return f32(float(f32(c.base_lr)) * float(f32(c.gamma)) ** step), step


def _poly(c: LrConfig, it: int, step: int) -> tuple[f32, int]:
    frac = f32(1) - f32(it) / f32(c.max_iter)
    return f32(c.base_lr) * _powf(frac, f32(c.power)), step


def _sigmoid(c: LrConfig, it: int, step: int) -> tuple[f32, int]:
    z = -f32(c.gamma) * (f32(it) - f32(c.stepsize))
    return f32(c.base_lr) * (f32(1) / (f32(1) + _expf(z))), step


def _needs(*fields: str) -> Callable[[LrConfig], None]:
    checks = {
        "stepsize": lambda c: c.stepsize > 0 or "stepsize must be > 0",
        "gamma": lambda c: c.gamma >= 0 or "gamma must be >= 0",
        "max_iter": lambda c: c.max_iter > 0 or "max_iter must be > 0",
    }

    def validate(c: LrConfig) -> None:
        for field in fields:
            verdict = checks[field](c)
            if verdict is not True:
                raise SolverError(f"lr_policy {c.lr_policy!r}: {verdict} (got "
                                  f"{field}: {getattr(c, field)})")

    return validate


@dataclasses.dataclass(frozen=True)
class PolicyInfo:
    """One row of the policy table: the rate function and the checks Caffe makes."""

    rate: Callable[[LrConfig, int, int], tuple[f32, int]]
    validate: Callable[[LrConfig], None]
    formula: str


POLICIES: dict[str, PolicyInfo] = {
    "fixed": PolicyInfo(_fixed, _needs(), "base_lr"),
    "step": PolicyInfo(_step, _needs("stepsize", "gamma"), "base_lr * gamma^floor(iter/stepsize)"),
    "exp": PolicyInfo(_exp, _needs("gamma"), "base_lr * gamma^iter"),
    "inv": PolicyInfo(_inv, _needs("gamma"), "base_lr * (1 + gamma*iter)^(-power)"),
    "multistep": PolicyInfo(_multistep, _needs(), "base_lr * gamma^current_step"),
    "poly": PolicyInfo(_poly, _needs("max_iter"), "base_lr * (1 - iter/max_iter)^power"),
    "sigmoid": PolicyInfo(_sigmoid, _needs("gamma", "stepsize"),
                          "base_lr / (1 + exp(-gamma*(iter - stepsize)))"),
}


class LrPolicy:
    """A stateful learning-rate schedule with Caffe's semantics.

    Example:
        >>> policy = LrPolicy(LrConfig("step", base_lr=0.1, gamma=0.5, stepsize=10))
        >>> float(policy.rate(25))
        0.02500000037252903
    """

    def __init__(self, config: LrConfig, current_step: int = 0) -> None:
        try:
            self.info = POLICIES[config.lr_policy]
        except KeyError:
            raise SolverError(f"unknown lr_policy {config.lr_policy!r}; Caffe's policies are "
                              f"{', '.join(sorted(POLICIES))}") from None
        self.info.validate(config)
        self.config = config
        self.current_step = current_step

    @classmethod
    def from_solver(cls, sp, current_step: int = 0) -> "LrPolicy":
        if not sp.lr_policy:
            raise SolverError("the solver has no lr_policy; Caffe requires one (e.g. "
                              "lr_policy: \"fixed\")")
        return cls(LrConfig.from_solver(sp), current_step)

    def rate(self, iteration: int) -> float:
        """The float32 rate for the update that follows `iteration` completed updates.

        Advances `current_step` for `multistep` (and sets it for `step`) as Caffe does.
        """
        value, self.current_step = self.info.rate(self.config, int(iteration), self.current_step)
        return float(f32(value))

    def state_dict(self) -> dict[str, int]:
        return {"current_step": self.current_step}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.current_step = int(state["current_step"])
