"""`hovcaffe train -num-proc N` (and launch.py -train, the Estimator): preflight, launch, collect.

    options = DistributedOptions.resolve({"num_proc": 2, "model": "out/lenet.caffemodel"})
    result = run_distributed(config, options)

Order of work on the driver, cheapest check first:

1. the run is made portable (:mod:`run_plan`);
2. the backend's preflight (for Horovod on Spark: transport available, N task slots);
3. the plan's preflight: nets valid and buildable, data readable, model folder writable;
4. the effective global batch and lr are logged (batch_size is per rank; base_lr is not scaled);
5. N ranks train (:mod:`worker`) on the backend, rank 0 streaming progress to the driver;
6. the ranks' summaries are checked for agreement (same iteration count, same weights).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Callable

from hovcaffe.distributed.backend import RankSummary, backend_class, get_backend
from hovcaffe.distributed.rank import RankTask
from hovcaffe.distributed.restarts import run_with_restarts
from hovcaffe.distributed.run_plan import RunPlan, plan_run
from hovcaffe.errors import DistributedError, UserInputError
from hovcaffe.options import DistributedOptions
from hovcaffe.training.loop import TrainConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass
class DistributedResult:
    """What a distributed training run produced (numbers from rank 0)."""

    iterations: int
    losses: list[float]          # rank 0's training loss per iteration (what Caffe displays)
    mean_losses: list[float]     # the loss of the global batch: the ranks' losses averaged
    lrs: list[float]
    test_scores: dict[int, dict[str, float]]
    last_snapshot: dict[str, str] | None
    model_url: str | None
    metrics_csv: str | None
    prefix: str
    stopped_by: str | None
    seconds_to_first_iteration: float | None
    wall_seconds: float
    ranks: list[RankSummary]
    #: seconds from the call to each start-up step of rank 0 (launch, process, imports,
    #: collectives_init, trainer_ready, first_iteration)
    startup: dict[str, float] = dataclasses.field(default_factory=dict)


def session_for(options: DistributedOptions):
    """The Spark session for the run: the active one, Spark Connect at `options.remote`,
    spark-submit's, or a new local[N] one."""
    from hovcaffe.utils.spark import get_spark  # keeps spark-submit's master when launched by it

    conf = dict(options.spark_conf)
    if options.devices > 1:
        conf.setdefault("spark.executor.cores", str(options.devices))
    return get_spark(options.master, app_name="hovcaffe-train", conf=conf, remote=options.remote,
                     default_master=f"local[{options.num_proc}]")


def batch_plan(plan: RunPlan, world_size: int) -> str:
    """'global batch 128 = 64 per rank x 2 ranks (x iter_size 1), base_lr 0.01 (not scaled)'."""
    from hovcaffe.caffe.data_layer_types import batch_size_of
    from hovcaffe.caffe.state import filter_net
    from hovcaffe.training.nets import train_net_spec

    sp = plan.config.solver
    spec = train_net_spec(sp, plan.config.solver_path)
    view = filter_net(spec.param, spec.state, spec.source)
    sizes = [batch_size_of(layer) for layer in view.layer if batch_size_of(layer)]
    iter_size = max(1, sp.iter_size)
    if not sizes:
        per = "the Input batch"
        total = "?"
    else:
        per = str(sizes[0])
        total = str(sizes[0] * iter_size * world_size)
    return (f"effective global batch {total} = {per} per rank x {world_size} rank(s) x iter_size "
            f"{iter_size}; lr policy {sp.lr_policy!r} from base_lr {sp.base_lr:g} as written "
            f"(not scaled by the number of ranks)")


def run_distributed(config: TrainConfig, options: DistributedOptions, *,
                    metrics_csv: str | None = None, tensorboard_dir: str | None = None,
                    tensorboard: bool = True, on_event: Callable[[dict], None] | None = None,
                    spark=None) -> DistributedResult:
    """Train `config` on `options.num_proc` ranks of the backend `options.backend` names.

    Args:
        config: the same settings a local `hovcaffe train` uses.
        options: ranks, backend, transport, Spark, -model, -resume.
        metrics_csv / tensorboard_dir / tensorboard: rank 0's logs (default next to snapshots).
        on_event: progress handler (e.g. :class:`~hovcaffe.distributed.progress.DriverProgress`).
        spark: an existing SparkSession to use (backends that run in Spark).

    Raises:
        DistributedError: a preflight or rank failure (the message names the rank and its error).
        UserInputError subclasses: invalid options or nets, unreadable data, unwritable model
            folder, no launcher installed.
    """
    t0, wall0 = time.monotonic(), time.time()
    startup: dict[str, float] = {}
    backend_class(options.backend)  # no launcher installed: say so before anything else
    plan = plan_run(config, model=options.model, resume_latest=options.resume,
                    metrics_csv=metrics_csv, tensorboard_dir=tensorboard_dir,
                    tensorboard=tensorboard)
    # after the plan's checks: for `auto` this may start the session (a Connect one rules Horovod out)
    backend = get_backend(options, spark=spark)
    log.info("preflight: %d rank(s) fit (%s)", options.num_proc, backend.preflight())
    for line in _plan_checks(plan, options):
        log.info("preflight: %s", line)
    log.info("%s", batch_plan(plan, options.num_proc))
    if plan.resumed_from:
        log.info("resuming from %s", plan.resumed_from)

    first_iter: list[float] = []

    def handle(event: dict) -> None:
        if event.get("kind") == "iter" and not first_iter:
            first_iter.append(time.monotonic() - t0)
            startup["first_iteration"] = first_iter[0]
        if event.get("kind") == "start":
            startup.update({k: round(float(v) - wall0, 3) for k, v in (event.get("startup") or {}).items()})
        if on_event is not None:
            on_event(event)

    from hovcaffe.distributed.worker import train_rank

    startup["launch"] = round(time.monotonic() - t0, 3)

    attempts = [0]

    def run_ranks(attempt: RunPlan) -> list[RankSummary]:
        attempts[0] += 1
        if attempts[0] > 1:
            # The failure may have taken executors with it (a lost worker): count the slots
            # again, within the preflight's bounded wait, instead of letting a barrier stage
            # wait for them (Spark retries that for ~10 minutes).
            try:
                log.info("restart preflight: %s", backend.preflight())
            except UserInputError as exc:
                raise DistributedError(f"cannot restart: {exc}") from exc
        task = RankTask(fn=train_rank, args=(attempt,), threads=options.threads_per_rank,
                        log_level=options.log_level)
        return backend.run(task, on_event=handle)

    ranks = run_with_restarts(run_ranks, plan, options.max_restarts)
    result = _collect(plan, ranks, first_iter[0] if first_iter else None, time.monotonic() - t0)
    result.startup = dict(sorted(startup.items(), key=lambda kv: kv[1]))
    log.debug("start-up of rank 0 (seconds since the call): %s", result.startup)
    return result


def _plan_checks(plan: RunPlan, options: DistributedOptions) -> list[str]:
    from hovcaffe.distributed.preflight import check_plan

    return check_plan(plan, options.num_proc, build_nets=options.build_check)


def _collect(plan: RunPlan, ranks: list[RankSummary], first_iter: float | None,
             wall: float) -> DistributedResult:
    ranks = sorted(ranks, key=lambda r: r.rank)
    for r in ranks:
        log.info("rank %s ran in %s (pid %s)", r.rank, r.where, r.pid)
    root = next((r for r in ranks if r.rank == 0), None)
    if root is None:
        raise DistributedError("no result came back from rank 0")
    iterations = {r.iterations for r in ranks}
    if len(iterations) != 1:
        raise DistributedError(f"ranks ended at different iterations: "
                               f"{ {r.rank: r.iterations for r in ranks} }")
    sums = [r.checksum for r in ranks]
    spread = max(sums) - min(sums)
    if spread > 1e-6 * max(1.0, max(abs(s) for s in sums)):
        log.warning("ranks finished with different weights (checksums %s); the run was not in sync",
                    sums)
    last = root.last_snapshot
    if last and plan.remote:
        from hovcaffe.distributed import outputs

        last = {k: outputs.join(plan.mirror_dir, v.rsplit("/", 1)[-1]) for k, v in last.items()}
    per_rank = [r.losses for r in ranks]
    mean_losses = [float(sum(vals) / len(vals)) for vals in zip(*per_rank)] if per_rank else []
    return DistributedResult(
        iterations=root.iterations, losses=root.losses, mean_losses=mean_losses, lrs=root.lrs,
        test_scores=root.test_scores, last_snapshot=last, model_url=plan.model_url,
        metrics_csv=plan.metrics_csv, prefix=plan.prefix, stopped_by=root.stopped_by,
        seconds_to_first_iteration=first_iter, wall_seconds=wall, ranks=ranks)
