"""`hovcaffe` command line: a lazy group of subcommands.

Each subcommand lives in `hovcaffe.commands.<name>` as a click command named `cli`, imported only
when it runs, so `hovcaffe inspect` never pays for pyspark or horovod. This module only registers
them and turns hovcaffe's own errors into a one-line message and an exit code (2 for mistakes in
what the user gave, 1 for failures while running) instead of a traceback.
"""
from __future__ import annotations

import importlib
import logging
import sys

import click

from hovcaffe import __version__

# name -> (module, one-line help). The help is repeated here so `hovcaffe --help` imports nothing.
COMMANDS: dict[str, tuple[str, str]] = {
    "train": ("hovcaffe.commands.train", "Train a net from a solver prototxt (like `caffe train`)."),
    "test": ("hovcaffe.commands.test", "Score a trained model: mean of each output blob (like `caffe test`)."),
    "time": ("hovcaffe.commands.time", "Per-layer forward/backward timings (like `caffe time`)."),
    "features": ("hovcaffe.commands.features", "Extract blobs for every sample of a dataset (CaffeOnSpark -features)."),
    "forward": ("hovcaffe.commands.forward", "One forward (and backward) pass on arrays from an .npz file."),
    "inspect": ("hovcaffe.commands.inspect", "Table of layers, blob shapes, parameters and MACs of a net."),
    "upgrade": ("hovcaffe.commands.upgrade", "Rewrite a V0/V1 prototxt or caffemodel in the current format."),
    "export": ("hovcaffe.commands.export", "Export a net to ONNX, TorchScript or .caffemodel."),
    "convert": ("hovcaffe.commands.convert", "Convert LMDB / image lists / HDF5 / MNIST / CIFAR to Parquet."),
    "plot": ("hovcaffe.commands.plot", "Draw loss and test-accuracy curves from a metrics CSV."),
    "job": ("hovcaffe.commands.job", "Run or inspect a scheduled batch job (safe under cron)."),
    "doctor": ("hovcaffe.commands.doctor", "Check the installation: versions, Spark, Horovod allreduce."),
}

log = logging.getLogger("hovcaffe")


class LazyGroup(click.Group):
    """A click group whose subcommands are imported on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        if name not in COMMANDS:
            return None
        return importlib.import_module(COMMANDS[name][0]).cli

    def format_commands(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        # Use the table's help lines: listing must not import every command.
        with formatter.section("Commands"):
            formatter.write_dl([(name, short) for name, (_, short) in COMMANDS.items()])

    def invoke(self, ctx: click.Context):
        try:
            return super().invoke(ctx)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise
        except (Exception, KeyboardInterrupt) as exc:  # one rule for both entry points
            from hovcaffe.option_flags import CLI_NAMES
            from hovcaffe.error_report import handle_error

            ctx.exit(handle_error(exc, CLI_NAMES))


def setup_logging(verbose: int = 0, quiet: bool = False) -> None:
    """hovcaffe's log format on stderr (shared by the CLI and hovcaffe/launch.py)."""
    level = logging.WARNING if quiet else (logging.DEBUG if verbose else logging.INFO)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname).1s %(name)s] %(message)s", "%H:%M:%S"))
    root = logging.getLogger("hovcaffe")
    root.handlers[:] = [handler]
    root.setLevel(level)
    root.propagate = False


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, "--version", prog_name="hovcaffe")
@click.option("-v", "--verbose", count=True, help="More log output (debug level).")
@click.option("-q", "--quiet", is_flag=True, help="Only warnings and errors in the log.")
def main(verbose: int, quiet: bool) -> None:
    """hovcaffe: train Caffe prototxt networks as PyTorch modules, on one machine or on Spark with
    Horovod.

    Options of every command accept Caffe's single-dash spelling (`-solver s.prototxt`) as well as
    the GNU one (`--solver s.prototxt`). Exit codes: 0 success, 1 runtime failure, 2 bad input or
    usage, 3 a batch job already running.
    """
    setup_logging(verbose, quiet)


if __name__ == "__main__":  # pragma: no cover
    main()
