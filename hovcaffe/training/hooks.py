"""The seams of the training loop: what a rank runtime plugs in (`TrainHooks`), what observers
receive (`TrainCallback`), and the records they are given (`IterationRecord`, `TrainResult`)."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from hovcaffe.training.loop import Trainer


@dataclasses.dataclass
class IterationRecord:
    """What one training iteration produced (given to callbacks after the update)."""

    iteration: int                 # Caffe's iteration index (0-based, before the update)
    lr: float | None               # rate used for this update (None for the final row)
    loss: float | None             # raw loss, averaged over iter_size (None: no forward)
    smoothed_loss: float | None
    seconds: float
    outputs: dict[str, float]      # scalar train-net outputs of the last sub-batch
    test: dict[str, float] | None  # test scores computed at this iteration, if any
    sub_losses: list[float] = dataclasses.field(default_factory=list)  # per iter_size pass


@dataclasses.dataclass
class TrainResult:
    iterations: int
    losses: list[float]
    lrs: list[float]
    test_scores: dict[int, dict[str, float]]
    last_snapshot: dict[str, str] | None
    stopped_by: str | None = None


class TrainHooks:
    """The seam for the distributed runner; the defaults are a single process."""

    rank: int = 0
    world_size: int = 1

    @property
    def is_writer(self) -> bool:
        """Whether this process writes snapshots (rank 0)."""
        return self.rank == 0

    def wrap_optimizer(self, optimizer, learnables, solver):
        """Return the optimizer to use (e.g. `hvd.DistributedOptimizer(optimizer, ...,
        backward_passes_per_step=solver.iter_size)`). Called before any state is restored."""
        return optimizer

    def broadcast_state(self, trainer: "Trainer") -> None:
        """Make every rank start from rank 0's weights, histories and counters."""

    def sync_statistics(self, trainer: "Trainer") -> None:
        """Make the blobs that layers update themselves (BatchNorm's statistics, the
        `frozen_blobs`) agree across ranks; called before every test pass, snapshot and at the
        end, so that what is scored and saved is one model."""

    def test_samples(self, k: int) -> int | None:
        """Rows of its TEST data this rank scores for test net `k`, each once
        (`hovcaffe.training.scoring.score_samples`); None for Caffe's `test_iter` batches."""
        return None

    def reduce_test_scores(self, scores: dict[str, float]) -> dict[str, float]:
        """Combine one test pass's means across ranks (average)."""
        return scores

    def gather_objects(self, obj: object) -> list:
        """Every rank's `obj` (picklable), in rank order (test results to combine exactly)."""
        return [obj]

    def agree_action(self, action: str | None) -> str | None:
        """Combine the signal actions requested on each rank (all ranks must act alike)."""
        return action


class TrainCallback:
    """Receives the loop's events; override what you need."""

    def on_start(self, trainer: "Trainer") -> None: ...

    def on_test(self, iteration: int, scores: dict[str, float]) -> None: ...

    def on_iteration(self, record: IterationRecord) -> None: ...

    def on_snapshot(self, iteration: int, paths: dict[str, str]) -> None: ...

    def on_end(self, result: TrainResult) -> None: ...
