"""What every Horovod rank runs first: threads, device, Horovod init, error reporting.

`horovod.spark.run` ships :func:`rank_entry` (an importable function, never one from
``__main__``) to each Spark task. It prepares the process, calls the job's function with a
:class:`RankContext`, and, when that raises, reports the exception to the driver as a
``HOVCAFFE-ERROR`` line before letting the process die (which makes Horovod stop the other ranks).
"""
from __future__ import annotations

import dataclasses
import logging
import os
import traceback
from typing import Any, Callable

from hovcaffe.distributed.faults import FaultHook
from hovcaffe.distributed.protocol import emit_error

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class RankTask:
    """What the driver ships to the ranks.

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
    #: wall-clock times (time.time()) of this rank's start-up steps, for diagnostics
    startup: dict[str, float] = dataclasses.field(default_factory=dict)

    @property
    def is_writer(self) -> bool:
        """Only rank 0 writes snapshots, logs and the final model."""
        return self.rank == 0


def rank_entry(task: RankTask) -> Any:
    """Run `task` on this rank (called by Horovod inside the Spark task's subprocess)."""
    import time

    rank = _env_rank()
    startup = {"entry": time.time()}
    try:
        startup["process"] = _process_start_time()
        _configure_logging(task.log_level, rank)
        _configure_threads(task.threads)
        import horovod.torch as hvd

        startup["imports"] = time.time()
        hvd.init()
        startup["horovod_init"] = time.time()
        rank = hvd.rank()
        ctx = RankContext(rank=rank, size=hvd.size(), local_rank=hvd.local_rank(),
                          local_size=hvd.local_size(), device=pick_device(hvd.local_rank()),
                          faults=FaultHook(rank), startup=startup)
        log.debug("rank %d/%d on %s (pid %d)", rank, ctx.size, ctx.device, os.getpid())
        return task.fn(ctx, *task.args)
    except BaseException as exc:
        emit_error(rank, exc, traceback.format_exc())
        raise


def _process_start_time() -> float:
    try:
        import psutil  # a Horovod dependency

        return psutil.Process().create_time()
    except Exception:
        import time

        return time.time()


def pick_device(local_rank: int):
    """The torch device of this rank.

    On GPU executors Spark assigns each task its GPU (``TaskContext.resources()['gpu']``, which
    Horovod's task service passes on); without a Spark assignment the local rank picks one.
    """
    import torch

    if not torch.cuda.is_available():
        return torch.device("cpu")
    try:
        from horovod.spark.task import get_available_devices

        assigned = get_available_devices()
    except Exception:  # not inside a Spark task (e.g. horovodrun)
        assigned = []
    index = int(assigned[0]) if assigned else local_rank % torch.cuda.device_count()
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _env_rank() -> int:
    for key in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return -1


def _configure_threads(threads: int) -> None:
    import torch

    torch.set_num_threads(max(1, threads))
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:  # already set (parallel work ran before us)
        pass


def _configure_logging(level: int, rank: int) -> None:
    root = logging.getLogger("hovcaffe")
    if not root.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter(f"%(asctime)s %(levelname).1s rank{rank} %(name)s] "
                                               "%(message)s", "%H:%M:%S"))
        root.addHandler(handler)
        root.propagate = False
    root.setLevel(level)
