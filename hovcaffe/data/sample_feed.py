"""The batch loop shared by feeds that load one sample at a time (DenseImageData, AnnotatedData).

A feed over `num_samples` samples hands out batches of `batch_size` sample numbers: endless in
TRAIN (numbers keep counting; the subclass maps them onto its samples, epoch by epoch), one pass
in TEST (the last batch short, then StopIteration and a fresh start). Each batch gets a random
generator keyed by (seed, rank, phase, batch), so `state_dict()` after any batch resumes with
the same following batches. Without a seed a single process draws one; several ranks use 0 so
that they agree, as hovcaffe's other readers do.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import torch

from hovcaffe.data.registry import FeedContext

TRAIN, TEST = 0, 1
STATE_VERSION = 1


class SampleFeed:
    """Base of a per-sample feed; a subclass implements `make_batch`."""

    def __init__(self, ctx: FeedContext, batch_size: int, num_samples: int) -> None:
        self.ctx, self.phase = ctx, ctx.phase
        self.batch_size, self.num_samples = int(batch_size), int(num_samples)
        if ctx.seed is None:
            self.seed = 0 if ctx.world_size > 1 else int(np.random.SeedSequence().entropy % (1 << 31))
        else:
            self.seed = int(ctx.seed)
        self.position = 0       # TRAIN: samples delivered in total; TEST: in this pass
        self.batch = 0

    def make_batch(self, samples: list[int], rng: np.random.Generator) -> dict[str, torch.Tensor]:
        """The batch of the given sample numbers (TRAIN numbers run past num_samples)."""
        raise NotImplementedError

    # ----------------------------------------------------------------- feed protocol
    def __iter__(self):
        return self

    def __len__(self) -> int:
        return -(-self.num_samples // self.batch_size)

    def pass_samples(self) -> int | None:
        return self.num_samples if self.phase == TEST else None

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "position": self.position, "batch": self.batch,
                "seed": self.seed}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.position, self.batch, self.seed = (int(state["position"]), int(state["batch"]),
                                                int(state["seed"]))

    def close(self) -> None:
        pass

    def shapes(self) -> dict[str, tuple[int, ...]]:
        state = self.state_dict()
        batch = next(self)
        self.load_state_dict(state)
        return {k: tuple(v.shape) for k, v in batch.items()}

    def __next__(self) -> dict[str, torch.Tensor]:
        n = self.num_samples
        if self.phase == TEST:
            if self.position >= n:
                self.position, self.batch = 0, 0
                raise StopIteration
            count = min(self.batch_size, n - self.position)
        else:
            count = self.batch_size
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
            [self.seed, self.ctx.rank, self.phase, self.batch])))
        batch = self.make_batch([self.position + k for k in range(count)], rng)
        self.position += count
        self.batch += 1
        return batch
