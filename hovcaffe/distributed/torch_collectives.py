"""Collectives over a ``torch.distributed`` process group (Gloo on CPU), for backends that start
one: :mod:`hovcaffe.distributed.backends.local` today, a Spark barrier-stage launcher tomorrow.

Gradients are averaged the way Horovod's grouped allreduce does it on CPU: once per update, after
the `iter_size` backward passes, packed into flat buckets (one reduction per bucket), summed and
divided by the number of ranks, before the Caffe optimizer's own step.
"""
from __future__ import annotations

import datetime
import time
from typing import Any, Mapping, Sequence

from hovcaffe.distributed.backend import Collectives

#: largest flat buffer of one gradient reduction (the size DDP buckets by default)
BUCKET_BYTES = 25 * 1024 * 1024
#: how long a rank waits for its peers in a collective before failing (Horovod's stall default)
COLLECTIVE_TIMEOUT_S = 600


def gloo_missing() -> str | None:
    """Why this torch cannot run Gloo process groups, or None when it can."""
    import torch.distributed as dist

    if not dist.is_available() or not dist.is_gloo_available():
        return "this torch was built without torch.distributed Gloo"
    return None


def torch_distributed_summary() -> str:
    """The torch build's version and process-group backends, as doctor prints them."""
    import torch
    import torch.distributed as dist

    nccl = "yes" if dist.is_available() and dist.is_nccl_available() else "no"
    return f"torch {torch.__version__} (gloo yes, nccl {nccl})"


def join_process_group(init_method: str, rank: int, size: int, backend: str = "gloo",
                       timeout_s: float = COLLECTIVE_TIMEOUT_S) -> None:
    """Join the job's process group (blocks until all `size` ranks joined, up to `timeout_s`)."""
    import torch.distributed as dist

    dist.init_process_group(backend, init_method=init_method, rank=rank, world_size=size,
                            timeout=datetime.timedelta(seconds=timeout_s))


def buckets(tensors: Sequence[Any], limit_bytes: int = BUCKET_BYTES) -> list[list[Any]]:
    """`tensors` split, in order, into runs of one dtype and device of at most `limit_bytes`
    (a tensor larger than the limit is a run of its own)."""
    out: list[list[Any]] = []
    size = 0
    for t in tensors:
        nbytes = t.numel() * t.element_size()
        last = out[-1] if out else None
        if (last is None or last[0].dtype != t.dtype or last[0].device != t.device
                or size + nbytes > limit_bytes):
            out.append([t])
            size = nbytes
        else:
            last.append(t)
            size += nbytes
    return out


class TorchCollectives(Collectives):
    """Collectives of this process's default ``torch.distributed`` group (already joined).

    Args:
        local_rank / local_size: this rank's place among the ranks of its machine.
    """

    def __init__(self, local_rank: int | None = None, local_size: int | None = None) -> None:
        import torch.distributed as dist

        self._dist = dist
        self.rank, self.size = dist.get_rank(), dist.get_world_size()
        self.local_rank = self.rank if local_rank is None else local_rank
        self.local_size = self.size if local_size is None else local_size
        self.allreduce_wait_s = 0.0

    # -- gradients -------------------------------------------------------------------------
    def average_(self, tensors: Sequence[Any]) -> None:
        """Replace each tensor with its mean over the ranks, one reduction per bucket."""
        import torch
        from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

        for bucket in buckets(list(tensors)):
            flat = _flatten_dense_tensors(bucket)
            self._dist.all_reduce(flat, op=self._dist.ReduceOp.SUM)
            flat.div_(self.size)
            for t, reduced in zip(bucket, _unflatten_dense_tensors(flat, bucket)):
                with torch.no_grad():
                    t.copy_(reduced)

    def averaging_optimizer(self, optimizer, named_parameters: Sequence[tuple[str, Any]],
                            passes_per_step: int, groups: int):
        """`optimizer`, its class extended so that ``step()`` first averages the gradients.

        The gradients of all `iter_size` passes are accumulated by autograd, so reducing in
        ``step()`` is one reduction per update whatever `passes_per_step` is. `groups` is
        ignored: the reduction always follows the backward pass (no overlap).
        """
        import torch

        collectives = self
        params = [p for _, p in named_parameters]
        base = type(optimizer)

        def step(self, closure=None):
            grads = []
            for p in params:
                if p.grad is None:  # as Horovod does: a missing gradient counts as zeros
                    p.grad = torch.zeros_like(p)
                grads.append(p.grad)
            start = time.perf_counter()
            collectives.average_(grads)
            collectives.allreduce_wait_s += time.perf_counter() - start
            return base.step(self, closure) if closure is not None else base.step(self)

        optimizer.__class__ = type(base.__name__, (base,), {"step": step,
                                                           "__module__": base.__module__})
        return optimizer

    # -- scores, state, signals ------------------------------------------------------------
    def allreduce_sum(self, tensor, name: str):
        out = tensor.clone()
        self._dist.all_reduce(out, op=self._dist.ReduceOp.SUM)
        return out

    def allreduce_max(self, tensor, name: str):
        out = tensor.clone()
        self._dist.all_reduce(out, op=self._dist.ReduceOp.MAX)
        return out

    def broadcast_tensors(self, tensors: Mapping[str, Any], root: int = 0) -> None:
        for key in sorted(tensors):  # the same order on every rank
            self._dist.broadcast(tensors[key], src=root)

    def broadcast_object(self, obj: Any, root: int = 0, name: str = "object") -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=root)
        return box[0]

    def barrier(self) -> None:
        self._dist.barrier()
