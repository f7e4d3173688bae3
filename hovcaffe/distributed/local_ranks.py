"""Local ranks: the K-1 extra rank processes of a Spark task on the ``torch`` backend (``-devices K``).

With ``devices`` K the torch backend's barrier stage has ``num_proc / K`` tasks and each task runs
K ranks: the task's own process is local rank 0 (global rank ``task_index * K``), and
:class:`LocalRanks` starts local ranks 1..K-1 on the same host, each in a **fresh interpreter**
(``python -m hovcaffe.distributed.local_ranks <parent pid>``). Not a fork of the Spark worker:
that process already runs torch's OpenMP pool and, once it joined the group, Gloo's threads,
neither of which survives a fork.

A child reads its :class:`ChildSpec` (pickled, on stdin), joins the job's process group at the
store its parent found (:func:`~hovcaffe.distributed.barrier_stage.join_store`), runs the same
:func:`~hovcaffe.distributed.rank.rank_entry` and writes ``("ok", result)`` or
``("error", payload)`` (pickled) to its stdout; its fd 1 is pointed at stderr first, so nothing
else can land in that pipe. Its exception also goes to the driver as a ``rank_error`` event, as
every rank's does.

Children never outlive their task: each asks the kernel for SIGKILL when its parent dies
(``PR_SET_PDEATHSIG``), and the task terminates and reaps them in a ``finally``.
"""
from __future__ import annotations

import ctypes
import dataclasses
import functools
import os
import pickle
import signal
import subprocess
import sys
import threading
import time
from typing import Any

#: seconds a child has, after SIGTERM, before SIGKILL
STOP_GRACE_S = 5.0
_PR_SET_PDEATHSIG = 1


@dataclasses.dataclass(frozen=True)
class ChildSpec:
    """What local rank j of a task needs (picklable; sent on the child's stdin)."""

    task_bytes: bytes
    env: dict[str, str]
    timeout_s: float
    store: str  # host:port of the job's rendezvous TCPStore
    rank: int
    size: int
    gpu: str | None  # the task's GPU address this rank binds (None: CPU, Gloo)


def gpu_for_local_rank(gpus: list[str], local_rank: int, local_size: int) -> str | None:
    """The GPU address local rank j binds: the task's j-th (None on a CPU task).

    Raises:
        RuntimeError: the task holds GPUs, but fewer than its K ranks.
    """
    if not gpus:
        return None
    if len(gpus) < local_size:
        raise RuntimeError(f"-devices {local_size}: this Spark task holds {len(gpus)} GPU(s) "
                           f"({', '.join(gpus)}); each of its {local_size} ranks needs one: set "
                           f"spark.task.resource.gpu.amount={local_size}")
    return gpus[local_rank]


class LocalRanks:
    """Local ranks 1..K-1 of one task (see the module doc)."""

    def __init__(self, task_bytes: bytes, env: dict[str, str], timeout_s: float,
                 first_rank: int, size: int, local_size: int, gpus: list[str]) -> None:
        self.common = (task_bytes, env, timeout_s)
        self.first_rank, self.size, self.local_size, self.gpus = first_rank, size, local_size, gpus
        self.procs: dict[int, subprocess.Popen] = {}  # rank -> process
        self.outcomes: dict[int, tuple[str, Any]] = {}  # rank -> ("ok"|"error", value)
        self._readers: list[threading.Thread] = []

    def start(self, store: str) -> None:
        """Start the children; they join the group at `store` (``host:port``)."""
        env = dict(os.environ)
        # the child imports what this worker imports (PySpark's paths, files added to the job)
        env["PYTHONPATH"] = os.pathsep.join(p for p in sys.path if p)
        for j in range(1, self.local_size):
            rank = self.first_rank + j
            spec = ChildSpec(*self.common, store=store, rank=rank, size=self.size,
                             gpu=gpu_for_local_rank(self.gpus, j, self.local_size))
            proc = subprocess.Popen(
                [sys.executable, "-m", "hovcaffe.distributed.local_ranks", str(os.getpid())],
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, close_fds=True)
            self.procs[rank] = proc
            reader = threading.Thread(target=self._read, args=(rank, proc, pickle.dumps(spec)),
                                      name=f"hovcaffe-local-rank-{rank}", daemon=True)
            reader.start()
            self._readers.append(reader)

    def _read(self, rank: int, proc: subprocess.Popen, spec: bytes) -> None:
        try:
            proc.stdin.write(spec)
            proc.stdin.close()
            data = proc.stdout.read()
            outcome = pickle.loads(data) if data else None  # written by our own child
        except Exception:  # the child died mid-write: reported below from its exit status
            outcome = None
        code = proc.wait()
        if outcome is None:
            how = f"killed by signal {-code}" if code < 0 else f"exit status {code}"
            outcome = ("error", {"rank": rank, "type": "RankDied",
                                 "message": f"local rank process {proc.pid} ended without "
                                            f"reporting ({how})", "collateral": False})
        self.outcomes[rank] = outcome

    def results(self, timeout_s: float) -> list[tuple[int, Any]]:
        """(rank, result) of every child, once they end (within `timeout_s`).

        Raises:
            ChildFailed: a child failed (its error payload), or did not end in time.
        """
        deadline = time.monotonic() + timeout_s
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        out = []
        for rank in sorted(self.procs):
            status, value = self.outcomes.get(rank) or ("error", {
                "rank": rank, "type": "TimeoutError",
                "message": f"local rank {rank} did not finish within {timeout_s:.0f}s of rank "
                           f"{self.first_rank}"})
            if status != "ok":
                raise ChildFailed(value)
            out.append((rank, value))
        return out

    def failures(self, wait_s: float) -> list[dict]:
        """Error payloads of the children that failed, after waiting up to `wait_s` for them to
        end (a rank failing because another one died usually ends just after it)."""
        deadline = time.monotonic() + wait_s
        for reader in self._readers:
            reader.join(max(0.0, deadline - time.monotonic()))
        return [value for rank, (status, value) in sorted(self.outcomes.items()) if status != "ok"]

    def stop(self) -> None:
        """Terminate the children still running and reap them (always called by the task)."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        deadline = time.monotonic() + STOP_GRACE_S
        for proc in self.procs.values():
            try:
                proc.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        for reader in self._readers:
            reader.join(STOP_GRACE_S)


class ChildFailed(RuntimeError):
    """A local rank's failure, with its error payload (rank, type, message, traceback)."""

    def __init__(self, payload: dict) -> None:
        super().__init__(f"rank {payload.get('rank')}: {payload.get('type')}: "
                         f"{payload.get('message')}")
        self.payload = payload


def die_with_parent(parent: int) -> None:
    """SIGKILL this process when its parent (the Spark task's worker) dies (Linux prctl)."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the task's finally still stops us
        return
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def child_main(parent: int) -> int:
    """A local rank process: read the spec, run the rank, write the outcome (module doc)."""
    die_with_parent(parent)
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # prints and native writes go to stderr: stdout carries only the outcome
    spec: ChildSpec = pickle.load(sys.stdin.buffer)
    os.environ.update(spec.env)

    from hovcaffe.distributed.barrier_stage import join_store, leave_group, report_error
    from hovcaffe.distributed.rank import rank_entry

    failure: list[dict] = []
    gpus = [spec.gpu] if spec.gpu is not None else []
    join = functools.partial(join_store, spec.store, spec.rank, spec.size, spec.gpu, spec.timeout_s)
    try:
        task = pickle.loads(spec.task_bytes)  # the driver's own task object (hovcaffe code)
        result = rank_entry(task, join, rank_hint=spec.rank, assigned_devices=lambda: gpus,
                            report_error=functools.partial(report_error, failure))
        outcome: tuple[str, Any] = ("ok", result)
    except BaseException as exc:
        outcome = ("error", failure[0] if failure else {
            "rank": spec.rank, "type": type(exc).__name__, "message": str(exc)[:800]})
    finally:
        leave_group()
    pickle.dump(outcome, out)
    out.close()
    return 0 if outcome[0] == "ok" else 1


if __name__ == "__main__":
    sys.exit(child_main(int(sys.argv[1])))
