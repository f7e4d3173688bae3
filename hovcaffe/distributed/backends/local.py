"""The ``local`` backend: N ``torch.distributed`` (Gloo) processes on this machine, no Spark.

The ranks are fresh interpreters (multiprocessing *spawn*) that meet at a TCP store on
127.0.0.1. They run the same :func:`~hovcaffe.distributed.rank.rank_entry`, Trainer and hooks
as the Spark backends; results and the exception that ends a rank come back over a queue,
progress events and log records over the driver's event channel (:mod:`protocol`). When a rank
fails, the others are terminated and the error names the failed rank. The fast distributed
tests use it; it is never chosen by ``auto``.
"""
from __future__ import annotations

import functools
import os
import pickle
import queue as queue_module
import socket
import time
from typing import Any

from hovcaffe.distributed.backend import Backend, EventHandler, check_num_proc
from hovcaffe.distributed.protocol import SINK_ENV, EventServer, RankError, last_frame
from hovcaffe.distributed.rank import RankTask, rank_entry
from hovcaffe.distributed.torch_collectives import (COLLECTIVE_TIMEOUT_S, gloo_missing,
                                                    torch_distributed_summary)
from hovcaffe.errors import DistributedError

LOOPBACK = "127.0.0.1"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((LOOPBACK, 0))
        return s.getsockname()[1]


def _report_error(results, rank: int, exc: BaseException, traceback_text: str) -> None:
    results.put(("error", rank, RankError(rank, type(exc).__name__, str(exc)[:800],
                                          traceback_text[-2000:])))


def _rank_process(rank: int, size: int, init_method: str, timeout_s: float, env: dict[str, str],
                  task_bytes: bytes, results) -> None:
    """The body of one rank's process (module level: spawn imports it by name)."""
    os.environ.update(env)
    task: RankTask = pickle.loads(task_bytes)

    def init():
        from hovcaffe.distributed.torch_collectives import TorchCollectives, join_process_group

        join_process_group(init_method, rank, size, timeout_s=timeout_s)
        return TorchCollectives()

    try:
        result = rank_entry(task, init, rank_hint=rank,
                            report_error=functools.partial(_report_error, results))
    except BaseException:
        raise SystemExit(1)
    results.put(("result", rank, result))


class LocalBackend(Backend):
    """Ranks as processes of this machine over torch.distributed Gloo (see the module doc)."""

    name = "local"
    auto_order = None
    uses_spark = False

    @classmethod
    def missing(cls) -> str | None:
        return gloo_missing()

    @classmethod
    def installation(cls) -> tuple[bool, str]:
        why = cls.missing()
        return why is None, why or torch_distributed_summary()

    def preflight(self) -> str:
        n = check_num_proc(self.options)
        return f"{n} process(es) on {LOOPBACK} (torch.distributed, Gloo), {os.cpu_count()} core(s)"

    def run(self, task: RankTask, *, on_event: EventHandler | None = None) -> list[Any]:
        import multiprocessing

        n = check_num_proc(self.options)
        ctx = multiprocessing.get_context("spawn")
        results = ctx.Queue()
        threads = str(max(1, self.options.threads_per_rank))
        env = {"OMP_NUM_THREADS": threads, "MKL_NUM_THREADS": threads, **dict(self.options.env)}
        init_method = f"tcp://{LOOPBACK}:{_free_port()}"
        timeout_s = max(float(self.options.start_timeout), COLLECTIVE_TIMEOUT_S)
        t0 = time.monotonic()
        with EventServer(LOOPBACK, _Events(on_event)) as events:
            env[SINK_ENV] = events.address
            payload = pickle.dumps(task)
            procs = [ctx.Process(target=_rank_process, name=f"hovcaffe-rank{r}",
                                 args=(r, n, init_method, timeout_s, env, payload, results))
                     for r in range(n)]
            try:
                for p in procs:
                    p.start()
                summaries = self._collect(procs, results, n, t0)
                for p in procs:  # let them exit by themselves (interpreter teardown)
                    p.join(timeout=30)
                return summaries
            finally:  # after a failure: stop the ranks that still wait for the failed one
                for p in procs:
                    if p.is_alive():
                        p.terminate()
                for p in procs:
                    p.join(timeout=10)

    @staticmethod
    def _collect(procs, results, n: int, t0: float) -> list[Any]:
        done: dict[int, Any] = {}
        while len(done) < n:
            try:
                kind, rank, value = results.get(timeout=0.5)
            except queue_module.Empty:
                dead = [(r, p.exitcode) for r, p in enumerate(procs)
                        if r not in done and p.exitcode not in (None, 0)]
                if dead:
                    time.sleep(0.5)  # an error report may still be in the queue
                    if results.empty():
                        rank, code = dead[0]
                        raise DistributedError(
                            f"distributed job failed after {time.monotonic() - t0:.1f}s: rank "
                            f"{rank} exited with code {code} without reporting an error")
                continue
            if kind == "error":
                raise DistributedError(f"distributed job failed after {time.monotonic() - t0:.1f}s: "
                                       f"{value}" + _where(value))
            done[rank] = value
        return [done[r] for r in range(n)]


def _where(error: RankError) -> str:
    frame = last_frame(error.traceback)
    return f"\n  at {frame}" if frame else ""


class _Events:
    """Progress events to the caller's handler; rank log records to the driver's log."""

    def __init__(self, on_event: EventHandler | None) -> None:
        self.on_event = on_event

    def __call__(self, payload: dict) -> None:
        from hovcaffe.distributed.ranklog import LOG_KIND, log_rank_record

        if payload.get("kind") == LOG_KIND:
            log_rank_record(payload)
        elif self.on_event is not None:
            self.on_event(payload)


BACKEND = LocalBackend
