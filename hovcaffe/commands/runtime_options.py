"""The run-mode options shared by `train`, `test`, `time` and `forward`: --fast, --tf32, --amp."""
from __future__ import annotations

from typing import Callable

import click

from hovcaffe.runtime.modes import AMP_HELP, FAST_HELP, FAST_MODES, TF32_HELP


def fast_option(command: Callable) -> Callable:
    """--fast auto|on|off (default off, or $HOVCAFFE_FAST)."""
    return click.option("--fast", type=click.Choice(FAST_MODES), default="off",
                        envvar="HOVCAFFE_FAST", show_default=True, help=FAST_HELP)(command)


def precision_options(*, amp: bool) -> Callable[[Callable], Callable]:
    """--tf32, and --amp where the command has a training or timed pass to speed up."""
    def decorate(command: Callable) -> Callable:
        command = click.option("--tf32", is_flag=True, help=TF32_HELP)(command)
        if amp:
            command = click.option("--amp", is_flag=True, help=AMP_HELP)(command)
        return command
    return decorate
