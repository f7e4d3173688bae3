"""What every rank runs first, whatever the backend: logging, threads, collectives, device, and
the report of the exception that ends it.

A backend ships :func:`rank_entry` (or a module-level function of its own that calls it) with a
:class:`RankTask` to each rank. It prepares the process, starts the backend's collectives, calls
the task's function with a :class:`RankContext` and, when that raises, reports the exception to
the driver (by default as a ``HOVCAFFE-ERROR`` line, :mod:`protocol`) before letting the process
die, which makes the backend stop the other ranks.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import time
import traceback
from typing import TYPE_CHECKING, Any, Callable, Sequence

from hovcaffe.distributed.faults import FaultHook
from hovcaffe.distributed.protocol import emit_error
from hovcaffe.distributed.ranklog import configure_rank_logging

if TYPE_CHECKING:
    from hovcaffe.distributed.backend import Collectives

log = logging.getLogger(__name__)

#: starts this rank's collectives (the backend's process-group set-up)
CollectivesInit = Callable[[], "Collectives"]
#: reports the exception ending a rank: (rank, exception, formatted traceback)
ErrorReport = Callable[[int, BaseException, str], None]


@dataclasses.dataclass(frozen=True)
class RankTask:
    """What the driver ships to the ranks (picklable).

    Attributes:
        fn: module-level function ``fn(ctx: RankContext, *args) -> result``.
        args: its positional arguments (picklable).
        threads: torch intra-op threads per rank.
        log_level: logging level for the ``hovcaffe`` logger on the ranks.
    """

    fn: Callable[..., Any]
    args: tuple = ()
    threads: int = 1
    log_level: int = logging.WARNING


@dataclasses.dataclass
class RankContext:
    """This rank's place in the job, handed to the job function."""

    rank: int
    size: int
    local_rank: int
    local_size: int
    device: Any  # torch.device
    faults: FaultHook
    collectives: "Collectives"
    #: wall-clock times (time.time()) of this rank's start-up steps, for diagnostics
    startup: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes snapshots, logs and the final model."""
        return self.rank == 0


def rank_entry(task: RankTask, init: CollectivesInit, *, rank_hint: int = -1,
               assigned_devices: Callable[[], Sequence[str]] = tuple,
               report_error: ErrorReport = emit_error) -> Any:
    """Run `task` on this rank.

    Args:
        init: starts the backend's collectives.
        rank_hint: this rank as the launcher's environment tells it (for errors before `init`).
        assigned_devices: the GPUs the cluster manager gave this rank's task (Spark's
            ``TaskContext.resources()['gpu']``), empty when none.
        report_error: how the exception ending the rank reaches the driver.
    """
    rank = rank_hint
    startup = {"entry": time.time()}
    try:
        startup["process"] = _process_start_time()
        configure_rank_logging(rank, task.log_level)
        _configure_threads(task.threads)
        startup["imports"] = time.time()
        collectives = init()
        startup["collectives_init"] = time.time()
        rank = collectives.rank
        configure_rank_logging(rank, task.log_level)
        device = pick_device(collectives.local_rank, assigned_devices)
        ctx = RankContext(rank=rank, size=collectives.size, local_rank=collectives.local_rank,
                          local_size=collectives.local_size, device=device,
                          faults=FaultHook(rank), collectives=collectives, startup=startup)
        log.debug("rank %d/%d on %s (pid %d)", rank, ctx.size, ctx.device, os.getpid())
        return task.fn(ctx, *task.args)
    except BaseException as exc:
        report_error(rank, exc, traceback.format_exc())
        raise


def _process_start_time() -> float:
    try:
        import psutil

        return psutil.Process().create_time()
    except Exception:
        return time.time()


def pick_device(local_rank: int, assigned_devices: Callable[[], Sequence[str]] = tuple):
    """The torch device of this rank: the GPU assigned to its task, else the local rank's GPU,
    else the CPU."""
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        assigned = list(assigned_devices())
    except Exception:  # not inside a Spark task
        assigned = []
    index = int(assigned[0]) if assigned else local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _configure_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (parallel work ran before us)
        pass
