"""The options of a distributed training run: one table, one object, one precedence rule.

Every entry point - `hovcaffe train`, `hovcaffe/launch.py`, the Estimator, job steps - hands the
values it was given to :meth:`DistributedOptions.resolve` and gets the same frozen object back:

    options = DistributedOptions.resolve({"num_proc": 2, "connection": None})

Precedence, for every option the same: a value given explicitly (flag, Param, step option) >
the option's environment variable (``HOVCAFFE_*``, when it has one) > the option's one default
in :data:`OPTIONS`.

Errors name the *option* (``num_proc``), never a flag: the library does not know who called it.
An entry point that has its own spelling (``-num-proc``, Param ``numProc``) renders the message
with :meth:`NamesOptions.spelled` and its own name table.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import string
from typing import Any, Callable, Mapping

from hovcaffe.errors import DistributedError, HovcaffeError, UserInputError


# ----------------------------------------------------------------------------- errors
class NamesOptions(HovcaffeError):
    """Base of the errors whose message names options (combined with the error's own class).

    The message is a :class:`string.Template`: ``$num_proc`` stands for the option, rendered as
    the option's own name by default, or in an entry point's spelling by :meth:`spelled`.
    Placeholders that are not option names (``$HOVCAFFE_CONNECTION``) are left as they are.
    """

    def __init__(self, template: str, names: Mapping[str, str] | None = None) -> None:
        self.template = template
        self.names = dict(names or {})
        super().__init__(self._render())

    def _render(self) -> str:
        own = {spec.name: spec.name for spec in OPTIONS}
        return string.Template(self.template).safe_substitute({**own, **self.names})

    def spelled(self, names: Mapping[str, str]) -> "NamesOptions":
        """The same error with options named as `names` says (option -> flag or Param)."""
        copy = self.__class__.__new__(self.__class__)
        copy.__dict__.update(self.__dict__)
        copy.names = dict(names)
        copy.args = (copy._render(),)
        copy.__traceback__ = self.__traceback__
        return copy


class OptionError(NamesOptions, UserInputError):
    """An option has a value that is not allowed (exit 2)."""


class ClusterOptionError(NamesOptions, DistributedError):
    """The cluster cannot run what the options ask for (exit 1): too few slots, missing transport."""


# ----------------------------------------------------------------------------- the table
def _positive_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError("expected an integer >= 1")
    try:
        number = int(str(value).strip()) if isinstance(value, str) else int(value)
    except (TypeError, ValueError):
        raise ValueError(f"expected an integer >= 1, got {value!r}") from None
    if number < 1 or (not isinstance(value, str) and number != value):
        raise ValueError(f"expected an integer >= 1, got {value!r}")
    return number


def _count(value: Any) -> int:
    """An integer >= 0 (a number of times)."""
    if isinstance(value, str) and value.strip() == "0" or value == 0 and not isinstance(value, bool):
        return 0
    try:
        return _positive_int(value)
    except ValueError:
        raise ValueError(f"expected an integer >= 0, got {value!r}") from None


def _text(value: Any) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"expected a non-empty string, got {value!r}")
    return value.strip()


def _names(value: Any) -> tuple[str, ...]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, (list, tuple)) or not all(isinstance(v, str) for v in items):
        raise ValueError(f"expected comma-separated names, got {value!r}")
    names = tuple(v.strip() for v in items if v.strip())
    if not names:
        raise ValueError(f"expected comma-separated names, got {value!r}")
    return names


def _flag(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off", ""):
        return False
    raise ValueError(f"expected true or false, got {value!r}")


def _one_of(choices: Callable[[], tuple[str, ...]]) -> Callable[[Any], str]:
    def convert(value: Any) -> str:
        key = str(value).strip().lower() if isinstance(value, str) else value
        allowed = choices()
        if key not in allowed:
            raise ValueError(f"{value!r} is not known; use one of: {', '.join(allowed)}")
        return key
    return convert


def connection_names() -> tuple[str, ...]:
    from hovcaffe.distributed.transport import CONNECTIONS

    return tuple(sorted(CONNECTIONS))


def backend_names() -> tuple[str, ...]:
    from hovcaffe.distributed.backend import backend_names as registered

    return ("auto", *registered())


@dataclasses.dataclass(frozen=True)
class OptionSpec:
    """One option: its name (the attribute of :class:`DistributedOptions`), the one default, the
    environment variable that may set it, its converter (raises ValueError with the reason) and
    one sentence of help shared by the command line and the Estimator."""

    name: str
    default: Any
    convert: Callable[[Any], Any]
    help: str
    env: str | None = None
    choices: Callable[[], tuple[str, ...]] | None = None
    switch: bool = False  # on/off, given without a value on the command line


OPTIONS: tuple[OptionSpec, ...] = (
    OptionSpec("num_proc", None, _positive_int,
               "Number of ranks, one per Spark task (omit on the command line for a local run)."),
    OptionSpec("backend", "auto", _one_of(backend_names),
               "Launcher of the ranks: auto (Horovod when it can be imported, else torch), "
               "horovod (Horovod on Spark), torch (a Spark barrier stage over torch.distributed; "
               "classic or Spark Connect) or local (processes on this machine, no Spark).",
               env="HOVCAFFE_BACKEND", choices=backend_names),
    OptionSpec("master", None, _text,
               "Spark master URL (default: the active session's, spark-submit's, "
               "$HOVCAFFE_SPARK_MASTER, or local[N])."),
    # No env= here: $HOVCAFFE_SPARK_REMOTE is applied by hovcaffe.utils.spark.get_spark, where an
    # explicit master beats it (one place for the session rule).
    OptionSpec("remote", None, _text,
               "Spark Connect URL, sc://host:port (or local[N]: a local Connect server), used "
               "instead of a classic master (default: the active Connect session, else "
               "$HOVCAFFE_SPARK_REMOTE when no master is given)."),
    OptionSpec("connection", "auto", _one_of(connection_names),
               "Transport: auto/ethernet (mpi if installed, else gloo), gloo/tcp (TCP), mpi, "
               "infiniband/rdma (MPI + UCX).", env="HOVCAFFE_CONNECTION", choices=connection_names),
    OptionSpec("nics", None, _names,
               "Comma-separated network interfaces for the ranks (default: lo on a local "
               "master, else detected).", env="HOVCAFFE_NICS"),
    OptionSpec("devices", 1, _positive_int,
               "Ranks per executor (CaffeOnSpark's -devices); torch backend: ranks per Spark task."),
    OptionSpec("start_timeout", 120, _positive_int, "Seconds for all ranks to start.",
               env="HOVCAFFE_START_TIMEOUT"),
    OptionSpec("threads_per_rank", 1, _positive_int, "torch threads per rank.",
               env="HOVCAFFE_THREADS_PER_RANK"),
    OptionSpec("model", None, _text,
               "Final model URL (.caffemodel); snapshots go to its folder (CaffeOnSpark's -model)."),
    OptionSpec("resume", False, _flag,
               "Continue from the last complete snapshot of the snapshot prefix.", switch=True),
    OptionSpec("max_restarts", 0, _count,
               "Times a failed run restarts, whole, from its last complete snapshot.",
               env="HOVCAFFE_MAX_RESTARTS"),
)

SPECS: dict[str, OptionSpec] = {spec.name: spec for spec in OPTIONS}


@dataclasses.dataclass(frozen=True)
class DistributedOptions:
    """How to run the ranks. The first fields are the options of :data:`OPTIONS` (see their
    help there); the rest are settings of the library, not of users.

    Attributes:
        tuning: Horovod knobs (``hovcaffe.distributed.horovod_launcher.HorovodTuning``; None: its defaults).
        spark_conf: extra Spark settings for a session hovcaffe starts itself.
        build_check: build the nets on the driver during preflight.
        log_level: level of the ``hovcaffe`` logger on the ranks.
        slot_wait_s: how long the slot check waits for cluster executors to register.
        env: extra environment for the ranks.
    """

    num_proc: int | None = SPECS["num_proc"].default
    backend: str = SPECS["backend"].default
    master: str | None = SPECS["master"].default
    remote: str | None = SPECS["remote"].default
    connection: str = SPECS["connection"].default
    nics: tuple[str, ...] | None = SPECS["nics"].default
    devices: int = SPECS["devices"].default
    start_timeout: int = SPECS["start_timeout"].default
    threads_per_rank: int = SPECS["threads_per_rank"].default
    model: str | None = SPECS["model"].default
    resume: bool = SPECS["resume"].default
    max_restarts: int = SPECS["max_restarts"].default

    tuning: Any = None
    spark_conf: tuple[tuple[str, str], ...] = ()
    build_check: bool = True
    log_level: int = logging.WARNING
    slot_wait_s: float = 20.0
    env: tuple[tuple[str, str], ...] = ()

    @classmethod
    def resolve(cls, given: Mapping[str, Any], environ: Mapping[str, str] | None = None,
                **settings: Any) -> "DistributedOptions":
        """The options from explicit values (None = not given), the environment and the defaults.

        Args:
            given: option name -> value as the entry point received it.
            environ: the environment (default: os.environ).
            **settings: library settings (tuning, log_level, ...), passed through.

        Raises:
            OptionError: an unknown option name or a value that is not allowed; the message
                names the option (and the environment variable when the value came from there).
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for name in given:
            if name not in SPECS:
                raise OptionError(f"unknown option {name!r}; options: {', '.join(SPECS)}")
        for spec in OPTIONS:
            raw, where = given.get(spec.name), ""
            if raw is None and spec.env and env.get(spec.env, "").strip():
                raw, where = env[spec.env], f" (from ${spec.env})"
            if raw is None:
                values[spec.name] = spec.default
                continue
            try:
                values[spec.name] = spec.convert(raw)
            except ValueError as exc:
                raise OptionError(f"${spec.name}{where}: {exc}") from None
        return cls(**values, **settings)

    def replace(self, **changes: Any) -> "DistributedOptions":
        return dataclasses.replace(self, **changes)
