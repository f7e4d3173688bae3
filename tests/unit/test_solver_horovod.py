"""The Caffe optimizers and the training loop under `horovod.torch.DistributedOptimizer`.

A single-process Horovod job (hvd.init() with size 1, no launcher) runs in a subprocess so the test
session itself never initialises Horovod. Checked there:

* every solver type wrapped with `backward_passes_per_step=2` follows the unwrapped optimizer
  bit for bit (allreduce-average over one rank is the identity), including the iteration counter;
* `broadcast_parameters` + `broadcast_optimizer_state` work on these optimizers without the dummy
  step Horovod runs for optimizers whose state is empty (it would apply weight decay);
* the training loop's `TrainHooks` seam (wrap, broadcast, reduce test scores) reproduces the
  oracle's iter_size-2 trajectory with the wrapped optimizer.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import ORACLE

pytest.importorskip("horovod.torch", reason="these tests run the optimizers under Horovod, "
                    "installed by scripts/install.sh, not by pip alone")

SCRIPT = r"""
import json, sys
import numpy as np
import torch
import horovod.torch as hvd

from hovcaffe.caffe.io import read_solver
from hovcaffe.solver import build_optimizer, list_solvers
from hovcaffe.training.hooks import TrainCallback, TrainHooks
from hovcaffe.training.loop import TrainConfig, Trainer

torch.set_num_threads(1)
hvd.init()
out = {"size": hvd.size()}


class L:
    def __init__(self, name, p, lr_mult, decay_mult):
        self.name, self.param, self.lr_mult, self.decay_mult = name, p, lr_mult, decay_mult


class S:
    def __init__(self, **kw):
        self.__dict__.update(dict(momentum=0.9, momentum2=0.999, delta=1e-6, rms_decay=0.98,
                                  weight_decay=5e-3, regularization_type="L2",
                                  clip_gradients=1.0, iter_size=2), **kw)


def run(kind, wrap):
    g = torch.Generator().manual_seed(0)
    ps = [torch.nn.Parameter(torch.randn(5, 3, generator=g)),
          torch.nn.Parameter(torch.randn(5, generator=g))]
    learn = [L("w", ps[0], 1.0, 1.0), L("b", ps[1], 2.0, 0.0)]
    opt = build_optimizer(S(type=kind, momentum=0.0 if kind in ("AdaGrad", "RMSProp") else 0.9),
                          learn)
    if wrap:
        opt = hvd.DistributedOptimizer(opt, named_parameters=[(l.name, l.param) for l in learn],
                                       backward_passes_per_step=2)
        before = [p.detach().clone() for p in ps]
        hvd.broadcast_parameters({l.name: l.param for l in learn}, root_rank=0)
        hvd.broadcast_optimizer_state(opt, root_rank=0)
        assert all(torch.equal(a, b) for a, b in zip(before, ps)), "broadcast moved weights"
    x = torch.randn(8, 3, generator=g)
    for it in range(4):
        opt.zero_grad()
        for k in range(2):  # iter_size passes, gradients accumulate
            loss = ((x[4 * k:4 * k + 4] @ ps[0].T + ps[1]) ** 2).mean()
            loss.backward()
        opt.set_rate(0.1 if it < 2 else 0.05)
        opt.step()
    return [p.detach().numpy().tolist() for p in ps], opt.iteration


out["solvers"] = {}
for kind in list_solvers():
    a, ia = run(kind, False)
    b, ib = run(kind, True)
    out["solvers"][kind] = {"equal": a == b, "iters": [ia, ib]}


class HvdHooks(TrainHooks):
    rank, world_size = hvd.rank(), hvd.size()

    def wrap_optimizer(self, optimizer, learnables, solver):
        return hvd.DistributedOptimizer(
            optimizer, named_parameters=[(l.name, l.param) for l in learnables],
            backward_passes_per_step=max(1, solver.iter_size))

    def broadcast_state(self, trainer):
        hvd.broadcast_parameters({l.name: l.param for l in trainer.learnables}, root_rank=0)
        hvd.broadcast_optimizer_state(trainer.optimizer, root_rank=0)

    def reduce_test_scores(self, scores):
        keys = sorted(scores)
        t = hvd.allreduce(torch.tensor([scores[k] for k in keys], dtype=torch.float64),
                          op=hvd.Average, name="test_scores")
        return dict(zip(keys, t.tolist()))


case = sys.argv[1]
sp = read_solver(case + "/solver.prototxt")
trainer = Trainer(TrainConfig(sp, solver_path=case + "/solver.prototxt",
                              weights=[case + "/init.caffemodel"], max_iter=6,
                              snapshot_prefix=sys.argv[2], handle_signals=False),
                  hooks=HvdHooks())
result = trainer.solve()
out["wrapped_class"] = type(trainer.optimizer).__mro__[1].__name__
out["losses"] = result.losses
out["test0"] = result.test_scores[0]
print(json.dumps(out))
"""


def test_optimizers_and_loop_under_horovod(tmp_path):
    case = ORACLE / "train" / "sgd_fixed_iter_size2"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", SCRIPT, str(case), str(tmp_path / "snap")],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["size"] == 1
    for kind, res in out["solvers"].items():
        assert res["equal"], kind
        assert res["iters"] == [4, 4], kind
    assert out["wrapped_class"] == "CaffeSGD"
    expected = json.loads((case / "losses.json").read_text())
    assert out["losses"] == pytest.approx(expected["loss"][:6], rel=1e-5)
    exact = json.loads((case / "test.json").read_text())["exact"]["0"]
    assert out["test0"]["test/accuracy"] == pytest.approx(exact["accuracy"], abs=1e-6)
    assert out["test0"]["test/loss"] == pytest.approx(exact["loss"], rel=1e-5)
