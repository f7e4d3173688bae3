"""Run a rank task on N Horovod ranks inside Spark tasks (`horovod.spark.run`), failing fast.

The machinery of the ``horovod`` backend (:mod:`hovcaffe.distributed.backends.horovod`).
:func:`launch` adds to `horovod.spark.run` what a training job needs around it:

* preflight: the transport exists here and N tasks fit in the cluster (seconds, with numbers);
* the environment passed explicitly to the ranks (threads, Horovod tuning, transport settings,
  loopback NICs for local masters);
* the ranks' output parsed on the driver: progress events to a callback, and on failure a
  :class:`~hovcaffe.errors.DistributedError` naming the rank and the exception that *caused* it
  (Horovod itself reports whichever process exited first, often a collateral victim);
* a non-zero outcome whenever any rank fails - Horovod terminates the other ranks and cancels
  the Spark job group, so nothing waits for a dead peer.
"""
from __future__ import annotations

import contextlib
import dataclasses
import ipaddress
import logging
import os
import re
import signal
import sys
import threading
import time
from typing import Any, Callable

from hovcaffe.distributed.backend import check_num_proc
from hovcaffe.distributed.forwarded import EventHandler, LineSink, OutputRouter, log_lines
from hovcaffe.distributed.protocol import SINK_ENV, EventServer, last_frame
from hovcaffe.distributed.rank import RankTask
from hovcaffe.distributed.slots import check_slots
from hovcaffe.distributed.transport import (Transport, check_transport_available, open_mpi_flags,
                                             resolve_transport)
from hovcaffe.errors import DistributedError
from hovcaffe.options import DistributedOptions

log = logging.getLogger(__name__)

GROUPS_ENV = "HOVCAFFE_GRADIENT_GROUPS"


@dataclasses.dataclass(frozen=True)
class HorovodTuning:
    """Horovod knobs passed to the ranks as environment variables (None = Horovod's default).

    Attributes:
        fusion_threshold_mb: HOROVOD_FUSION_THRESHOLD, the tensor-fusion buffer size.
        cycle_time_ms: HOROVOD_CYCLE_TIME, how often the background thread batches requests.
        cache_capacity: HOROVOD_CACHE_CAPACITY, the response cache (0 disables it).
        stall_shutdown_s: HOROVOD_STALL_SHUTDOWN_TIME_SECONDS: a rank that stops submitting
            collectives for this long shuts the job down instead of hanging it.
        gradient_groups: how the gradients of one update are reduced: 1 = one grouped allreduce
            once the backward pass is done, 0 = one request per parameter as its gradient is
            ready (overlaps communication with the backward pass), None = 1 on CPU, 0 on GPU.
            On CPU the overlapping requests make Horovod's background thread compete with the
            backward pass for the cores (benchmarks/scaling.py --tune).
    """

    fusion_threshold_mb: float | None = None
    cycle_time_ms: float | None = 1.0
    cache_capacity: int | None = None
    stall_shutdown_s: int | None = 600
    gradient_groups: int | None = None

    def env(self) -> dict[str, str]:
        out: dict[str, str] = {}
        if self.gradient_groups is not None:
            out[GROUPS_ENV] = str(self.gradient_groups)
        if self.fusion_threshold_mb is not None:
            out["HOROVOD_FUSION_THRESHOLD"] = str(int(self.fusion_threshold_mb * 1024 * 1024))
        if self.cycle_time_ms is not None:
            out["HOROVOD_CYCLE_TIME"] = f"{self.cycle_time_ms:g}"
        if self.cache_capacity is not None:
            out["HOROVOD_CACHE_CAPACITY"] = str(self.cache_capacity)
        if self.stall_shutdown_s:
            out["HOROVOD_STALL_CHECK_TIME_SECONDS"] = str(min(60, self.stall_shutdown_s))
            out["HOROVOD_STALL_SHUTDOWN_TIME_SECONDS"] = str(self.stall_shutdown_s)
        return out


def default_nics(master: str) -> set[str] | None:
    """Loopback for local masters and for a loopback SPARK_LOCAL_IP; else let Horovod choose."""
    local_ip = os.environ.get("SPARK_LOCAL_IP", "")
    try:
        loopback_ip = bool(local_ip) and ipaddress.ip_address(local_ip).is_loopback
    except ValueError:
        loopback_ip = local_ip == "localhost"
    if master.startswith("local") or loopback_ip:
        return {"lo"}
    return None


def transport_of(options: DistributedOptions) -> Transport:
    return resolve_transport(options.connection)


def tuning_of(options: DistributedOptions) -> HorovodTuning:
    return options.tuning if options.tuning is not None else HorovodTuning()


def rank_env(options: DistributedOptions) -> dict[str, str]:
    """The environment every rank gets (explicit, so executors' defaults do not leak in)."""
    from hovcaffe.utils.spark import rank_environment

    transport = transport_of(options)
    threads = str(max(1, options.threads_per_rank))
    extra = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads,
             "PYTHONUNBUFFERED": "1", **tuning_of(options).env(), **dict(transport.rank_env)}
    pkg_root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    # Executors on this machine import the same checkout; elsewhere hovcaffe must be installed.
    paths = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if pkg_root not in paths:
        paths.insert(0, pkg_root)
    extra["PYTHONPATH"] = os.pathsep.join(paths)
    extra.update(dict(options.env))
    env = rank_environment(extra)
    for key, value in transport.default_env:
        env.setdefault(key, value)
    return env


def preflight_cluster(spark, options: DistributedOptions) -> str:
    """Fail in seconds when the transport is missing or `options.num_proc` tasks cannot run at once.

    Returns:
        How the slots were counted (for the log).
    """
    from hovcaffe.utils.executors import check_executors
    from hovcaffe.utils.spark import require_classic

    # backend resolution already refuses Horovod under Connect; this guards direct callers
    require_classic(spark, "training on Horovod ranks in Spark tasks", "use the torch backend "
                    "(-backend torch), which runs as a barrier stage under Spark Connect")
    num_proc = check_num_proc(options)
    check_transport_available(transport_of(options))
    check_executors(spark)
    return check_slots(spark.sparkContext, num_proc, options.slot_wait_s).detail


def launch(entry: Callable[[RankTask], Any], task: RankTask, options: DistributedOptions, *,
           spark, on_event: EventHandler | None = None,
           sink: LineSink | None = log_lines) -> list[Any]:
    """Run `task` on `options.num_proc` Horovod ranks; their results in rank order.

    Args:
        entry: the module-level function Horovod ships to each rank (it calls ``rank_entry``).
        task: the rank task (its function is shipped by reference, never one from ``__main__``).
        options: ranks, transport, environment.
        spark: the SparkSession.
        on_event: receives the progress events the ranks emit.
        sink: receives every other output line of the ranks.

    Raises:
        DistributedError: a rank failed (the message names the rank and its error), or the Spark
            job was lost.
    """
    import horovod.spark

    sc = spark.sparkContext
    transport = transport_of(options)
    nics = set(options.nics) if options.nics else default_nics(sc.master)
    env = rank_env(options)
    router = OutputRouter(on_event=on_event, sink=sink)
    log.info("launching %d rank(s) over %s on %s (nics %s; start timeout %d s)", options.num_proc,
             transport.summary, sc.master, ",".join(sorted(nics)) if nics else "auto",
             options.start_timeout)
    t0 = time.monotonic()
    try:
        with EventServer(sc.getConf().get("spark.driver.host", "127.0.0.1"), router.event) as events, \
                _quiet_cancelled_spark_thread(), open_mpi_flags(transport), \
                _spawn_without_main(transport.use_mpi):
            env[SINK_ENV] = events.address
            results = horovod.spark.run(
                entry, args=(task,), num_proc=options.num_proc,
                start_timeout=options.start_timeout, use_mpi=transport.use_mpi,
                use_gloo=transport.use_gloo, extra_mpi_args=transport.extra_mpi_args, env=env,
                stdout=router, stderr=router, verbose=0, nics=nics)
    except Exception as exc:
        router.flush()
        raise DistributedError(explain_failure(exc, router, time.monotonic() - t0)) from exc
    router.flush()
    return results


_MAIN_LOCK = threading.Lock()
_main_hidden: dict = {"depth": 0, "saved": {}}
_MISSING = object()


@contextlib.contextmanager
def _spawn_without_main(active: bool):
    """Keep the caller's script out of the helper process Horovod spawns to run mpirun.

    Horovod starts mpirun through a `multiprocessing` *spawn* child, which re-imports the
    ``__main__`` script. A script that calls hovcaffe at top level, without an
    ``if __name__ == "__main__":`` guard, would start training again inside that child, which
    multiprocessing refuses - and Horovod then reports "MPI not found". The helper needs nothing
    from the script, so while launching, ``__main__`` is presented without its file and spec.
    Concurrent launches (parallel fits) share one hiding: the last one out restores them.
    """
    main = sys.modules.get("__main__")
    if not active or main is None:
        yield
        return
    with _MAIN_LOCK:
        if _main_hidden["depth"] == 0:
            _main_hidden["saved"] = {n: getattr(main, n, _MISSING) for n in ("__file__", "__spec__")}
            if _main_hidden["saved"]["__file__"] is not _MISSING:
                del main.__file__
            main.__spec__ = None
        _main_hidden["depth"] += 1
    try:
        yield
    finally:
        with _MAIN_LOCK:
            _main_hidden["depth"] -= 1
            if _main_hidden["depth"] == 0:
                for name, value in _main_hidden["saved"].items():
                    if value is _MISSING:
                        if hasattr(main, name):
                            delattr(main, name)
                    else:
                        setattr(main, name, value)


@contextlib.contextmanager
def _quiet_cancelled_spark_thread():
    """Horovod cancels its Spark job when a rank fails; the thread waiting on that job then dies
    with a long Java "job cancelled" traceback. The failure is reported properly by `launch`, so
    that one traceback goes to the debug log instead of the terminal."""
    previous = threading.excepthook

    def hook(args) -> None:
        text = f"{args.exc_type.__name__}: {args.exc_value}"
        if "SPARK_JOB_CANCELLED" in text or "cancelled part of cancelled job group" in text:
            log.debug("Spark job of the failed run was cancelled: %s", text.splitlines()[0])
            return
        previous(args)

    threading.excepthook = hook
    try:
        yield
    finally:
        threading.excepthook = previous


def explain_failure(exc: BaseException, router: OutputRouter, elapsed: float) -> str:
    """One message for a failed job: which rank failed, with what, and where to look.

    An exception a rank reported wins; errors that only say "Horovod has been shut down" are the
    consequence of another rank's death, so a rank that died without a report (killed, executor
    lost) is named instead when Horovod's launcher saw one.
    """
    cause = router.root_cause()
    head = f"distributed job failed after {elapsed:.1f}s: "
    if cause is not None and not cause.collateral:
        where = last_frame(cause.traceback)
        return head + str(cause) + (f"\n  at {where}" if where else "")
    text = str(exc)
    rank, code = _dead_process(text, router)
    if rank is not None and (cause is None or rank != cause.rank):
        lines = router.tail(rank, 8)
        detail = ("\n  last output of rank %d:\n    " % rank + "\n    ".join(lines)) if lines else ""
        return head + f"rank {rank} {_describe_exit(code)} without reporting an error (process " \
                      f"killed or executor lost){detail}"
    if cause is not None:
        return head + str(cause)
    launcher = [line for line in router.tail(None, 16) if line.strip(" -")]  # mpirun's own words
    detail = ("\n  launcher output:\n    " + "\n    ".join(launcher[-10:])) if launcher else ""
    return head + f"{type(exc).__name__}: {text.strip().splitlines()[-1] if text.strip() else ''}{detail}"


def _dead_process(text: str, router: OutputRouter) -> tuple[int | None, int | None]:
    m = re.search(r"Process name:\s*(\d+)\s*\n\s*Exit code:\s*(-?\d+)", text)
    if m:
        return int(m.group(1)), int(m.group(2))
    for line in router.tail(None, 40):  # mpirun's own report
        m = re.search(r"process rank (\d+) with PID \d+ .* exited on signal (\d+)", line)
        if m:
            return int(m.group(1)), 128 + int(m.group(2))
    m = re.search(r"exit code (-?\d+)", text)
    return (None, int(m.group(1))) if m else (None, None)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "exited"
    signum = -code if code < 0 else code - 128 if code > 128 else None
    if signum:
        try:
            return f"was killed by {signal.Signals(signum).name} (exit code {code})"
        except ValueError:
            pass
    return f"exited with code {code}"
