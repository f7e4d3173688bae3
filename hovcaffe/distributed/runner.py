"""`hovcaffe train -num-proc N` (and launch.py -train): preflight, launch, collect.

    result = run_distributed(config, DistributedOptions(num_proc=2), model="out/lenet.caffemodel")

Order of work on the driver, cheapest check first:

1. the job is made portable (:mod:`job`);
2. cluster preflight: transport available, N task slots (seconds, with the numbers);
3. job preflight: nets valid and buildable, data readable, model folder writable;
4. the effective global batch and lr are logged (batch_size is per rank; base_lr is not scaled);
5. N ranks train (:mod:`worker`), rank 0 streaming progress to the driver;
6. the ranks' summaries are checked for agreement (same iteration count, same weights).
"""
from __future__ import annotations

import dataclasses
import logging
import time
from typing import Any, Callable

from hovcaffe.distributed.job import TrainJob, prepare_job
from hovcaffe.distributed.launcher import HorovodTuning, LaunchOptions, launch, preflight_cluster
from hovcaffe.errors import DistributedError
from hovcaffe.training.loop import TrainConfig

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class DistributedOptions:
    """How to run the ranks (see `LaunchOptions` for the launch-level fields).

    Attributes:
        num_proc: number of ranks.
        master: Spark master URL (None: the active session, spark-submit's, or local[num_proc]).
        connection: auto | gloo | mpi | ethernet | infiniband (None: $HOVCAFFE_CONNECTION or auto).
        nics: network interfaces for Horovod (None: loopback locally, auto otherwise).
        devices: ranks per executor (CaffeOnSpark's -devices), used for the Spark conf of a new
            session (spark.executor.cores) and in messages.
        start_timeout: seconds for all ranks to start.
        threads_per_rank: torch threads per rank.
        tuning: Horovod knobs.
        spark_conf: extra Spark settings for a session hovcaffe starts itself.
        build_check: build the nets on the driver during preflight.
    """

    num_proc: int
    master: str | None = None
    connection: str | None = None
    nics: tuple[str, ...] | None = None
    devices: int = 1
    start_timeout: int = 120
    threads_per_rank: int = 1
    tuning: HorovodTuning = HorovodTuning()
    spark_conf: tuple[tuple[str, str], ...] = ()
    build_check: bool = True
    log_level: int = logging.WARNING

    def launch_options(self) -> LaunchOptions:
        return LaunchOptions(num_proc=self.num_proc, connection=self.connection, nics=self.nics,
                             start_timeout=self.start_timeout, threads=self.threads_per_rank,
                             tuning=self.tuning, log_level=self.log_level)


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
    ranks: list[dict[str, Any]]
    #: seconds from the call to each start-up step of rank 0 (launch, process, imports,
    #: horovod_init, trainer_ready, first_iteration)
    startup: dict[str, float] = dataclasses.field(default_factory=dict)


def get_session(options: DistributedOptions):
    """The Spark session for the run: the active one, spark-submit's, or a new local[N] one."""
    import os

    from pyspark.sql import SparkSession

    from hovcaffe.utils.spark import get_spark  # keeps spark-submit's master when launched by it

    conf = dict(options.spark_conf)
    if options.devices > 1:
        conf.setdefault("spark.executor.cores", str(options.devices))
    master = options.master
    if (master is None and SparkSession.getActiveSession() is None
            and not os.environ.get("PYSPARK_GATEWAY_PORT")):
        master = os.environ.get("HOVCAFFE_SPARK_MASTER", f"local[{options.num_proc}]")
    return get_spark(master, app_name="hovcaffe-train", conf=conf)


def batch_plan(job: TrainJob, world_size: int) -> str:
    """'global batch 128 = 64 per rank x 2 ranks (x iter_size 1), base_lr 0.01 (not scaled)'."""
    from hovcaffe.caffe.data_layer_types import batch_size_of
    from hovcaffe.training.nets import train_net_spec
    from hovcaffe.caffe.state import filter_net

    sp = job.config.solver
    spec = train_net_spec(sp, job.config.solver_path)
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


def run_distributed(config: TrainConfig, options: DistributedOptions, *, model: str | None = None,
                    resume_latest: bool = False, metrics_csv: str | None = None,
                    tensorboard_dir: str | None = None, tensorboard: bool = True,
                    on_event: Callable[[dict], None] | None = None, spark=None) -> DistributedResult:
    """Train `config` on `options.num_proc` Horovod ranks inside Spark tasks.

    Args:
        config: the same settings a local `hovcaffe train` uses.
        options: ranks, transport, Spark.
        model: CaffeOnSpark's -model (final weights URL; snapshots in its folder).
        resume_latest: continue from the last complete snapshot (-resume).
        metrics_csv / tensorboard_dir / tensorboard: rank 0's logs (default next to snapshots).
        on_event: progress handler (e.g. :class:`~hovcaffe.distributed.progress.DriverProgress`).
        spark: an existing SparkSession to use.

    Raises:
        DistributedError: a preflight or rank failure (the message names the rank and its error).
        UserInputError subclasses: invalid nets, unreadable data, unwritable model folder.
    """
    t0, wall0 = time.monotonic(), time.time()
    startup: dict[str, float] = {}
    job = prepare_job(config, model=model, resume_latest=resume_latest, metrics_csv=metrics_csv,
                      tensorboard_dir=tensorboard_dir, tensorboard=tensorboard)
    spark = spark or get_session(options)
    launch_options = options.launch_options()
    slots = preflight_cluster(spark, launch_options)
    log.info("preflight: %d rank(s) fit (%s)", options.num_proc, slots)
    for line in _job_checks(job, options):
        log.info("preflight: %s", line)
    log.info("%s", batch_plan(job, options.num_proc))
    if job.resumed_from:
        log.info("resuming from %s", job.resumed_from)

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
    ranks = launch(train_rank, (job,), launch_options, spark=spark, on_event=handle, preflight=False)
    result = _collect(job, ranks, first_iter[0] if first_iter else None, time.monotonic() - t0)
    result.startup = dict(sorted(startup.items(), key=lambda kv: kv[1]))
    log.debug("start-up of rank 0 (seconds since the call): %s", result.startup)
    return result


def _job_checks(job: TrainJob, options: DistributedOptions) -> list[str]:
    from hovcaffe.distributed.preflight import check_job

    return check_job(job, options.num_proc, build_nets=options.build_check)


def _collect(job: TrainJob, ranks: list[dict], first_iter: float | None, wall: float) -> DistributedResult:
    for r in sorted(ranks, key=lambda r: r.get("rank", -1)):
        log.info("rank %s ran in %s (pid %s)", r.get("rank"), r.get("where"), r.get("pid"))
    root = next((r for r in ranks if r.get("rank") == 0), None)
    if root is None:
        raise DistributedError("no result came back from rank 0")
    iterations = {r["iterations"] for r in ranks}
    if len(iterations) != 1:
        raise DistributedError(f"ranks ended at different iterations: "
                               f"{ {r['rank']: r['iterations'] for r in ranks} }")
    sums = [r["checksum"] for r in ranks]
    spread = max(sums) - min(sums)
    if spread > 1e-6 * max(1.0, max(abs(s) for s in sums)):
        log.warning("ranks finished with different weights (checksums %s); the run was not in sync",
                    sums)
    last = root.get("last_snapshot")
    if last and job.remote:
        from hovcaffe.distributed import outputs

        last = {k: outputs.join(job.mirror_dir, v.rsplit("/", 1)[-1]) for k, v in last.items()}
    per_rank = [r.get("losses", []) for r in sorted(ranks, key=lambda r: r["rank"])]
    mean_losses = [float(sum(vals) / len(vals)) for vals in zip(*per_rank)] if per_rank else []
    return DistributedResult(
        iterations=root["iterations"], losses=root.get("losses", []), mean_losses=mean_losses,
        lrs=root.get("lrs", []),
        test_scores=root.get("test_scores", {}), last_snapshot=last, model_url=job.model_url,
        metrics_csv=job.metrics_csv, prefix=job.prefix, stopped_by=root.get("stopped_by"),
        seconds_to_first_iteration=first_iter, wall_seconds=wall, ranks=ranks)
