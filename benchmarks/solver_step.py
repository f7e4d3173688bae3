"""Training iterations/s of LeNet (batch 64): hovcaffe's loop vs a minimal hand-written PyTorch loop.

Both train the same module - a `CaffeNet` built from tests/oracle/perf/lenet_b64.prototxt, starting
from the same weights - on the same pre-generated batches with SGD (momentum 0.9, weight decay
5e-4, lr_mult 1/2 as param groups). The hovcaffe side is the full `Trainer` (feeds from an .npz,
Caffe-exact optimizer, lr policy, smoothed loss, NaN check, callbacks); the plain side is
`zero_grad / forward / objective / backward / torch.optim.SGD.step`. Runs alternate to even out
load changes. Reported: iterations/s from the median per-iteration wall time (robust to bursts
of load on a shared machine) and from the total time, with the ratio hovcaffe/plain (target
>= 0.95).

    python benchmarks/solver_step.py [--iterations 100] [--rounds 3] [--threads 1]

On the idle 2-core development machine (1 thread): plain 24.6 ms/it, hovcaffe 24.8 ms/it, ratio
0.99. Before hovcaffe kept freed tensor memory in the process (hovcaffe/utils/memory.py) it was
29.5 ms/it (ratio 0.84): the Trainer's iteration frees all activations at its end, and glibc gave
them back to the kernel every time.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from hovcaffe.caffe import caffe_pb2  # noqa: E402
from hovcaffe.caffe.io import parse_solver, read_net  # noqa: E402
from hovcaffe.net import CaffeNet  # noqa: E402
from hovcaffe.training.hooks import TrainCallback  # noqa: E402
from hovcaffe.training.loop import TrainConfig, Trainer  # noqa: E402

NET = REPO / "tests" / "oracle" / "perf" / "lenet_b64.prototxt"
WARMUP = 5


class Clock(TrainCallback):
    def __init__(self):
        self.stamps: list[float] = []

    def on_iteration(self, record):
        self.stamps.append(time.perf_counter())


def hovcaffe_run(npz: Path, state: dict, iterations: int) -> list[float]:
    sp = parse_solver(f'net: "{NET}"\nbase_lr: 0.01\nmomentum: 0.9\nweight_decay: 0.0005\n'
                      f'lr_policy: "fixed"\nmax_iter: {WARMUP + iterations}\n'
                      'snapshot_after_train: false\ndisplay: 0\ntype: "SGD"\n')
    clock = Clock()
    trainer = Trainer(TrainConfig(sp, input_data=str(npz), handle_signals=False),
                      callbacks=[clock])
    trainer.train_net.load_state_dict(state)
    trainer.solve()
    return list(np.diff(clock.stamps[WARMUP - 1:]))


def plain_run(batches: list[dict], state: dict, iterations: int) -> list[float]:
    net = CaffeNet(read_net(NET), caffe_pb2.TRAIN)
    net.load_state_dict(state)
    # the prototxt's lr_mult is 1 (weights) or 2 (biases); decay_mult is 1 everywhere
    groups = [{"params": [p.param for p in net.learnable_params() if p.lr_mult == m],
               "lr": 0.01 * m, "weight_decay": 0.0005}
              for m in (1.0, 2.0)]
    opt = torch.optim.SGD(groups, lr=0.01, momentum=0.9)
    stamps = []
    for i in range(WARMUP + iterations):
        batch = batches[i % len(batches)]
        opt.zero_grad()
        loss = net.objective(net(**batch))
        loss.backward()
        opt.step()
        stamps.append(time.perf_counter())
    return list(np.diff(stamps[WARMUP - 1:]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--iterations", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)

    rng = np.random.default_rng(0)
    n = 8
    data = rng.random((64 * n, 1, 28, 28), dtype=np.float32)
    label = rng.integers(0, 10, 64 * n).astype(np.float32)
    batches = [{"data": torch.from_numpy(data[64 * i:64 * (i + 1)]),
                "label": torch.from_numpy(label[64 * i:64 * (i + 1)])} for i in range(n)]
    init = CaffeNet(read_net(NET), caffe_pb2.TRAIN)
    with torch.no_grad():
        for p in init.parameters():
            p.normal_(0, 0.05)
    state = {k: v.clone() for k, v in init.state_dict().items()}

    with tempfile.TemporaryDirectory() as tmp:
        npz = Path(tmp) / "lenet.npz"
        np.savez(npz, data=data, label=label)
        ours: list[float] = []
        plain: list[float] = []
        for _ in range(args.rounds):
            plain += plain_run(batches, state, args.iterations)
            ours += hovcaffe_run(npz, state, args.iterations)
    print(f"LeNet batch 64, {args.iterations} timed iterations x {args.rounds} rounds each, "
          f"torch threads {args.threads}")
    rows = {}
    for name, times in (("plain PyTorch loop", plain), ("hovcaffe Trainer", ours)):
        med, total = statistics.median(times), sum(times)
        rows[name] = (1 / med, len(times) / total)
        print(f"  {name:<19}: {1 / med:7.2f} it/s from the median ({1000 * med:.2f} ms/it), "
              f"{len(times) / total:7.2f} it/s overall")
    (hm, ht), (pm, pt) = rows["hovcaffe Trainer"], rows["plain PyTorch loop"]
    print(f"  ratio hovcaffe/plain = {hm / pm:.3f} (median), {ht / pt:.3f} (overall)  "
          "(target >= 0.95)")


if __name__ == "__main__":
    main()
