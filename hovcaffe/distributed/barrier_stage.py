"""The rank side of the ``torch`` backend: one rank per task of a Spark barrier stage, or K
(``-devices K``: the task is local rank 0 and starts the others, :mod:`local_ranks`).

The driver (:mod:`hovcaffe.distributed.backends.barrier`) runs
``spark.range(N, numPartitions=N).mapInArrow(stage_function(...), RESULT_SCHEMA, barrier=True)``
in a Spark Connect session, and the same rank code as an RDD barrier stage
(``parallelize(range(N), N).barrier().mapPartitions(stage_function(..., arrow=False))``) in a classic one:
a cold SQL stage costs about 2.3 s more before its first Python worker starts (planning and
code generation in the JVM), and its workers import pyarrow and pandas. In each task
:func:`run_rank_in_task`

1. takes its rank from the partition id and the world size from the barrier's task list (times
   K: global rank = task index x K + local rank; local rank j binds the task's j-th GPU);
2. meets the others. Classic sessions: at the ``torch.distributed`` TCPStore the driver opened
   for the stage (on the driver host, which executors always reach; a free port chosen by the
   OS); each rank writes its machine there and reads the others' (for local ranks). Not
   ``BarrierTaskContext.allGather`` there: in Spark 4.3 every allGather or barrier call takes
   about 1 s (measured 1.00-1.02 s per call on local[2]). Spark Connect, whose client executors
   may not reach: rank 0 opens the store on its task's host and ``allGather`` tells every rank
   where it is;
3. joins the process group over that store: NCCL when Spark gave the task GPUs
   (``TaskContext.resources()['gpu']``) and CUDA works, else Gloo; the store and every collective
   time out (``timeout_s``), so a peer that never comes cannot hang a rank;
4. runs the task through :func:`~hovcaffe.distributed.rank.rank_entry` (same Trainer and hooks as
   every backend) and returns one row per rank: ``rank``, the :class:`RankSummary` as JSON (other
   results pickled in ``payload``), as Arrow (``mapInArrow``) or as a tuple (RDD).

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


def stage_function(task_bytes: bytes, env: dict[str, str], timeout_s: float,
                   store: str | None, local_size: int = 1, *,
                   arrow: bool = True) -> Callable[[Iterator[Any]], Iterator[Any]]:
    """The stage's function (a closure over the pickled task): for ``mapInArrow`` (`arrow`,
    one Arrow batch per rank) or for ``RDD.barrier().mapPartitions`` (one tuple per rank)."""
    to_row = result_batch if arrow else result_row

    def run(items: Iterator[Any]) -> Iterator[Any]:
        for _ in items:  # one item per partition: only the partition id matters
            pass
        for rank, result in run_rank_in_task(task_bytes, env, timeout_s, store, local_size):
            yield to_row(rank, result)

    return run


def run_rank_in_task(task_bytes: bytes, env: dict[str, str], timeout_s: float,
                     store: str | None, local_size: int = 1) -> list[tuple[int, Any]]:
    """Run this task's ranks (see the module doc); returns (rank, result) of each, in order.

    `store` is the driver's rendezvous TCPStore, ``host:port`` (None: rank 0 opens one).
    `local_size` K: ranks per task (``-devices``); this process is global rank
    ``task_index * K`` and :class:`~hovcaffe.distributed.local_ranks.LocalRanks` starts the others.
    """
    from pyspark import BarrierTaskContext

    context = BarrierTaskContext.get()
    task_index, tasks = context.partitionId(), len(context.getTaskInfos())
    rank, size = task_index * local_size, tasks * local_size
    saved_env = dict(os.environ)
    os.environ.update(env)
    reset_event_sink()
    children = None
    try:
        task: RankTask = pickle.loads(task_bytes)  # the driver's own task object (hovcaffe code)
        gpus = task_gpus(context)
        if local_size > 1:
            from hovcaffe.distributed.local_ranks import LocalRanks, gpu_for_local_rank

            gpu = gpu_for_local_rank(gpus, 0, local_size)  # fewer GPUs than ranks: fail here
            children = LocalRanks(task_bytes, env, timeout_s, rank, size, local_size, gpus)
        else:
            gpu = gpus[0] if gpus else None
        join = functools.partial(join_group, context, rank, size, gpu, timeout_s, store, children)
        failure: list[dict] = []
        try:
            result = rank_entry(task, join, rank_hint=rank,
                                assigned_devices=lambda: [gpu] if gpu is not None else [],
                                report_error=functools.partial(report_error, failure))
            return [(rank, result), *(children.results(timeout_s) if children else [])]
        except BaseException as exc:
            payload = failure[0] if failure else {
                "rank": rank, "type": type(exc).__name__, "message": str(exc)[:800]}
            payload = _first_cause(payload, exc, children)
            raise RankFailed(ERROR_MARK + json.dumps(payload)) from None
    finally:
        leave_group()
        if children is not None:
            children.stop()
        os.environ.clear()
        os.environ.update(saved_env)
        reset_event_sink()


def _first_cause(payload: dict, exc: BaseException, children) -> dict:
    """The error to name for this task: a local rank's own failure when this rank only failed
    because a peer went away (e.g. a child rank died mid-allreduce)."""
    from hovcaffe.distributed.backends.barrier import _rank_error, is_collateral
    from hovcaffe.distributed.local_ranks import ChildFailed

    if isinstance(exc, ChildFailed):
        return exc.payload
    if children is None or not is_collateral(_rank_error(payload)):
        return payload
    own = [p for p in children.failures(wait_s=5.0) if not is_collateral(_rank_error(p))]
    return own[0] if own else payload


def report_error(box: list, rank: int, exc: BaseException, traceback_text: str) -> None:
    """Keep a rank's fatal exception in `box` and send it to the driver (``rank_error``)."""
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


def task_host(context, task_index: int) -> str:
    """The address this task's executor is reached at (127.0.0.1 for local masters)."""
    address = context.getTaskInfos()[task_index].address or ""
    host = address.rsplit(":", 1)[0].strip("[]") if address else ""
    return host or os.environ.get("SPARK_LOCAL_IP") or "127.0.0.1"


def join_group(context, rank: int, size: int, gpu: str | None, timeout_s: float,
               store_address: str | None, children=None) -> TorchCollectives:
    """Meet the other ranks (at the driver's store, else through ``allGather``), start this
    task's local ranks there (`children`, ``-devices K``) and join the job's process group;
    this rank's collectives."""
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    host = task_host(context, context.partitionId())  # the task's, whatever its local ranks
    if _is_loopback(host):
        os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")  # loopback only, as Spark is told
    store = None
    if not store_address:  # Spark Connect: the client may be out of the executors' reach
        mine = {}
        if rank == 0:  # rank 0 hosts the store; allGather tells every task where it is
            store = dist.TCPStore(host, 0, size, is_master=True, timeout=timeout,
                                  wait_for_workers=False)
            mine["store"] = f"{host}:{store.port}"
        everyone = [json.loads(m) for m in context.allGather(json.dumps(mine))]
        store_address = everyone[0]["store"]
    if children is not None:  # they join at the same store (environment set above)
        children.start(store_address)
    return join_store(store_address, rank, size, gpu, timeout_s, store)


def join_store(store_address: str, rank: int, size: int, gpu: str | None, timeout_s: float,
               store=None) -> TorchCollectives:
    """Join the job's process group at the TCPStore `store_address` (`store`: this process's
    own, when it hosts it): NCCL on `gpu` when CUDA works, else Gloo. Task ranks and local ranks
    (:mod:`~hovcaffe.distributed.local_ranks`) alike."""
    import torch
    import torch.distributed as dist

    timeout = datetime.timedelta(seconds=timeout_s)
    if store is None:
        store_host, port = store_address.rsplit(":", 1)
        store = dist.TCPStore(store_host, int(port), size, is_master=False, timeout=timeout)
    # Which ranks share this machine (local ranks), through the store: a get waits, within
    # the timeout, for the rank that sets the key.
    store.set(f"hovcaffe/machine/{rank}", socket.gethostname())
    machines = [store.get(f"hovcaffe/machine/{r}").decode() for r in range(size)]
    nccl = gpu is not None and torch.cuda.is_available() and dist.is_nccl_available()
    if nccl:
        torch.cuda.set_device(int(gpu))
    dist.init_process_group("nccl" if nccl else "gloo", store=store, rank=rank, world_size=size,
                            timeout=timeout)
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


def result_row(rank: int, result: Any) -> tuple[int, str | None, bytes | None]:
    """(rank, summary, payload): a RankSummary as JSON, anything else pickled."""
    summary = json.dumps(dataclasses.asdict(result)) if isinstance(result, RankSummary) else None
    return rank, summary, None if summary is not None else pickle.dumps(result)


def result_batch(rank: int, result: Any):
    """:func:`result_row` as one Arrow row (``RESULT_SCHEMA``)."""
    import pyarrow as pa

    rank, summary, payload = result_row(rank, result)
    return pa.RecordBatch.from_arrays(
        [pa.array([rank], pa.int32()), pa.array([summary], pa.string()),
         pa.array([payload], pa.binary())], names=["rank", "summary", "payload"])


def summary_from_json(text: str) -> RankSummary:
    """The typed summary of a result row (JSON turned test-score iterations into strings)."""
    fields = json.loads(text)
    fields["test_scores"] = {int(k): v for k, v in (fields.get("test_scores") or {}).items()}
    return RankSummary(**fields)
