"""What every step type provides, and the registry that maps a spec's `type:` to it.

A step type declares the keys it accepts (a schema), which output names it knows, how to turn
a step into a command line (`plan`), and what to do after the command succeeded (`collect`:
write runner-made outputs, read metrics). The runner owns everything else: locking, state,
staging and publishing outputs, logs.
"""
from __future__ import annotations

import logging
import sys
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

from hovcaffe.jobs.location import StepPlace
from hovcaffe.jobs.schema import Field

_STEP_TYPES: dict[str, "StepType"] = {}


@dataclass
class Plan:
    """A command to run for a step.

    Attributes:
        argv: the full command line.
        cwd: its working directory.
        env: variables added to the job's environment.
        note: one line for the log saying what is special about this attempt (e.g. resuming).
    """

    argv: list[str]
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)
    note: str = ""


@dataclass
class StepContext:
    """Everything a step type may look at while planning and collecting.

    Attributes:
        name: the step's name.
        options: its validated type-specific keys (strings still templated; use `render`).
        render: fills the run's placeholders into a string.
        resolve: renders a string; a relative local path becomes absolute (against the spec's
            folder), a URL with a scheme stays as it is.
        cwd: the step's working directory.
        work_dir: a private folder for this step and run key (kept across attempts).
        attempt: 1 for the first attempt at this run key, then 2, 3, ...
        staged: output name -> where the step must write it (published after the job succeeds).
        output_lines: the command's last output lines (filled while it runs).
        log: the runner's logger.
    """

    name: str
    options: Mapping[str, Any]
    render: Callable[[str], str]
    resolve: Callable[[str], str]
    cwd: Path
    work_dir: Path
    attempt: int
    staged: dict[str, StepPlace]
    output_lines: deque[str] = field(default_factory=lambda: deque(maxlen=5000))
    log: logging.Logger = logging.getLogger("hovcaffe.jobs")


class StepType:
    """Base class of step types; subclasses set the class attributes and override hooks.

    Attributes:
        type_name: the spec's `type:` value.
        summary: one line for docs and `--help`.
        schema: type-specific keys.
        output_keys: output names the runner fills itself (None: any names, which the command
            line must mention as `{outputs.<name>}`).
        arg_keys: keys whose strings form the command line (checked for `{outputs.x}`).
    """

    type_name: str = ""
    summary: str = ""
    schema: Mapping[str, Field] = {}
    output_keys: tuple[str, ...] | None = None
    arg_keys: tuple[str, ...] = ("args",)

    def check(self, options: Mapping[str, Any], outputs: Mapping[str, str],
              error: Callable[[tuple, str], Exception]) -> None:
        """Cross-key checks beyond the schema; raise `error(key_path, message)`."""

    def plan(self, ctx: StepContext) -> Plan | None:
        """The command to run; None when there is nothing left to run (collect still runs)."""
        raise NotImplementedError

    def collect(self, ctx: StepContext) -> dict[str, Any]:
        """After a successful command: write runner-made outputs; return metrics for the summary."""
        return {}


def register_step(cls: type[StepType]) -> type[StepType]:
    """Class decorator: make `cls` available as `type: <cls.type_name>` in specs."""
    if cls.type_name in _STEP_TYPES:
        raise ValueError(f"step type {cls.type_name!r} registered twice")
    _STEP_TYPES[cls.type_name] = cls()
    return cls


def get_step_type(name: str) -> StepType:
    return _STEP_TYPES[name]


def list_step_types() -> list[str]:
    return sorted(_STEP_TYPES)


def hovcaffe_argv(command: str, *args: str) -> list[str]:
    """`hovcaffe <command> ...` run by this very interpreter (no PATH look-up: cron-safe)."""
    return [sys.executable, "-m", "hovcaffe.cli", command, *args]
