"""Caffe update rules vs an independent float64 NumPy re-implementation of them.

The rules: docs/caffe-semantics.md#update-rules.

The lr changes during the runs (so SGD's "lr inside the history" matters), two param groups carry
different lr_mult/decay_mult, and clipping / iter_size / L1 are exercised.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hovcaffe.errors import SolverError
from hovcaffe.solver import SOLVERS, build_optimizer, list_solvers
from hovcaffe.solver.adam import CaffeAdam
from hovcaffe.solver.sgd import CaffeSGD

SHAPES = [(4, 3), (4,), (2, 3, 2)]
MULTS = [(1.0, 1.0), (2.0, 0.0), (1.0, 1.0)]  # (lr_mult, decay_mult) per param


def reference_run(kind: str, cfg: dict, w0, grads, rates):
    """Float64 NumPy Caffe: returns weights and histories after len(rates) updates."""
    w = [x.astype(np.float64) for x in w0]
    nh = 2 if kind in ("AdaDelta", "Adam") else 1
    hist = [[np.zeros_like(x) for x in w] for _ in range(nh)]
    mu, delta = cfg.get("momentum", 0.0), cfg.get("delta", 1e-8)
    for it, (rate, g_raw) in enumerate(zip(rates, grads)):
        g = [x.astype(np.float64).copy() for x in g_raw]
        clip = cfg.get("clip_gradients", -1)
        if clip >= 0:
            norm = math.sqrt(sum(float((x ** 2).sum()) for x in g))
            if norm > clip:
                g = [x * (clip / norm) for x in g]
        for i, (lr_mult, decay_mult) in enumerate(MULTS):
            g[i] = g[i] / cfg.get("iter_size", 1)
            lam = cfg.get("weight_decay", 0.0) * decay_mult
            reg = np.sign(w[i]) if cfg.get("regularization_type", "L2") == "L1" else w[i]
            g[i] = g[i] + lam * reg
            a = rate * lr_mult
            if kind == "SGD":
                hist[0][i] = mu * hist[0][i] + a * g[i]
                step = hist[0][i]
            elif kind == "Nesterov":
                prev = hist[0][i]
                hist[0][i] = mu * prev + a * g[i]
                step = (1 + mu) * hist[0][i] - mu * prev
            elif kind == "AdaGrad":
                hist[0][i] = hist[0][i] + g[i] ** 2
                step = a * g[i] / (np.sqrt(hist[0][i]) + delta)
            elif kind == "RMSProp":
                rho = cfg["rms_decay"]
                hist[0][i] = rho * hist[0][i] + (1 - rho) * g[i] ** 2
                step = a * g[i] / (np.sqrt(hist[0][i]) + delta)
            elif kind == "AdaDelta":
                hist[0][i] = mu * hist[0][i] + (1 - mu) * g[i] ** 2
                u = g[i] * np.sqrt((hist[1][i] + delta) / (hist[0][i] + delta))
                hist[1][i] = mu * hist[1][i] + (1 - mu) * u ** 2
                step = a * u
            elif kind == "Adam":
                b2 = cfg["momentum2"]
                hist[0][i] = mu * hist[0][i] + (1 - mu) * g[i]
                hist[1][i] = b2 * hist[1][i] + (1 - b2) * g[i] ** 2
                t = it + 1
                corr = math.sqrt(1 - b2 ** t) / (1 - mu ** t)
                step = a * corr * hist[0][i] / (np.sqrt(hist[1][i]) + delta)
            w[i] = w[i] - step
    return w, hist


CONFIGS = {
    "SGD": {"momentum": 0.9, "weight_decay": 5e-3},
    "Nesterov": {"momentum": 0.9, "weight_decay": 5e-3},
    "AdaGrad": {"weight_decay": 5e-3, "delta": 1e-6},
    "RMSProp": {"rms_decay": 0.98, "delta": 1e-6, "weight_decay": 5e-3},
    "AdaDelta": {"momentum": 0.95, "delta": 1e-6, "weight_decay": 5e-3},
    "Adam": {"momentum": 0.9, "momentum2": 0.999, "delta": 1e-8, "weight_decay": 5e-3},
}
VARIANTS = {
    "plain": {},
    "l1": {"regularization_type": "L1"},
    "clip_iter_size": {"clip_gradients": 1.5, "iter_size": 3},
}


class _Learnable:
    def __init__(self, name, param, lr_mult, decay_mult):
        self.name, self.param, self.lr_mult, self.decay_mult = name, param, lr_mult, decay_mult


class _Solver:
    """Stand-in for a caffe_pb2.SolverParameter: attribute access with proto defaults."""

    def __init__(self, **fields):
        self.__dict__.update({"type": "SGD", "momentum": 0.0, "momentum2": 0.999, "delta": 1e-8,
                              "rms_decay": 0.99, "weight_decay": 0.0, "regularization_type": "L2",
                              "clip_gradients": -1.0, "iter_size": 1, **fields})


def run_torch(kind, cfg, w0, grads, rates):
    params = [torch.nn.Parameter(torch.from_numpy(x.copy())) for x in w0]
    learn = [_Learnable(f"p/{i}", p, *m) for i, (p, m) in enumerate(zip(params, MULTS))]
    opt = build_optimizer(_Solver(type=kind, **cfg), learn)
    for rate, g in zip(rates, grads):
        opt.zero_grad()
        for p, gi in zip(params, g):
            p.grad = torch.from_numpy(gi.copy())
        opt.set_rate(rate)
        opt.step()
    return params, opt


@pytest.mark.parametrize("variant", list(VARIANTS))
@pytest.mark.parametrize("kind", list_solvers())
def test_update_matches_numpy_reference(kind, variant):
    rng = np.random.default_rng(7)
    cfg = {**CONFIGS[kind], **VARIANTS[variant]}
    w0 = [rng.normal(size=s).astype(np.float32) for s in SHAPES]
    n = 12
    grads = [[(rng.normal(size=s) * 0.7).astype(np.float32) for s in SHAPES] for _ in range(n)]
    # a step change at iteration 6 exposes where the learning rate lives
    rates = [0.1 if i < 6 else 0.01 for i in range(n)]
    if kind == "AdaDelta":
        rates = [1.0 if i < 6 else 0.5 for i in range(n)]
    w_ref, h_ref = reference_run(kind, cfg, w0, grads, rates)
    params, opt = run_torch(kind, cfg, w0, grads, rates)
    for p, r in zip(params, w_ref):
        np.testing.assert_allclose(p.detach().numpy(), r, rtol=2e-5, atol=2e-6)
    keys = type(opt).history_keys
    assert len(keys) == SOLVERS[kind].num_histories
    for k, key in enumerate(keys):
        for p, r in zip(params, h_ref[k]):
            np.testing.assert_allclose(opt.state[p][key].numpy(), r, rtol=2e-5, atol=2e-6)
    assert opt.iteration == n


def test_sgd_lr_inside_history_differs_from_torch_sgd():
    """At an lr change Caffe's buffer still carries the old rate; torch.optim.SGD's does not."""
    p1 = torch.nn.Parameter(torch.ones(3))
    caffe = CaffeSGD([p1], momentum=0.9)
    for i in range(4):
        p1.grad = torch.ones(3)
        caffe.set_rate(0.1 if i < 2 else 0.01)
        caffe.step()
    # Caffe (by hand): v = 0.9 v + lr g = [.1, .19, .181, .1729], w = 1 - sum(v)
    assert p1[0].item() == pytest.approx(1 - (0.1 + 0.19 + 0.181 + 0.1729), abs=1e-6)
    # torch's rule (buffer without lr, w -= lr * buf = lr * [1, 1.9, 2.71, 3.439]) is not followed
    assert p1[0].item() != pytest.approx(1 - (0.1 + 0.19 + 0.0271 + 0.03439), abs=1e-3)


def test_adam_epsilon_placement_differs_from_torch_adam():
    """With |g| ~ eps Caffe's bias-corrected epsilon gives a visibly different first step."""
    p1 = torch.nn.Parameter(torch.zeros(1))
    p1.grad = torch.full((1,), 1e-8)
    opt = CaffeAdam([p1], momentum=0.9, momentum2=0.999, delta=1e-8)
    opt.set_rate(1.0)
    opt.step()
    # t=1: m=1e-9, v=1e-19, corr=sqrt(0.001)/0.1 -> step = corr*m/(sqrt(v)+eps)
    corr = math.sqrt(1 - 0.999) / (1 - 0.9)
    expected = -corr * 1e-9 / (math.sqrt(1e-19) + 1e-8)
    assert p1.item() == pytest.approx(expected, rel=1e-5)
    assert p1.item() != pytest.approx(-0.5, abs=0.01)  # torch's m_hat/(sqrt(v_hat)+eps) gives -0.5


def test_lr_mult_zero_still_updates_adaptive_history():
    """Caffe regularises and updates histories of lr_mult 0 params; their weights stay put."""
    p = torch.nn.Parameter(torch.full((2,), 2.0))
    opt = CaffeAdam([{"params": [p], "lr_mult": 0.0}], momentum=0.9, weight_decay=0.5)
    opt.set_rate(0.1)
    opt.step()  # p.grad is None: Caffe's zero diff
    assert torch.equal(p.detach(), torch.full((2,), 2.0))
    np.testing.assert_allclose(opt.state[p]["m"].numpy(), 0.1 * 0.5 * 2.0, rtol=1e-6)


@pytest.mark.parametrize("kind,fields,message", [
    ("AdaGrad", {"momentum": 0.9}, "Momentum cannot be used with AdaGrad"),
    ("RMSProp", {"momentum": 0.9}, "Momentum cannot be used with RMSProp"),
    ("RMSProp", {"rms_decay": 1.0}, "rms_decay"),
    ("SGD", {"regularization_type": "L3"}, "regularization_type"),
    ("Adamm", {}, "did you mean 'Adam'"),
])
def test_invalid_solver_settings_raise(kind, fields, message):
    p = torch.nn.Parameter(torch.zeros(1))
    with pytest.raises(SolverError, match=message):
        build_optimizer(_Solver(type=kind, **fields), [_Learnable("a/0", p, 1.0, 1.0)])


def test_param_groups_keyed_by_multipliers():
    ps = [torch.nn.Parameter(torch.zeros(1)) for _ in range(4)]
    learn = [_Learnable(f"l/{i}", p, m[0], m[1])
             for i, (p, m) in enumerate(zip(ps, [(1, 1), (2, 0), (1, 1), (2, 0)]))]
    opt = build_optimizer(_Solver(type="SGD"), learn)
    assert [(g["lr_mult"], g["decay_mult"], len(g["params"])) for g in opt.param_groups] == \
        [(1.0, 1.0, 2), (2.0, 0.0, 2)]
