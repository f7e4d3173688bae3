"""Caffe's test pass (`Solver::Test`, `caffe test`): mean of every net output over N batches."""
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
