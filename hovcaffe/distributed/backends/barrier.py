"""The ``torch`` backend: N ranks as one Spark barrier stage, over ``torch.distributed``.

No compiler and no Horovod: any pip-installed PySpark with a torch built with Gloo runs it, on a
classic session or a Spark Connect one (``DataFrame.mapInArrow(..., barrier=True)`` is the same
call on both). The rank side is :mod:`hovcaffe.distributed.barrier_stage`; here are the driver's
parts:

* preflight: ``num_proc`` N ranks as N/K tasks of K ranks each (``devices`` K; N must be a
  multiple of K), and on classic sessions N/K concurrent task slots (a barrier stage needs all
  its tasks at once; Spark itself would wait minutes);
* in classic sessions the ranks' rendezvous store (a torch.distributed TCPStore,
  :func:`rendezvous_store`), and the progress channel
  (:class:`~hovcaffe.distributed.protocol.EventServer`) on the driver host: progress events and
  rank log records as with every backend, and the ``rank_error`` events;
* the stage: ``mapInArrow(barrier=True)`` under Spark Connect, an RDD barrier stage in a classic
  session (same rank code, about 2.3 s less to the first iteration cold; see barrier_stage);
* on failure one :class:`~hovcaffe.errors.DistributedError` naming the rank whose exception
  caused it. A rank that died without a word (killed, executor lost) is named from the ranks that
  did not report, or from Spark's "barrier task ResultTask(stage, partition)" message.

Spark aborts a failed barrier *result* stage at once (it cannot retry a stage that may have
returned rows) and kills its other tasks; the surviving ranks also fail their next collective
when a peer's connection closes. Restarts are the runner's (``max_restarts``), not Spark's.
"""
from __future__ import annotations

import contextlib
import logging
import os
import pickle
import re
import threading
import time
from typing import Any, Iterator

from hovcaffe.distributed.backend import Backend, EventHandler, check_num_proc
from hovcaffe.distributed.barrier_stage import (ERROR_KIND, RESULT_SCHEMA, stage_function,
                                                summary_from_json)
from hovcaffe.distributed.protocol import SINK_ENV, EventServer, RankError, last_frame, parse_marker
from hovcaffe.distributed.rank import RankTask
from hovcaffe.distributed.daemon import PRELOAD_ENV, RANKS
from hovcaffe.distributed.torch_collectives import (COLLECTIVE_TIMEOUT_S, gloo_missing,
                                                    torch_distributed_summary)
from hovcaffe.errors import DistributedError
from hovcaffe.utils.spark import is_connect, worker_environment

log = logging.getLogger(__name__)

#: errors a rank raises because *another* rank went away (its connection closed mid-collective)
COLLATERAL_TYPES = ("DistBackendError", "DistNetworkError", "DistStoreError")
COLLATERAL_TEXT = ("Connection closed by peer", "Connection reset by peer", "Broken pipe")
#: seconds the driver waits, after the stage failed, for error events still in flight
REPORT_GRACE_S = 1.0


def is_collateral(error: RankError) -> bool:
    """True for an error that only says a peer went away."""
    return (error.collateral or error.type in COLLATERAL_TYPES
            or any(text in error.message for text in COLLATERAL_TEXT))


class _StageEvents:
    """Driver side of the channel: rank errors kept, log records logged, the rest forwarded."""

    def __init__(self, on_event: EventHandler | None) -> None:
        self.on_event = on_event
        self.errors: list[RankError] = []
        self._lock = threading.Lock()

    def __call__(self, payload: dict) -> None:
        from hovcaffe.distributed.ranklog import LOG_KIND, log_rank_record

        kind = payload.get("kind")
        if kind == ERROR_KIND:
            with self._lock:
                self.errors.append(_rank_error(payload))
        elif kind == LOG_KIND:
            log_rank_record(payload)
        elif self.on_event is not None:
            self.on_event(payload)

    def reported(self) -> list[RankError]:
        """The rank errors received so far, in arrival order."""
        with self._lock:
            return list(self.errors)


def _rank_error(payload: dict) -> RankError:
    return RankError(int(payload.get("rank", -1)), str(payload.get("type", "Error")),
                     str(payload.get("message", "")), str(payload.get("traceback", "")))


class BarrierBackend(Backend):
    """Ranks as the tasks of one Spark barrier stage over torch.distributed (see the module doc)."""

    name = "torch"
    auto_order = 1  # after Horovod: auto's choice without Horovod, and in Spark Connect sessions
    uses_spark = True
    devices_share_a_task = True  # -devices K: K ranks in each barrier task (local_ranks)

    @classmethod
    def missing(cls) -> str | None:
        try:
            import pyspark  # noqa: F401
            import torch.distributed  # noqa: F401
        except Exception as exc:
            return f"pyspark or torch.distributed cannot be imported: {exc}"
        return gloo_missing()

    @classmethod
    def installation(cls) -> tuple[bool, str]:
        why = cls.missing()
        if why is not None:
            return False, why
        import pyspark

        return True, f"Spark barrier stage (pyspark {pyspark.__version__}) + {torch_distributed_summary()}"

    def session(self):
        """The Spark session of the run (the given one, else the runner's rule)."""
        if self.spark is None:
            from hovcaffe.distributed.runner import session_for

            self.spark = session_for(self.options)
        return self.spark

    def preflight(self) -> str:
        n, tasks, per_task = stage_shape(self.options)
        spark = self.session()
        shape = f"{tasks} barrier task(s) x {per_task} rank(s)" if per_task > 1 else \
            f"{tasks} barrier task(s)"
        if is_connect(spark):
            return (f"{shape} through Spark Connect (slots not counted: Spark fails a "
                    f"barrier stage that does not fit)")
        from hovcaffe.distributed.slots import check_slots

        return check_slots(spark.sparkContext, tasks, self.options.slot_wait_s).detail

    def run(self, task: RankTask, *, on_event: EventHandler | None = None) -> list[Any]:
        n, tasks, per_task = stage_shape(self.options)
        spark = self.session()
        events = _StageEvents(on_event)
        task_bytes = pickle.dumps(task)
        timeout_s = float(max(self.options.start_timeout, COLLECTIVE_TIMEOUT_S))
        host = spark.conf.get("spark.driver.host", None) or os.environ.get("SPARK_LOCAL_IP") \
            or "127.0.0.1"
        log.info("launching %d rank(s) as a Spark barrier stage of %d task(s) (torch.distributed)",
                 n, tasks)
        t0 = time.monotonic()
        connect = is_connect(spark)
        meeting = contextlib.nullcontext(None) if connect else rendezvous_store(host, n, timeout_s)
        with EventServer(host, events) as server, meeting as store:
            stage = (task_bytes, self._rank_env(server.address), timeout_s, store, per_task)
            try:
                if connect:  # the client may be out of the executors' reach: rank 0 hosts the store
                    frame = spark.range(0, tasks, 1, numPartitions=tasks)
                    rows = frame.mapInArrow(stage_function(*stage), RESULT_SCHEMA, barrier=True).collect()
                else:  # same ranks, without a cold SQL stage (see barrier_stage's doc)
                    sc = spark.sparkContext
                    with worker_environment(sc, {PRELOAD_ENV: RANKS}):  # workers forked warm
                        rows = [dict(zip(("rank", "summary", "payload"), row)) for row in
                                sc.parallelize(range(tasks), tasks).barrier()
                                .mapPartitions(stage_function(*stage, arrow=False)).collect()]
            except Exception as exc:
                time.sleep(REPORT_GRACE_S)  # error events sent just before the stage died
                raise DistributedError(explain_stage_failure(exc, events.reported(), n,
                                                             time.monotonic() - t0,
                                                             per_task)) from exc
        by_rank = {row["rank"]: row for row in rows}
        # payload rows were pickled by hovcaffe's own stage function on this run's executors
        return [summary_from_json(by_rank[r]["summary"]) if by_rank[r]["summary"] is not None
                else pickle.loads(by_rank[r]["payload"]) for r in range(n)]

    def _rank_env(self, sink: str) -> dict[str, str]:
        threads = str(max(1, self.options.threads_per_rank))
        env = {k: v for k, v in os.environ.items() if k.startswith("HOVCAFFE_")}
        env.update({"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, SINK_ENV: sink})
        if self.options.nics:
            env["GLOO_SOCKET_IFNAME"] = ",".join(self.options.nics)
        env.update(dict(self.options.env))
        return env


@contextlib.contextmanager
def rendezvous_store(host: str, size: int, timeout_s: float) -> Iterator[str]:
    """A torch.distributed TCPStore on the driver for one stage's ranks; yields ``host:port``.

    On the host the progress channel listens on (the executors reach the driver there), a port
    chosen by the OS. The ranks meet there instead of through ``allGather`` (see barrier_stage).
    """
    import datetime

    import torch.distributed as dist

    store = dist.TCPStore(host, 0, size, is_master=True, wait_for_workers=False,
                          timeout=datetime.timedelta(seconds=timeout_s))
    try:
        yield f"{host}:{store.port}"
    finally:
        del store  # the server stops with its last reference


def stage_shape(options) -> tuple[int, int, int]:
    """(ranks N, barrier tasks N/K, ranks per task K) of `options` (``num_proc``, ``devices``).

    Raises:
        OptionError: N is not a multiple of K.
    """
    from hovcaffe.options import OptionError

    n, per_task = check_num_proc(options), options.devices
    if n % per_task:
        raise OptionError(f"$num_proc {n} is not a multiple of $devices {per_task}: the torch "
                          f"backend runs $devices ranks in each Spark task")
    return n, n // per_task, per_task


def explain_stage_failure(exc: BaseException, errors: list[RankError], size: int,
                          elapsed: float, per_task: int = 1) -> str:
    """One message for a failed stage: the rank whose error caused it (see the module doc)."""
    head = f"distributed job failed after {elapsed:.1f}s: "
    text = str(exc)
    marked = parse_marker(text)
    if marked and marked[0] == "error":  # the failing task's own report, inside Spark's error
        errors = [*errors, _rank_error(marked[1])]
    cause = next((e for e in errors if not is_collateral(e)), None)
    if cause is not None:
        where = last_frame(cause.traceback)
        return head + str(cause) + (f"\n  at {where}" if where else "")
    spark_line = _spark_reason(text)
    reported = {e.rank for e in errors}
    silent = [r for r in range(size) if r not in reported]
    failed_task = re.search(r"barrier task ResultTask\(\d+, (\d+)\)", text)
    lost = silent[0] if errors and len(silent) == 1 else \
        int(failed_task.group(1)) * per_task if failed_task and not errors else None
    if lost is not None:
        others = f"; the others stopped with: {errors[0].brief()}" if errors else ""
        return (head + f"rank {lost} died without reporting an error (process killed, e.g. by "
                       f"SIGKILL, or executor lost): {spark_line}{others}")
    if errors:
        return head + str(errors[0])
    return head + spark_line


def _spark_reason(text: str) -> str:
    """The most telling line of Spark's error (a Python worker crash, else the first line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    for line in lines:
        if "Python worker exited unexpectedly" in line or "ExecutorLostFailure" in line:
            return line[:300]
    return lines[0][:300] if lines else "the Spark stage failed"


BACKEND = BarrierBackend
