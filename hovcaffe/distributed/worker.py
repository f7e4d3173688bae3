"""The training function every rank runs (shipped by reference, see :mod:`rank`).

Each rank builds the same Trainer as a local run, with :class:`DistributedHooks` over its
backend's collectives as its seam. Only
rank 0 loads `-weights` / `-snapshot` (the broadcast gives everyone its state, so the files need
not be readable from every executor), writes snapshots, the metrics CSV and the final model, and
reports progress to the driver.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile

from hovcaffe.distributed import outputs
from hovcaffe.distributed.callbacks import EventCallback, FaultCallback, OutputCallback
from hovcaffe.distributed.backend import RankSummary
from hovcaffe.distributed.hooks import DistributedHooks
from hovcaffe.distributed.rank import RankContext
from hovcaffe.distributed.run_plan import RunPlan
from hovcaffe.training.hooks import TrainCallback

log = logging.getLogger(__name__)


def rank_config(ctx: RankContext, plan: RunPlan, staging: str | None):
    """This rank's TrainConfig: its device; file inputs on rank 0 only; local snapshot prefix."""
    from hovcaffe.caffe import caffe_pb2

    config = dataclasses.replace(plan.config, device=str(ctx.device), handle_signals=False)
    if ctx.rank != 0:
        sp = caffe_pb2.SolverParameter()
        sp.CopyFrom(config.solver)
        sp.ClearField("weights")
        return dataclasses.replace(config, solver=sp, weights=(), resume=None)
    if not plan.remote:
        return config
    prefix = os.path.join(staging, os.path.basename(plan.prefix))
    resume = config.resume
    if resume and not outputs.is_local(resume):
        resume = _stage_snapshot(resume, staging)
    weights = tuple(w if outputs.is_local(w) else outputs.download(w, os.path.join(staging, os.path.basename(w)))
                    for w in config.weights)
    return dataclasses.replace(config, snapshot_prefix=prefix, resume=resume, weights=weights)


def _stage_snapshot(state_url: str, staging: str) -> str:
    """Copy a remote snapshot set (solverstate, caffemodel, sidecar) into `staging`."""
    from hovcaffe.training.checkpoints import SnapshotFiles

    snap = SnapshotFiles.of(state_url) or SnapshotFiles(state_url)
    local_state = outputs.download(state_url, os.path.join(staging, os.path.basename(state_url)))
    model = snap.model
    outputs.download(model, os.path.join(staging, os.path.basename(model)))
    sidecar = snap.sidecar
    try:
        outputs.download(sidecar, os.path.join(staging, os.path.basename(sidecar)))
    except Exception:  # a Caffe-written snapshot has no sidecar
        log.info("no sidecar at %s", sidecar)
    return local_state


def _callbacks(ctx: RankContext, plan: RunPlan, staging: str | None) -> list:
    callbacks: list = [FaultCallback(ctx.faults)]
    if not ctx.is_writer:
        return callbacks
    from hovcaffe.metrics import MetricsCallback

    csv_path, tb_dir = plan.metrics_csv, plan.tensorboard_dir
    if plan.remote and csv_path is None:
        csv_path = os.path.join(staging, os.path.basename(plan.prefix) + "_metrics.csv")
    callbacks.append(EventCallback(plan.event_interval_s, ctx.startup))
    if csv_path:
        callbacks.append(MetricsCallback(csv_path, tb_dir))
    callbacks.append(OutputCallback(plan.mirror_dir, plan.model_url, staging or tempfile.gettempdir(),
                                    extra_files=(csv_path,) if plan.remote else ()))
    return callbacks


class _Clock(TrainCallback):
    """Training seconds at the end of every iteration (for step times in summaries/benchmarks)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_iteration(self, record) -> None:
        if record.lr is not None:
            self.seconds.append(round(record.seconds, 6))


def train_rank(ctx: RankContext, plan: RunPlan) -> RankSummary:
    """Train on this rank; returns its summary (rank 0's includes the trajectory)."""
    import socket

    from hovcaffe.training.loop import Trainer

    # Where the backend ran this rank (e.g. its Spark executor's working directory), before
    # moving to the run's.
    where = f"{socket.gethostname()}:{os.environ.get('HOROVOD_SPARK_WORK_DIR') or os.getcwd()}"
    if plan.cwd and os.path.isdir(plan.cwd):
        os.chdir(plan.cwd)
    staging = tempfile.mkdtemp(prefix="hovcaffe-rank0-") if ctx.is_writer and plan.remote else None
    config = rank_config(ctx, plan, staging)
    hooks = DistributedHooks(ctx.collectives, ctx.device)
    clock = _Clock()
    trainer = Trainer(config, hooks, [clock, *_callbacks(ctx, plan, staging)])
    result = trainer.solve()
    checksum = float(sum(p.detach().double().sum().item() for p in trainer.params))
    common = dict(rank=ctx.rank, size=ctx.size, iterations=result.iterations, checksum=checksum,
                  stopped_by=result.stopped_by, where=where, pid=os.getpid(),
                  iter_seconds=clock.seconds, allreduce_wait_s=hooks.allreduce_wait_s,
                  losses=[float(x) for x in result.losses])
    if not ctx.is_writer:
        return RankSummary(**common)
    return RankSummary(**common, lrs=[float(x) for x in result.lrs],
                       test_scores={int(k): v for k, v in result.test_scores.items()},
                       last_snapshot=result.last_snapshot, seconds=trainer.elapsed())
