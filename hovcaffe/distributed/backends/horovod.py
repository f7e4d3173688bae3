"""The ``horovod`` backend: Horovod ranks inside Spark tasks (`horovod.spark.run`).

Launching, preflight and failure reports are in :mod:`hovcaffe.distributed.horovod_launcher`;
here are the Backend and the rank side: :class:`HorovodCollectives` over ``horovod.torch``.
"""
from __future__ import annotations

import contextlib
import threading
import time
from typing import Any, Iterator, Mapping, Sequence

from hovcaffe.distributed.backend import Backend, Collectives, EventHandler
from hovcaffe.distributed.rank import RankTask, rank_entry


class HorovodCollectives(Collectives):
    """Collectives over ``horovod.torch`` (initialised by the constructor)."""

    def __init__(self) -> None:
        import horovod.torch as hvd

        hvd.init()
        self._hvd = hvd
        self.rank, self.size = hvd.rank(), hvd.size()
        self.local_rank, self.local_size = hvd.local_rank(), hvd.local_size()
        self.allreduce_wait_s = 0.0

    def averaging_optimizer(self, optimizer, named_parameters: Sequence[tuple[str, Any]],
                            passes_per_step: int, groups: int):
        hvd = self._hvd
        wrapped = hvd.DistributedOptimizer(optimizer, named_parameters=list(named_parameters),
                                           backward_passes_per_step=passes_per_step,
                                           op=hvd.Average, groups=groups or None)
        synchronize = wrapped.synchronize

        def timed_synchronize() -> None:
            start = time.perf_counter()
            synchronize()
            self.allreduce_wait_s += time.perf_counter() - start

        wrapped.synchronize = timed_synchronize  # step() calls self.synchronize()
        return wrapped

    def allreduce_sum(self, tensor, name: str):
        return self._hvd.allreduce(tensor, op=self._hvd.Sum, name=name)

    def allreduce_max(self, tensor, name: str):
        return self._hvd.allreduce(tensor, op=self._hvd.Max, name=name)

    def broadcast_tensors(self, tensors: Mapping[str, Any], root: int = 0) -> None:
        self._hvd.broadcast_parameters(dict(tensors), root_rank=root)

    def broadcast_object(self, obj: Any, root: int = 0, name: str = "object") -> Any:
        return self._hvd.broadcast_object(obj, root_rank=root, name=name)

    def barrier(self) -> None:
        self._hvd.barrier()


def _spark_task_gpus() -> list[str]:
    from horovod.spark.task import get_available_devices

    return list(get_available_devices())


def _env_rank() -> int:
    import os

    for key in ("HOROVOD_RANK", "OMPI_COMM_WORLD_RANK"):
        if key in os.environ:
            return int(os.environ[key])
    return -1


def horovod_rank_entry(task: RankTask) -> Any:
    """What `horovod.spark.run` runs in each rank's process."""
    return rank_entry(task, HorovodCollectives, rank_hint=_env_rank(),
                      assigned_devices=_spark_task_gpus)


class HorovodBackend(Backend):
    """Horovod on Spark: one rank per Spark task, over ``options.connection`` (Gloo or MPI)."""

    name = "horovod"
    auto_order = 0
    uses_spark = True
    classic_only = True  # horovod.spark.run starts its ranks through RDDs of the SparkContext

    @classmethod
    def missing(cls) -> str | None:
        try:
            import horovod.spark  # noqa: F401
            import horovod.torch  # noqa: F401
        except Exception as exc:  # ImportError, or a broken native library
            return f"horovod cannot be imported: {exc}"
        return None

    @classmethod
    def installation(cls) -> tuple[bool, str]:
        """Installed completely when Horovod has both Gloo and MPI (what -connection offers)."""
        why = cls.missing()
        if why is not None:
            return False, why
        import horovod
        import horovod.torch as hvd

        flags = {"gloo": hvd.gloo_built(), "mpi": hvd.mpi_built(), "nccl": hvd.nccl_built()}
        built = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())
        return bool(flags["gloo"] and flags["mpi"]), f"{horovod.__version__} ({built})"

    def session(self):
        """The Spark session of the run (the given one, else see `session_for`)."""
        if self.spark is None:
            from hovcaffe.distributed.runner import session_for

            self.spark = session_for(self.options)
        return self.spark

    def preflight(self) -> str:
        from hovcaffe.distributed.backend import check_session
        from hovcaffe.distributed.horovod_launcher import preflight_cluster

        check_session(type(self), self.session())
        return preflight_cluster(self.session(), self.options)

    def run(self, task: RankTask, *, on_event: EventHandler | None = None) -> list[Any]:
        from hovcaffe.distributed.horovod_launcher import launch

        with _signals_off_main_thread():
            return launch(horovod_rank_entry, task, self.options, spark=self.session(),
                          on_event=on_event)


class _MainThreadSignals:
    """The ``signal`` module as seen by Horovod's Gloo launcher, minus handler installation off
    the main thread (where Python refuses it)."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def signal(self, signalnum, handler):
        if threading.current_thread() is threading.main_thread():
            return self._module.signal(signalnum, handler)
        return None


_patch_lock = threading.Lock()
_patch_users = 0


@contextlib.contextmanager
def _signals_off_main_thread() -> Iterator[None]:
    """Let ``horovod.spark.run`` start from a worker thread.

    Horovod's Gloo launcher installs SIGINT/SIGTERM handlers, which Python allows only in the main
    thread; ``CrossValidator`` and ``fitMultiple`` call ``fit`` from pool threads. There the
    launcher skips the handlers (Ctrl-C still reaches the main thread, and a failed rank still ends
    the job). The main thread is left untouched.
    """
    global _patch_users
    if threading.current_thread() is threading.main_thread():
        yield
        return
    import horovod.runner.gloo_run as gloo_run

    with _patch_lock:
        if _patch_users == 0:
            gloo_run.signal = _MainThreadSignals(gloo_run.signal)
        _patch_users += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0 and isinstance(gloo_run.signal, _MainThreadSignals):
                gloo_run.signal = gloo_run.signal._module


BACKEND = HorovodBackend
