"""`hovcaffe train`: Caffe's `caffe train` on one machine."""
from __future__ import annotations

import logging
import signal
import sys

import click

from hovcaffe.commands import distributed_options
from hovcaffe.commands.runtime_options import fast_option, precision_options
from hovcaffe.utils.paths import PATH_RULE_HELP

EFFECTS = click.Choice(["snapshot", "stop", "none"])


@click.command(name="train", help=f"""Train a net from a solver prototxt, like `caffe train`.

\b
  hovcaffe train -solver solver.prototxt                       # from the fillers
  hovcaffe train -solver solver.prototxt -weights init.caffemodel   # fine-tune (copy by layer name)
  hovcaffe train -solver solver.prototxt -snapshot snap_iter_20.solverstate   # resume

Snapshots go to <snapshot_prefix>_iter_<N>.caffemodel/.solverstate (Caffe's formats) plus a
.hovcaffe.json sidecar that makes a resume continue exactly (data position, RNG, loss window).
A metrics CSV (iteration, lr, loss, smoothed_loss, seconds, test/<output>) is written as training
runs; TensorBoard events too when tensorboard is installed.

{PATH_RULE_HELP}

Signals: SIGINT/SIGTERM act per -sigint_effect, SIGHUP per -sighup_effect: `snapshot` (write one and
go on), `stop` (end after this iteration with a snapshot, exit code 128+signal) or `none`.""")
@click.option("-solver", "--solver", "solver_path", required=True,
              type=click.Path(dir_okay=False), help="The solver prototxt.")
@click.option("-weights", "--weights", multiple=True,
              help="weights to start from, comma-separated or repeated (fine-tuning): .caffemodel, "
                   ".caffemodel.h5, .safetensors or a torch state_dict .pt/.pth; with "
                   "-snapshot, the weights of the snapshot.")
@click.option("-snapshot", "--snapshot", "snapshot_state", type=click.Path(dir_okay=False),
              help="A .solverstate to resume from.")
@click.option("-iterations", "--iterations", type=click.IntRange(min=0),
              help="Override max_iter (total updates counted from 0).")
@click.option("--metrics-csv", type=click.Path(dir_okay=False),
              help="Metrics CSV path [default: <snapshot_prefix>_metrics.csv].")
@click.option("--tensorboard", "tensorboard_dir", type=click.Path(file_okay=False),
              help="TensorBoard log folder [default: <snapshot_prefix>_tensorboard].")
@click.option("--no-tensorboard", is_flag=True, help="Do not write TensorBoard events.")
@click.option("--snapshot-prefix", help="Override the solver's snapshot_prefix.")
@click.option("--solver-set", "solver_sets", multiple=True, metavar="PROTOTXT",
              help="Solver fields that replace the file's, in prototxt syntax, e.g. "
                   "--solver-set 'test_interval: 100 test_iter: 10' (repeatable).")
@click.option("-input", "--train-data", "train_data",
              help="Replace the source of the train net's data layers (CaffeOnSpark's -input): for "
              "HDF5Data a list file or .h5; for other data layers an .h5 file or list of .h5 files "
              "(the layer's batch size, scale and mean_value apply) or that layer type's own URL.")
@click.option("--test-data", help="Like --train-data, for the test nets.")
@click.option("--input-data", type=click.Path(dir_okay=False),
              help=".npz with one array per Input blob (named like the blob), used in batches "
                   "of the Input shape's first dimension.")
@click.option("-sigint_effect", "--sigint-effect", type=EFFECTS, default="stop",
              show_default=True, help="What SIGINT and SIGTERM do.")
@click.option("-sighup_effect", "--sighup-effect", type=EFFECTS, default="snapshot",
              show_default=True, help="What SIGHUP does.")
@click.option("--device", default="cpu", show_default=True, help="torch device, e.g. cuda:0.")
@click.option("--no-progress", is_flag=True, help="No progress bar (also off when stderr is not "
              "a terminal).")
@fast_option
@precision_options(amp=True)
@distributed_options.click_options
def cli(solver_path, weights, snapshot_state, iterations, metrics_csv, tensorboard_dir, no_tensorboard,
        snapshot_prefix, solver_sets, train_data, test_data, input_data, sigint_effect,
        sighup_effect, device, no_progress, fast, tf32, amp, num_proc, **distributed) -> None:
    from hovcaffe.caffe.io import read_solver
    from hovcaffe.metrics import MetricsCallback
    from hovcaffe.runtime.precision import Precision
    from hovcaffe.training.loop import TrainConfig, Trainer

    solver = apply_solver_overrides(read_solver(solver_path), solver_sets)
    config = TrainConfig(
        solver=solver, solver_path=solver_path, weights=weights, resume=snapshot_state,
        max_iter=iterations, snapshot_prefix=snapshot_prefix, train_data=train_data,
        test_data=test_data, input_data=input_data, device=device,
        sigint_effect=sigint_effect, sighup_effect=sighup_effect, fast=fast,
        precision=Precision(tf32=tf32, amp=amp))
    flags = distributed_options.CLI_NAMES
    spark_only = [flags[k] for k in ("master", "remote", "nics", "model", "resume") if distributed.get(k)]
    if spark_only and not num_proc:
        raise click.UsageError(f"{', '.join(spark_only)}: distributed-training option(s); add "
                               f"{flags['num_proc']} N (a local run resumes with -snapshot STATE)")
    if num_proc:  # N ranks (hovcaffe.distributed); same config, same loop
        options = distributed_options.resolve({"num_proc": num_proc, **distributed})
        distributed_options.train_and_report(
            config, options, metrics_csv=metrics_csv, tensorboard_dir=tensorboard_dir,
            tensorboard=not no_tensorboard, progress=False if no_progress else None)
        return
    trainer = Trainer(config)
    for w, report in trainer.weight_reports:
        click.echo(f"weights {w}: {_describe(report)}", err=True)
    csv_path = metrics_csv or f"{trainer.prefix}_metrics.csv"
    tb_dir = None if no_tensorboard else (tensorboard_dir or f"{trainer.prefix}_tensorboard")
    callbacks = [MetricsCallback(csv_path, tb_dir)]
    if not no_progress and sys.stderr.isatty():
        callbacks.append(ProgressCallback())
    trainer.callbacks.extend(callbacks)
    result = trainer.solve()

    last = result.test_scores.get(result.iterations)
    click.echo(f"trained to iteration {result.iterations}"
               + (f", last loss {result.losses[-1]:.6g}" if result.losses else ""))
    if last:
        click.echo("test: " + ", ".join(f"{k} = {v:.6g}" for k, v in last.items()))
    if result.last_snapshot:
        click.echo(f"snapshot: {result.last_snapshot['model']} + {result.last_snapshot['state']}")
    click.echo(f"metrics: {csv_path}")
    if result.stopped_by:
        code = 128 + int(getattr(signal, result.stopped_by, signal.SIGINT))
        click.echo(f"stopped by {result.stopped_by}; resume with -snapshot "
                   f"{result.last_snapshot['state'] if result.last_snapshot else '?'}", err=True)
        sys.exit(code)


def apply_solver_overrides(solver, texts):
    """Replace the solver fields named in each prototxt fragment (repeated fields as a whole)."""
    from hovcaffe.caffe.io import parse_solver

    for text in texts:
        patch = parse_solver(text, source="--solver-set")
        for field, _ in patch.ListFields():
            solver.ClearField(field.name)
        solver.MergeFrom(patch)
    return solver


def _describe(report) -> str:
    parts = []
    for field in ("copied", "skipped", "missing", "mismatched"):
        items = list(getattr(report, field, []) or [])
        if items:
            shown = ", ".join(map(str, items[:8])) + (" ..." if len(items) > 8 else "")
            parts.append(f"{field} {len(items)} ({shown})")
    return "; ".join(parts) or "nothing to copy"


class ProgressCallback:
    """Shows training progress on stderr; log lines are routed above the bar."""

    def __init__(self) -> None:
        self._bar = None
        self._redirect = None

    def on_start(self, trainer) -> None:
        from tqdm import tqdm
        from tqdm.contrib.logging import logging_redirect_tqdm

        self._redirect = logging_redirect_tqdm(loggers=[logging.getLogger("hovcaffe")])
        self._redirect.__enter__()
        self._bar = tqdm(total=trainer.sp.max_iter, initial=trainer.iter, unit="it",
                         dynamic_ncols=True, leave=True)

    def on_test(self, iteration, scores) -> None:
        pass

    def on_iteration(self, record) -> None:
        if self._bar is None or record.lr is None:
            return
        self._bar.set_postfix(loss=f"{record.smoothed_loss:.4g}", lr=f"{record.lr:.3g}",
                              refresh=False)
        self._bar.update(1)

    def on_snapshot(self, iteration, paths) -> None:
        pass

    def on_end(self, result) -> None:
        if self._bar is not None:
            self._bar.close()
        if self._redirect is not None:
            self._redirect.__exit__(None, None, None)
