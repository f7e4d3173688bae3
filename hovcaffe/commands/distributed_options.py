"""The distributed-training options on the command line: `hovcaffe train` (click) and
`hovcaffe/launch.py` (argparse), both generated from :data:`hovcaffe.options.OPTIONS`.

The flags are :data:`hovcaffe.option_flags.FLAGS` (errors that name an option are rendered with
its :data:`~hovcaffe.option_flags.CLI_NAMES`). Values are checked by
the option's own converter, and every flag defaults to "not given" so that
:meth:`~hovcaffe.options.DistributedOptions.resolve` applies the one precedence rule
(flag > ``$HOVCAFFE_*`` > default). :func:`train_and_report` runs a TrainConfig distributed and
echoes the outcome like the local command does.
"""
from __future__ import annotations

import argparse
import logging
import signal
import sys
from typing import Any, Callable, Mapping

import click

from hovcaffe.option_flags import CLI_NAMES, FLAGS
from hovcaffe.options import OPTIONS, SPECS, DistributedOptions, OptionSpec

def _help(spec: OptionSpec) -> str:
    default = spec.default if spec.default not in (None, False) else None
    parts = [f"{default}"] if default is not None else []
    if spec.env:
        parts.append(f"${spec.env}")
    return spec.help + (f" [default: {' or '.join(reversed(parts))}]" if parts else "")


class _OptionType(click.ParamType):
    """A click type that checks a value with the option's own converter."""

    def __init__(self, spec: OptionSpec) -> None:
        self.spec = spec
        self.name = spec.name

    def convert(self, value: Any, param, ctx) -> Any:
        try:
            return self.spec.convert(value)
        except ValueError as exc:
            self.fail(str(exc), param, ctx)


def click_option(name: str) -> Callable[[Callable], Callable]:
    """One option's click decorator (keyword = the option's name): for commands that share an
    option with `hovcaffe train` (``-remote`` of convert and features) without the others."""
    spec = SPECS[name]
    if spec.switch:
        return click.option(*FLAGS[spec.name], spec.name, is_flag=True, default=None,
                            help=_help(spec))
    metavar = "|".join(spec.choices()) if spec.choices else None
    return click.option(*FLAGS[spec.name], spec.name, type=_OptionType(spec), default=None,
                        metavar=metavar, help=_help(spec))


def click_options(fn: Callable) -> Callable:
    """Add every distributed option to a click command (keyword = the option's name)."""
    for spec in reversed(OPTIONS):
        fn = click_option(spec.name)(fn)
    return fn


def add_argparse_options(parser: argparse.ArgumentParser, helps: Mapping[str, str] = {}) -> None:
    """Add every distributed option to an argparse parser (dest = the option's name)."""
    for spec in OPTIONS:
        text = helps.get(spec.name, _help(spec)).replace("%", "%%")
        if spec.switch:
            parser.add_argument(*FLAGS[spec.name], dest=spec.name, action="store_true",
                                default=None, help=text)
        else:
            parser.add_argument(*FLAGS[spec.name], dest=spec.name, default=None,
                                type=_argparse_type(spec), help=text)


def _argparse_type(spec: OptionSpec) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            return spec.convert(text)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None
    convert.__name__ = spec.name
    return convert


def given_options(values: Mapping[str, Any]) -> dict[str, Any]:
    """The distributed options among a command's parsed values (None: not given)."""
    return {spec.name: values.get(spec.name) for spec in OPTIONS}


def resolve(values: Mapping[str, Any], **settings: Any) -> DistributedOptions:
    """The options of a command line (flag > environment > default); ranks log at INFO with -v."""
    verbose = logging.getLogger("hovcaffe").isEnabledFor(logging.DEBUG)
    settings.setdefault("log_level", logging.INFO if verbose else logging.WARNING)
    return DistributedOptions.resolve(given_options(values), **settings)


def train_and_report(config, options: DistributedOptions, *, metrics_csv: str | None = None,
                     tensorboard_dir: str | None = None, tensorboard: bool = True,
                     progress: bool | None = None, spark=None):
    """Run `config` (a `TrainConfig`) distributed and echo the outcome.

    Returns:
        The `DistributedResult`.

    Exits with 128+signal when rank 0 stopped on a signal; raises DistributedError on failures.
    """
    from hovcaffe.distributed.progress import DriverProgress
    from hovcaffe.distributed.runner import run_distributed

    display = DriverProgress(bar=progress)
    try:
        result = run_distributed(config, options, metrics_csv=metrics_csv,
                                 tensorboard_dir=tensorboard_dir, tensorboard=tensorboard,
                                 on_event=display, spark=spark)
    finally:
        display.close()
    last = result.test_scores.get(result.iterations)
    click.echo(f"trained to iteration {result.iterations} on {options.num_proc} rank(s)"
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

