"""Test passes: Caffe's (`Solver::Test`, `caffe test`: the mean of every net output over N batches)
and the sample-exact one distributed ranks use (`score_samples`: every sample of a rank's share of
the TEST set counted once, so that the ranks' results combine into the whole set's mean)."""
from __future__ import annotations

from typing import Callable

import numpy as np
import torch

f32 = np.float32


@torch.no_grad()
def run_test(net, feeder, iterations: int, *, compute_loss: bool = False,
             should_stop: Callable[[], bool] = lambda: False
             ) -> tuple[dict[str, np.ndarray], float | None]:
    """`iterations` forwards; each output element's mean, accumulated in float32 like Caffe.

    Args:
        net: a CaffeNet (its `output_names` are averaged).
        feeder: gives the input batches (`next_batch()`).
        iterations: batches (Caffe's `test_iter`); the means divide by it even after an early stop.
        compute_loss: also average the objective (`test_compute_loss`).
        should_stop: polled before each batch (a stop signal ends the pass early, as in Caffe).

    Returns:
        ({output name: flat float32 array of means}, mean objective or None).
    """
    sums: dict[str, np.ndarray] = {}
    loss = f32(0)
    for _ in range(iterations):
        if should_stop():
            break
        blobs = net(**feeder.next_batch())
        if compute_loss:
            loss = f32(loss + f32(net.objective(blobs).item()))
        for name in net.output_names:
            value = blobs[name].detach().float().cpu().numpy().astype(f32).reshape(-1)
            sums[name] = value.copy() if name not in sums else sums[name] + value
    n = f32(max(1, iterations))
    means = {name: (total / n).astype(f32) for name, total in sums.items()}
    return means, (float(f32(loss / n)) if compute_loss else None)


@torch.no_grad()
def score_samples(net, feeder, samples: int, *, compute_loss: bool = False,
                  should_stop: Callable[[], bool] = lambda: False
                  ) -> tuple[dict[str, np.ndarray], float | None]:
    """The first `samples` rows of the feeder's TEST data, each counted once.

    The feeder is rewound to the start of its data; batches are scored until `samples` rows are
    done, the last one cut to the rows still missing. Each batch's outputs count with the weight
    of its rows, so a short last batch weighs what it holds (Caffe's own pass would count it as a
    full batch). With ``samples == 0`` one batch still runs, with weight 0, so that every rank
    reports the same outputs for the reduction.

    Returns:
        ({output name: flat float32 array of row-weighted means}, row-weighted mean objective or
        None); zeros when nothing was scored.
    """
    feeder.rewind()
    sums: dict[str, np.ndarray] = {}
    rows_in: dict[str, int] = {}  # rows behind each output's sum
    loss = 0.0
    done = 0
    while True:
        if should_stop():
            break
        batch = feeder.next_batch()
        rows = batch_rows(batch)
        take = min(rows, samples - done)
        if 0 < take < rows:
            batch = {name: t[:take] for name, t in batch.items()}
        blobs = net(**batch)
        weight = max(0, take)
        if compute_loss:
            loss += weight * float(net.objective(blobs).item())
        for name in net.output_names:
            value = blobs[name].detach().double().cpu().numpy().reshape(-1) * weight
            if name in sums and sums[name].shape != value.shape:
                continue  # a per-sample output of a short batch: no element-wise mean exists
            sums[name] = value if name not in sums else sums[name] + value
            rows_in[name] = rows_in.get(name, 0) + weight
        done += weight
        if done >= samples:
            break
    means = {name: (total / max(1, rows_in[name])).astype(f32) for name, total in sums.items()}
    return means, (float(f32(loss / max(1, done))) if compute_loss else None)


def batch_rows(batch: dict[str, torch.Tensor]) -> int:
    """Rows (first dimension) of a batch of input tensors; they must agree."""
    rows = {int(t.shape[0]) for t in batch.values() if t.dim()}
    if len(rows) != 1:
        raise ValueError(f"input tensors of one batch have different row counts: "
                         f"{ {n: tuple(t.shape) for n, t in batch.items()} }")
    return rows.pop()


def flatten_scores(means: dict[str, np.ndarray], loss: float | None,
                   prefix: str) -> dict[str, float]:
    """`<prefix>/<output>` (with `/<index>` for non-scalar outputs) -> mean; `<prefix>/objective`."""
    out: dict[str, float] = {}
    for name, mean in means.items():
        if mean.size == 1:
            out[f"{prefix}/{name}"] = float(mean[0])
        else:
            out.update({f"{prefix}/{name}/{j}": float(v) for j, v in enumerate(mean)})
    if loss is not None:
        out[f"{prefix}/objective"] = loss
    return out
