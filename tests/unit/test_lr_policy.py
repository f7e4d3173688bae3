"""Learning-rate policies: float32-exact against the oracle's lr.json, and against the formulas."""
from __future__ import annotations

import math

import numpy as np
import pytest

from conftest import ORACLE, load_json, train_cases
from hovcaffe.caffe.io import read_solver
from hovcaffe.errors import SolverError
from hovcaffe.solver.lr_policy import POLICIES, LrConfig, LrPolicy


@pytest.mark.parametrize("case", train_cases())
def test_rates_match_oracle_lr_json(case):
    sp = read_solver(ORACLE / "train" / case / "solver.prototxt")
    expected = load_json(ORACLE / "train" / case / "lr.json")["lr"]
    policy = LrPolicy.from_solver(sp)
    got = [policy.rate(i) for i in range(len(expected))]
    assert max(abs(a - b) for a, b in zip(got, expected)) <= 1e-9
    assert got == expected  # bit-exact float32 in fact


FORMULAS = {  # float64 versions of docs/caffe-semantics.md#learning-rate-policies
    "fixed": lambda c, i, k: c.base_lr,
    "step": lambda c, i, k: c.base_lr * c.gamma ** (i // c.stepsize),
    "exp": lambda c, i, k: c.base_lr * c.gamma ** i,
    "inv": lambda c, i, k: c.base_lr * (1 + c.gamma * i) ** (-c.power),
    "multistep": lambda c, i, k: c.base_lr * c.gamma ** k,
    "poly": lambda c, i, k: c.base_lr * (1 - i / c.max_iter) ** c.power,
    "sigmoid": lambda c, i, k: c.base_lr / (1 + math.exp(-c.gamma * (i - c.stepsize))),
}


@pytest.mark.parametrize("policy", sorted(POLICIES))
def test_rates_follow_formula(policy):
    # gamma and power are exact in float32, so only float32 rounding separates the two
    cfg = LrConfig(policy, base_lr=0.05, gamma=0.75, power=1.5, stepsize=7, stepvalue=(5, 9, 30),
                   max_iter=50)
    lr = LrPolicy(cfg)
    for i in range(50):
        k = sum(1 for v in cfg.stepvalue if i >= v)
        assert lr.rate(i) == pytest.approx(FORMULAS[policy](cfg, i, k), rel=2e-6)  # float32 cancellation in 1 - iter/max_iter


def test_multistep_catches_up_one_step_per_call():
    cfg = LrConfig("multistep", base_lr=1.0, gamma=0.1, stepvalue=(10, 20, 30))
    restored = LrPolicy(cfg, current_step=0)  # a restore at iteration 35 with a stale counter
    rates = [restored.rate(35 + j) for j in range(4)]
    np.testing.assert_allclose(rates, [0.1, 0.01, 0.001, 0.001], rtol=1e-6)
    assert restored.state_dict() == {"current_step": 3}
    fresh = LrPolicy(cfg)
    fresh.load_state_dict({"current_step": 3})
    assert fresh.rate(35) == pytest.approx(0.001, rel=1e-6)


@pytest.mark.parametrize("cfg,message", [
    (LrConfig("step", gamma=0.5, stepsize=0), "stepsize must be > 0"),
    (LrConfig("sigmoid", gamma=-0.2, stepsize=5), "gamma must be >= 0"),
    (LrConfig("poly", power=1.0, max_iter=0), "max_iter must be > 0"),
    (LrConfig("cosine"), "unknown lr_policy 'cosine'"),
])
def test_invalid_policies_raise(cfg, message):
    with pytest.raises(SolverError, match=message):
        LrPolicy(cfg)
