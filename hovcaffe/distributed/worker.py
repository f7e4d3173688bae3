"""The training function every rank runs (shipped by reference, see :mod:`rank`).

Each rank builds the same Trainer as a local run, with :class:`HorovodHooks` as its seam. Only
rank 0 loads `-weights` / `-snapshot` (the broadcast gives everyone its state, so the files need
not be readable from every executor), writes snapshots, the metrics CSV and the final model, and
reports progress to the driver.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import tempfile
from typing import Any

from hovcaffe.distributed import outputs
from hovcaffe.distributed.callbacks import EventCallback, FaultCallback, OutputCallback
from hovcaffe.distributed.hooks import HorovodHooks
from hovcaffe.distributed.job import TrainJob
from hovcaffe.distributed.rank import RankContext
from hovcaffe.training.hooks import TrainCallback

log = logging.getLogger(__name__)


def rank_config(ctx: RankContext, job: TrainJob, staging: str | None):
    """This rank's TrainConfig: its device; file inputs on rank 0 only; local snapshot prefix."""
    from hovcaffe.caffe import caffe_pb2

    config = dataclasses.replace(job.config, device=str(ctx.device), handle_signals=False)
    if ctx.rank != 0:
        sp = caffe_pb2.SolverParameter()
        sp.CopyFrom(config.solver)
        sp.ClearField("weights")
        return dataclasses.replace(config, solver=sp, weights=(), resume=None)
    if not job.remote:
        return config
    prefix = os.path.join(staging, os.path.basename(job.prefix))
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


def _callbacks(ctx: RankContext, job: TrainJob, staging: str | None) -> list:
    callbacks: list = [FaultCallback(ctx.faults)]
    if not ctx.is_writer:
        return callbacks
    from hovcaffe.metrics import MetricsCallback

    csv_path, tb_dir = job.metrics_csv, job.tensorboard_dir
    if job.remote and csv_path is None:
        csv_path = os.path.join(staging, os.path.basename(job.prefix) + "_metrics.csv")
    callbacks.append(EventCallback(job.event_interval_s, ctx.startup))
    if csv_path:
        callbacks.append(MetricsCallback(csv_path, tb_dir))
    callbacks.append(OutputCallback(job.mirror_dir, job.model_url, staging or tempfile.gettempdir(),
                                    extra_files=(csv_path,) if job.remote else ()))
    return callbacks


class _Clock(TrainCallback):
    """Training seconds at the end of every iteration (for step times in summaries/benchmarks)."""

    def __init__(self) -> None:
        self.seconds: list[float] = []

    def on_iteration(self, record) -> None:
        if record.lr is not None:
            self.seconds.append(round(record.seconds, 6))


def train_rank(ctx: RankContext, job: TrainJob) -> dict[str, Any]:
    """Train on this rank; returns a summary (rank 0's includes the loss trajectory)."""
    import socket

    from hovcaffe.training.loop import Trainer

    # Where Spark ran this rank (its executor's working directory), before moving to the job's.
    where = f"{socket.gethostname()}:{os.environ.get('HOROVOD_SPARK_WORK_DIR') or os.getcwd()}"
    if job.cwd and os.path.isdir(job.cwd):
        os.chdir(job.cwd)
    staging = tempfile.mkdtemp(prefix="hovcaffe-rank0-") if ctx.is_writer and job.remote else None
    config = rank_config(ctx, job, staging)
    hooks = HorovodHooks(ctx)
    clock = _Clock()
    trainer = Trainer(config, hooks, [clock, *_callbacks(ctx, job, staging)])
    result = trainer.solve()
    checksum = float(sum(p.detach().double().sum().item() for p in trainer.params))
    summary: dict[str, Any] = {"rank": ctx.rank, "size": ctx.size, "iterations": result.iterations,
                               "checksum": checksum, "stopped_by": result.stopped_by,
                               "where": where, "pid": os.getpid(),
                               "iter_seconds": clock.seconds,
                               "allreduce_wait_s": hooks.allreduce_wait_s,
                               "losses": [float(x) for x in result.losses]}
    if ctx.is_writer:
        summary.update(lrs=[float(x) for x in result.lrs],
                       test_scores={int(k): v for k, v in result.test_scores.items()},
                       last_snapshot=result.last_snapshot, seconds=trainer.elapsed())
    return summary
