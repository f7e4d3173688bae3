"""Command-line glue shared by `hovcaffe train -num-proc N` and `launch.py` (spark-submit).

`distributed_options` adds the distributed flags to a click command; `train_on_spark` runs a
TrainConfig with them and reports like the local command does. Only this module and the
commands echo; the library logs.
"""
from __future__ import annotations

import logging
import signal
import sys
from typing import Any, Callable

import click

from hovcaffe.distributed.transport import CONNECTIONS

log = logging.getLogger(__name__)


def distributed_options(fn: Callable) -> Callable:
    """Click options for distributed training (CaffeOnSpark's spellings plus GNU ones)."""
    options = [
        click.option("-num-proc", "-num_proc", "--num-proc", "num_proc", type=click.IntRange(min=1),
                     help="Train on N Horovod ranks inside N Spark tasks (omit for a local run)."),
        click.option("-master", "--master", help="Spark master URL [default: spark-submit's, "
                     "$HOVCAFFE_SPARK_MASTER, or local[N]]."),
        click.option("-connection", "--connection", type=click.Choice(sorted(CONNECTIONS)),
                     default=None, help="Transport: auto/ethernet (mpi if installed, else gloo), "
                     "gloo (TCP), mpi, infiniband (MPI + UCX, RDMA) [default: $HOVCAFFE_CONNECTION "
                     "or auto]."),
        click.option("-nics", "--nics", help="Comma-separated network interfaces for Horovod "
                     "[default: lo on a local master, else detected]."),
        click.option("-devices", "--devices", type=click.IntRange(min=1), default=1, show_default=True,
                     help="Ranks per executor (CaffeOnSpark's -devices)."),
        click.option("-model", "--model", "model_url",
                     help="Final model URL (.caffemodel); snapshots go to its folder (CaffeOnSpark)."),
        click.option("-resume", "--resume", is_flag=True,
                     help="Continue from the last complete snapshot of the snapshot prefix."),
        click.option("--start-timeout", type=click.IntRange(min=1), default=120, show_default=True,
                     help="Seconds for all ranks to start."),
        click.option("--threads-per-rank", type=click.IntRange(min=1), default=1, show_default=True,
                     help="torch threads per rank."),
    ]
    for option in reversed(options):
        fn = option(fn)
    return fn


def train_on_spark(config, *, num_proc: int, master: str | None = None, connection: str | None = None,
                   nics: str | None = None, devices: int = 1, model_url: str | None = None,
                   resume: bool = False, start_timeout: int = 120, threads_per_rank: int = 1,
                   metrics_csv: str | None = None, tensorboard_dir: str | None = None,
                   tensorboard: bool = True, progress: bool | None = None, spark=None,
                   **_ignored: Any):
    """Run `config` (a `hovcaffe.training.loop.TrainConfig`) distributed and echo the outcome.

    Returns:
        The `DistributedResult`.

    Exits with 128+signal when rank 0 stopped on a signal; raises DistributedError on failures.
    """
    from hovcaffe.distributed.progress import DriverProgress
    from hovcaffe.distributed.runner import DistributedOptions, run_distributed

    verbose = logging.getLogger("hovcaffe").isEnabledFor(logging.DEBUG)
    options = DistributedOptions(
        num_proc=num_proc, master=master, connection=connection,
        nics=tuple(n.strip() for n in nics.split(",") if n.strip()) if nics else None,
        devices=devices, start_timeout=start_timeout, threads_per_rank=threads_per_rank,
        log_level=logging.INFO if verbose else logging.WARNING)
    display = DriverProgress(bar=progress)
    try:
        result = run_distributed(config, options, model=model_url, resume_latest=resume,
                                 metrics_csv=metrics_csv, tensorboard_dir=tensorboard_dir,
                                 tensorboard=tensorboard, on_event=display, spark=spark)
    finally:
        display.close()
    last = result.test_scores.get(result.iterations)
    click.echo(f"trained to iteration {result.iterations} on {num_proc} rank(s)"
               + (f", last loss {result.losses[-1]:.6g}" if result.losses else "")
               + f" in {result.wall_seconds:.1f}s")
    if last:
        click.echo("test: " + ", ".join(f"{k} = {v:.6g}" for k, v in last.items()))
    if result.last_snapshot:
        click.echo(f"snapshot: {result.last_snapshot['model']} + {result.last_snapshot['state']}")
    if result.model_url:
        click.echo(f"model: {result.model_url}")
    if result.metrics_csv:
        click.echo(f"metrics: {result.metrics_csv}")
    if result.stopped_by:
        sys.exit(128 + int(getattr(signal, result.stopped_by, signal.SIGINT)))
    return result
