"""The rank side of the ``torch`` backend: one rank per task of a Spark barrier stage.

The driver (:mod:`hovcaffe.distributed.backends.barrier`) runs
``spark.range(N, numPartitions=N).mapInArrow(stage_function(...), RESULT_SCHEMA, barrier=True)``;
the same call works on classic and Spark Connect sessions. In each task :func:`run_barrier_rank`

1. takes its rank from the partition id and the world size from the barrier's task list;
2. meets the others: rank 0 opens a ``torch.distributed`` TCPStore on its task's host (a free
   port chosen by the OS), and ``BarrierTaskContext.allGather`` tells every rank where it is;
3. joins the process group over that store: NCCL when Spark gave the task GPUs
   (``TaskContext.resources()['gpu']``) and CUDA works, else Gloo; the store and every collective
   time out (``timeout_s``), so a peer that never comes cannot hang a rank;
4. runs the task through :func:`~hovcaffe.distributed.rank.rank_entry` (same Trainer and hooks as
   every backend) and returns one Arrow row: ``rank``, the :class:`RankSummary` as JSON (other
   results pickled in ``payload``).

The exception that ends a rank goes to the driver as a ``rank_error`` event (live channel) and
again inside the exception the task raises (marked ``HOVCAFFE-ERROR``), so the driver can name
it even when the channel is unreachable. Barrier semantics then stop the other tasks.

PySpark reuses worker processes: the process group is destroyed and the environment restored at
the end of every task, so the next run in the same worker starts clean.
"""
from __future__ import annotations

import dataclasses
import datetime
import functools
import ipaddress
import json
import os
import pickle
import socket
from typing import Any, Callable, Iterator

from hovcaffe.distributed.backend import RankSummary
from hovcaffe.distributed.protocol import ERROR_MARK, emit_event, reset_event_sink
from hovcaffe.distributed.rank import RankTask, rank_entry
from hovcaffe.distributed.torch_collectives import TorchCollectives

#: the Arrow rows the stage returns, one per rank
RESULT_SCHEMA = "rank int, summary string, payload binary"
#: kind of the progress event that carries a rank's fatal exception
ERROR_KIND = "rank_error"


class RankFailed(RuntimeError):
    """What a failed rank's task raises: ``HOVCAFFE-ERROR {json}`` (rank, type, message, traceback)."""


def stage_function(task_bytes: bytes, env: dict[str, str],
                   timeout_s: float) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The ``mapInArrow`` function of the stage (a closure over the pickled task)."""

    def run(batches: Iterator[Any]) -> Iterator[Any]:
        for _ in batches:  # one row per partition: only the partition id matters
            pass
        yield run_barrier_rank(task_bytes, env, timeout_s)

    return run


def run_barrier_rank(task_bytes: bytes, env: dict[str, str], timeout_s: float):
    """Run this task's rank (see the module doc); returns its Arrow record batch."""
    from pyspark import BarrierTaskContext

    context = BarrierTaskContext.get()
    rank, size = context.partitionId(), len(context.getTaskInfos())
    saved_env = dict(os.environ)
    os.environ.update(env)
    reset_event_sink()
    try:
        task: RankTask = pickle.loads(task_bytes)  # the driver's own task object (hovcaffe code)
        gpus = task_gpus(context)
        join = functools.partial(join_group, context, rank, size, gpus, timeout_s)
        failure: list[dict] = []
        try:
            result = rank_entry(task, join, rank_hint=rank, assigned_devices=lambda: gpus,
                                report_error=functools.partial(_report_error, failure))
        except BaseException as exc:
            raise RankFailed(ERROR_MARK + json.dumps(failure[0] if failure else {
                "rank": rank, "type": type(exc).__name__, "message": str(exc)[:800]})) from None
        return result_batch(rank, result)
    finally:
        leave_group()
        os.environ.clear()
        os.environ.update(saved_env)
        reset_event_sink()


def _report_error(box: list, rank: int, exc: BaseException, traceback_text: str) -> None:
    payload = {"rank": rank, "type": type(exc).__name__, "message": str(exc)[:800],
               "traceback": traceback_text[-2000:]}
    box.append(payload)
    emit_event(ERROR_KIND, **payload)


def task_gpus(context) -> list[str]:
    """The GPU addresses Spark assigned to this task (empty: none)."""
    try:
        gpus = context.resources().get("gpu")
    except Exception:  # resources unsupported by this Spark
        return []
    return list(gpus.addresses) if gpus is not None else []


def _is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def task_host(context, rank: int) -> str:
    """The address this task's executor is reached at (127.0.0.1 for local masters)."""
    address = context.getTaskInfos()[rank].address or ""
    host = address.rsplit(":", 1)[0].strip("[]") if address else ""
    return host or os.environ.get("SPARK_LOCAL_IP") or "127.0.0.1"


def join_group(context, rank: int, size: int, gpus: list[str], timeout_s: float) -> TorchCollectives:
    """Rendezvous through the barrier and join the job's process group; this rank's collectives."""
    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    host = task_host(context, rank)
    if _is_loopback(host):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only, as Spark is told
    store = None
    mine = {"machine": socket.gethostname()}
    if rank == 0:
        store = dist.TCPStore(host, 0, size, is_master=True, timeout=timeout,
                              wait_for_workers=False)
        mine["store"] = f"{host}:{store.port}"
    everyone = [json.loads(m) for m in context.allGather(json.dumps(mine))]
    if store is None:
        store_host, port = everyone[0]["store"].rsplit(":", 1)
        store = dist.TCPStore(store_host, int(port), size, is_master=False, timeout=timeout)
    nccl = bool(gpus) and torch.cuda.is_available() and dist.is_nccl_available()
    if nccl:
        torch.cuda.set_device(int(gpus[0]))
    dist.init_process_group("nccl" if nccl else "gloo", store=store, rank=rank, world_size=size,
                            timeout=timeout)
    machines = [m["machine"] for m in everyone]
    local_rank = machines[:rank].count(machines[rank])
    cls = DeviceCollectives if nccl else TorchCollectives
    return cls(local_rank=local_rank, local_size=machines.count(machines[rank]))


def leave_group() -> None:
    """Destroy this process's default group, if any (a reused worker may run another rank)."""
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
    except Exception:  # a group broken by a failed peer: nothing left to release
        pass


class DeviceCollectives(TorchCollectives):
    """Collectives over NCCL, which reduces only CUDA tensors: CPU tensors (test scores, flags,
    solver state) travel through this rank's GPU and come back to the CPU."""

    def _on_gpu(self, tensor):
        import torch

        return tensor.to(torch.device("cuda", torch.cuda.current_device()))

    def allreduce_sum(self, tensor, name: str):
        return super().allreduce_sum(self._on_gpu(tensor), name).to(tensor.device)

    def allreduce_max(self, tensor, name: str):
        return super().allreduce_max(self._on_gpu(tensor), name).to(tensor.device)

    def broadcast_tensors(self, tensors, root: int = 0) -> None:
        for key in sorted(tensors):
            tensor = tensors[key]
            moved = self._on_gpu(tensor)
            self._dist.broadcast(moved, src=root)
            if moved is not tensor:
                tensor.copy_(moved)


def result_batch(rank: int, result: Any):
    """One Arrow row for the driver: a RankSummary as JSON, anything else pickled."""
    import pyarrow as pa

    summary = json.dumps(dataclasses.asdict(result)) if isinstance(result, RankSummary) else None
    payload = None if summary is not None else pickle.dumps(result)
    return pa.RecordBatch.from_arrays(
        [pa.array([rank], pa.int32()), pa.array([summary], pa.string()),
         pa.array([payload], pa.binary())], names=["rank", "summary", "payload"])


def summary_from_json(text: str) -> RankSummary:
    """The typed summary of a result row (JSON turned test-score iterations into strings)."""
    fields = json.loads(text)
    fields["test_scores"] = {int(k): v for k, v in (fields.get("test_scores") or {}).items()}
    return RankSummary(**fields)
