"""The ``torch`` backend: N ranks as one Spark barrier stage, over ``torch.distributed``.

No compiler and no Horovod: any pip-installed PySpark with a torch built with Gloo runs it, on a
classic session or a Spark Connect one (``DataFrame.mapInArrow(..., barrier=True)`` is the same
call on both). The rank side is :mod:`hovcaffe.distributed.barrier_stage`; here are the driver's
parts:

* preflight: one rank per task (``devices`` must be 1), and on classic sessions N concurrent
  task slots (a barrier stage needs all its tasks at once; Spark itself would wait minutes);
* the progress channel (:class:`~hovcaffe.distributed.protocol.EventServer`) on the driver host:
  progress events and rank log records as with every backend, and the ``rank_error`` events;
* on failure one :class:`~hovcaffe.errors.DistributedError` naming the rank whose exception
  caused it. A rank that died without a word (killed, executor lost) is named from the ranks that
  did not report, or from Spark's "barrier task ResultTask(stage, partition)" message.

Spark aborts a failed barrier *result* stage at once (it cannot retry a stage that may have
returned rows) and kills its other tasks; the surviving ranks also fail their next collective
when a peer's connection closes. Restarts are the runner's (``max_restarts``), not Spark's.
"""
from __future__ import annotations

import logging
import os
import pickle
import re
import threading
import time
from typing import Any

from hovcaffe.distributed.backend import Backend, EventHandler, check_num_proc
from hovcaffe.distributed.barrier_stage import (ERROR_KIND, RESULT_SCHEMA, stage_function,
                                                summary_from_json)
from hovcaffe.distributed.protocol import SINK_ENV, EventServer, RankError, last_frame, parse_marker
from hovcaffe.distributed.rank import RankTask
from hovcaffe.distributed.torch_collectives import (COLLECTIVE_TIMEOUT_S, gloo_missing,
                                                    torch_distributed_summary)
from hovcaffe.errors import DistributedError

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
        from hovcaffe.options import OptionError
        from hovcaffe.utils.spark import is_connect

        n = check_num_proc(self.options)
        if self.options.devices != 1:
            raise OptionError(f"$devices {self.options.devices}: the torch backend runs one rank "
                              f"per Spark task; ask for one GPU per task "
                              f"(spark.task.resource.gpu.amount=1) and set $num_proc to the GPUs")
        spark = self.session()
        if is_connect(spark):
            return (f"{n} barrier task(s) through Spark Connect (slots not counted: Spark fails a "
                    f"barrier stage that does not fit)")
        from hovcaffe.distributed.slots import check_slots

        return check_slots(spark.sparkContext, n, self.options.slot_wait_s).detail

    def run(self, task: RankTask, *, on_event: EventHandler | None = None) -> list[Any]:
        n = check_num_proc(self.options)
        spark = self.session()
        events = _StageEvents(on_event)
        timeout_s = float(max(self.options.start_timeout, COLLECTIVE_TIMEOUT_S))
        host = spark.conf.get("spark.driver.host", None) or os.environ.get("SPARK_LOCAL_IP") \
            or "127.0.0.1"
        log.info("launching %d rank(s) as a Spark barrier stage (torch.distributed)", n)
        t0 = time.monotonic()
        with EventServer(host, events) as server:
            fn = stage_function(pickle.dumps(task), self._rank_env(server.address), timeout_s)
            frame = spark.range(0, n, 1, numPartitions=n)
            try:
                rows = frame.mapInArrow(fn, RESULT_SCHEMA, barrier=True).collect()
            except Exception as exc:
                time.sleep(REPORT_GRACE_S)  # error events sent just before the stage died
                raise DistributedError(explain_stage_failure(exc, events.reported(), n,
                                                             time.monotonic() - t0)) from exc
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


def explain_stage_failure(exc: BaseException, errors: list[RankError], size: int,
                          elapsed: float) -> str:
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
        int(failed_task.group(1)) if failed_task and not errors else None
    if lost is not None:
        others = f"; the others stopped with: {errors[0]}" if errors else ""
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
