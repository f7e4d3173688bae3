"""Which rows a rank reads, in which order: sharding, seeded shuffling, exact positions.

Everything here is a pure function of (row-group sizes, rank, world size, seed, epoch), so a
rank can start at any position (exact resume) and every rank can compute the others' shares.

TRAIN streams are infinite. An *epoch order* lists all rows once: row groups in a seeded random
order, cut into windows of ``window_groups`` consecutive groups, rows shuffled inside each window
(a shuffle buffer of that many row groups). Without shuffle it is the file order (Caffe's).

* ``shard="rows"`` (default): all ranks share one stream, the epoch orders one after another,
  and rank r takes stream positions r, r+N, r+2N, ... (N ranks) — Caffe's multi-GPU rule (record
  i goes to solver i mod N). Within each epoch the ranks' samples are disjoint and cover the
  dataset, and N ranks × batch b see exactly the samples one rank × batch N·b sees. Every rank
  reads every row group but decodes only its own rows.
* ``shard="row_groups"``: rank r owns row groups r, r+N, ...; it reads only those (1/N of the
  I/O, the better choice for big datasets on remote storage) and shuffles within them. Needs at
  least N row groups.

TEST reads the dataset once in file order; rank r gets the contiguous rows
``[r*T//N, (r+1)*T//N)`` of T, so across ranks each sample is evaluated exactly once.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Iterator

import numpy as np

from hovcaffe.errors import DataSourceError

log = logging.getLogger(__name__)
TRAIN, TEST = 0, 1
SHARD_MODES = ("rows", "row_groups")


@dataclasses.dataclass(frozen=True)
class Window:
    """A unit of reading: some row groups and the rows to take from them, in stream order.

    Attributes:
        groups: global row-group ids; their rows are numbered consecutively in this order.
        rows: indices into that numbering, in the order the samples are delivered.
        start: the rank-local stream position of ``rows[0]``.
    """

    groups: tuple[int, ...]
    rows: np.ndarray
    start: int


def _rng(*key: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([k & 0xFFFFFFFF for k in key])))


class ShardPlan:
    """The rank-local sample stream over a dataset's row groups.

    Args:
        group_sizes: rows in each row group (global order).
        rank, world_size: this rank and the number of ranks.
        phase: TRAIN (0, infinite stream) or TEST (1, one pass of this rank's contiguous share).
        shuffle: TRAIN only: seeded shuffle of row groups and of rows within windows.
        seed: the shuffle seed (the same on every rank).
        shard: ``"rows"`` or ``"row_groups"`` (TRAIN only; see the module docstring).
        window_groups: row groups per shuffle window.
    """

    def __init__(self, group_sizes, *, rank: int, world_size: int, phase: int, shuffle: bool = False,
                 seed: int = 0, shard: str = "rows", window_groups: int = 4):
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} is outside world_size {world_size}")
        if shard not in SHARD_MODES:
            raise ValueError(f"shard must be one of {SHARD_MODES}, got {shard!r}")
        self.sizes = np.asarray(group_sizes, dtype=np.int64)
        self.starts = np.concatenate([[0], np.cumsum(self.sizes)])
        self.total = int(self.starts[-1])
        self.rank, self.world_size, self.phase = rank, world_size, phase
        self.shuffle, self.seed, self.window_groups = shuffle, seed, max(1, window_groups)
        if phase == TRAIN and shard == "row_groups" and len(self.sizes) < world_size:
            log.warning("only %d row group(s) for %d ranks: sharding by rows instead of row groups",
                        len(self.sizes), world_size)
            shard = "rows"
        self.shard = shard if phase == TRAIN else "range"
        if self.shard == "row_groups":
            self.own_groups = np.arange(rank, len(self.sizes), world_size)
            self.stride, self.phase_offset = 1, 0
        else:
            self.own_groups = np.arange(len(self.sizes))
            self.stride, self.phase_offset = (world_size, rank) if self.shard == "rows" else (1, 0)
        self.epoch_rows = int(self.sizes[self.own_groups].sum())
        if self.total == 0:
            raise DataSourceError("the dataset has no rows")

    @property
    def test_range(self) -> tuple[int, int]:
        """TEST: this rank's global row range [lo, hi)."""
        n, r = self.world_size, self.rank
        return (r * self.total) // n, ((r + 1) * self.total) // n

    @property
    def samples_per_pass(self) -> int:
        """TEST: samples in this rank's pass. TRAIN: this rank's samples per epoch (rounded up)."""
        if self.phase == TEST:
            lo, hi = self.test_range
            return hi - lo
        return -(-self.epoch_rows // self.stride) if self.shard == "rows" else self.epoch_rows

    # ------------------------------------------------------------------------- streams

    def windows(self, start: int = 0) -> Iterator[Window]:
        """Windows from rank-local position `start` on (TRAIN: forever; TEST: to the pass's end)."""
        if self.phase == TEST:
            yield from self._test_windows(start)
            return
        pos = self.phase_offset + start * self.stride   # position in the (shared) stream
        epoch, offset = divmod(pos, self.epoch_rows)
        while True:
            for groups, a, b, order in self._epoch_layout(epoch):
                if b <= offset:
                    continue
                base = epoch * self.epoch_rows
                first = max(a, offset)
                first += (self.phase_offset - (base + first)) % self.stride
                if first >= b:
                    continue
                local = np.arange(first - a, b - a, self.stride)
                rows = order(local)
                yield Window(groups, rows, (base + first - self.phase_offset) // self.stride)
            epoch, offset = epoch + 1, 0

    def _epoch_layout(self, epoch: int):
        """[(groups, a, b, order)] for one epoch: windows covering epoch offsets [a, b).

        ``order(local)`` maps positions inside the window to row indices in the window's groups.
        """
        groups = self.own_groups
        view = self.rank if self.shard == "row_groups" else -1
        if self.shuffle:
            groups = groups[_rng(self.seed, epoch, view, 1).permutation(len(groups))]
            step = self.window_groups
        else:
            step = 1
        out, a = [], 0
        for k in range(0, len(groups), step):
            chunk = tuple(int(g) for g in groups[k:k + step])
            n = int(self.sizes[list(chunk)].sum())
            if self.shuffle:
                key = (self.seed, epoch, view, 2, k)
                order = (lambda key, n: lambda local: _rng(*key).permutation(n)[local])(key, n)
            else:
                order = _identity
            out.append((chunk, a, a + n, order))
            a += n
        return out

    def _test_windows(self, start: int) -> Iterator[Window]:
        lo, hi = self.test_range
        first = lo + start
        for g in range(len(self.sizes)):
            g_lo, g_hi = int(self.starts[g]), int(self.starts[g + 1])
            a, b = max(first, g_lo), min(hi, g_hi)
            if a < b:
                yield Window((g,), np.arange(a - g_lo, b - g_lo), a - lo)

    def global_rows(self, window: Window) -> np.ndarray:
        """Global row numbers of a window's rows (for tests and diagnostics)."""
        bases = np.concatenate([np.arange(self.starts[g], self.starts[g + 1]) for g in window.groups])
        return bases[window.rows]


def _identity(local: np.ndarray) -> np.ndarray:
    return local
