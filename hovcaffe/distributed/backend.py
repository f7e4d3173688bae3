"""The launcher seam: how N ranks are started (a :class:`Backend`) and how they talk
(:class:`Collectives`).

The driver side (:mod:`runner`, ``doctor``, the Estimator) only sees :class:`Backend`:

    backend = get_backend(options, spark=spark)
    backend.preflight()                      # seconds, with numbers, before anything starts
    summaries = backend.run(RankTask(train_rank, (job,)), on_event=progress)

A :class:`~hovcaffe.distributed.rank.RankTask` is picklable: a module-level function and its
arguments; each rank calls ``fn(ctx, *args)`` with a
:class:`~hovcaffe.distributed.rank.RankContext` whose ``collectives`` are the backend's. The
training hooks (:mod:`hooks`) use nothing else, so every backend trains with the same Trainer and
hooks.

Backends live in :mod:`hovcaffe.distributed.backends`, one module each, found by name: a module
there that defines ``BACKEND = SomeBackend`` is a backend, with no table to edit. ``auto`` picks,
among the installed backends that take part in it and can launch in the run's Spark session, the
one with the lowest ``auto_order``: Horovod in a classic session, torch in a Spark Connect one
(Horovod's launcher needs the classic SparkContext, see ``Backend.classic_only``).
"""
from __future__ import annotations

import abc
import dataclasses
import importlib
import pkgutil
from typing import TYPE_CHECKING, Any, Callable, ClassVar, Mapping, Sequence

from hovcaffe.errors import UserInputError

if TYPE_CHECKING:
    import torch

    from hovcaffe.distributed.rank import RankTask
    from hovcaffe.options import DistributedOptions

EventHandler = Callable[[dict], None]

#: how to get a launcher where none is installed
INSTALL_HINT = ("scripts/install.sh builds Horovod with Gloo and MPI "
                "(or: HOROVOD_WITH_GLOO=1 pip install 'horovod[spark]')")


class NoLauncherError(UserInputError):
    """Distributed training was asked for and no backend that could run it is installed."""


@dataclasses.dataclass(frozen=True)
class RankSummary:
    """What one rank's training returns to the driver.

    The trajectory fields (lrs, test_scores, last_snapshot, seconds) are rank 0's only; other
    ranks leave them empty.
    """

    rank: int
    size: int
    iterations: int
    checksum: float              # sum of all learnable values (ranks in sync agree)
    stopped_by: str | None       # signal name when training stopped early
    where: str                   # host:working directory the rank ran in
    pid: int
    iter_seconds: list[float]    # training seconds at the end of every iteration
    allreduce_wait_s: float      # seconds blocked waiting for gradient reductions
    losses: list[float]          # this rank's loss per iteration
    lrs: list[float] = dataclasses.field(default_factory=list)
    test_scores: dict[int, dict[str, float]] = dataclasses.field(default_factory=dict)
    last_snapshot: dict[str, str] | None = None
    seconds: float | None = None


class Collectives(abc.ABC):
    """What a rank's training needs from the other ranks.

    Attributes:
        rank, size, local_rank, local_size: this rank's place in the job.
        allreduce_wait_s: seconds spent blocked on gradient reductions so far.
    """

    rank: int
    size: int
    local_rank: int
    local_size: int
    allreduce_wait_s: float = 0.0

    @abc.abstractmethod
    def averaging_optimizer(self, optimizer, named_parameters: Sequence[tuple[str, Any]],
                            passes_per_step: int, groups: int):
        """`optimizer` with gradients averaged over the ranks inside ``step()``, before the
        optimizer's own update (Caffe's multi-device order).

        Args:
            passes_per_step: backward passes accumulated per update (``iter_size``): one
                reduction per update.
            groups: 1 = one grouped reduction once the backward pass is done, 0 = reductions
                overlapping the backward pass where the backend can (see `HorovodTuning`).
        """

    @abc.abstractmethod
    def allreduce_sum(self, tensor: "torch.Tensor", name: str) -> "torch.Tensor":
        """Element-wise sum over the ranks (a new tensor; `name` identifies the reduction)."""

    @abc.abstractmethod
    def allreduce_max(self, tensor: "torch.Tensor", name: str) -> "torch.Tensor":
        """Element-wise maximum over the ranks."""

    @abc.abstractmethod
    def broadcast_tensors(self, tensors: Mapping[str, "torch.Tensor"], root: int = 0) -> None:
        """Overwrite `tensors` in place with rank `root`'s (keys name them; same keys everywhere)."""

    @abc.abstractmethod
    def broadcast_object(self, obj: Any, root: int = 0, name: str = "object") -> Any:
        """Rank `root`'s `obj` (picklable), on every rank."""

    @abc.abstractmethod
    def barrier(self) -> None:
        """Return when every rank got here."""

    def weighted_mean(self, values: Sequence[float], weights: Sequence[float],
                      name: str) -> list[float]:
        """Per position, the ranks' values averaged with their weights (float64): sum(w*v)/sum(w).

        A position whose weights sum to 0 is 0.0.
        """
        import torch

        n = len(values)
        packed = torch.tensor([v * w for v, w in zip(values, weights)] + list(weights),
                              dtype=torch.float64)
        total = self.allreduce_sum(packed, name).tolist()
        return [float(total[i] / total[n + i]) if total[n + i] else 0.0 for i in range(n)]


class Backend(abc.ABC):
    """Starts N ranks for a task and collects their results.

    Class attributes:
        name: what ``-backend`` / Param ``backend`` / ``$HOVCAFFE_BACKEND`` call it.
        auto_order: its rank among the candidates of ``auto`` (lower first); None: never chosen
            by ``auto``.
        uses_spark: whether it runs the ranks in Spark tasks (the caller's session is used).
        classic_only: whether it launches through the classic SparkContext, which a Spark Connect
            session does not offer (``auto`` passes over it there; naming it is a user error).
        devices_share_a_task: whether ``devices`` K puts K ranks in one Spark task (which then
            needs K cores) instead of K one-rank tasks in an executor.

    Args:
        options: the run's options (num_proc, transport, timeouts, threads, ...).
        spark: the SparkSession to launch in (backends that use Spark start one when None).
    """

    name: ClassVar[str]
    auto_order: ClassVar[int | None] = None
    uses_spark: ClassVar[bool] = True
    classic_only: ClassVar[bool] = False
    devices_share_a_task: ClassVar[bool] = False

    def __init__(self, options: "DistributedOptions", spark=None) -> None:
        self.options = options
        self.spark = spark

    @classmethod
    @abc.abstractmethod
    def missing(cls) -> str | None:
        """Why this backend cannot run here (a missing package), or None when it can."""

    @classmethod
    @abc.abstractmethod
    def installation(cls) -> tuple[bool, str]:
        """(whether it is installed completely, one line: version and built-in transports), for
        ``hovcaffe doctor``."""

    @abc.abstractmethod
    def preflight(self) -> str:
        """Fail in seconds when the ranks cannot start (raises with the numbers).

        Returns:
            One line for the log: what was checked.
        """

    @abc.abstractmethod
    def run(self, task: "RankTask", *, on_event: EventHandler | None = None) -> list[Any]:
        """Run `task` on ``options.num_proc`` ranks; their results in rank order.

        Args:
            on_event: receives the progress events ranks send (from any thread).

        Raises:
            DistributedError: a rank failed (the message names it and its error), or the launch
                did.
        """


def check_num_proc(options: "DistributedOptions") -> int:
    """`options.num_proc`, checked: every backend needs at least one rank.

    Raises:
        OptionError: num_proc is unset or below 1.
    """
    from hovcaffe.options import OptionError

    if options.num_proc is None or options.num_proc < 1:
        raise OptionError(f"$num_proc must be at least 1, got {options.num_proc}")
    return options.num_proc


def registered_backends() -> dict[str, type[Backend]]:
    """name -> class of every backend module in :mod:`hovcaffe.distributed.backends`."""
    from hovcaffe.distributed import backends

    found: dict[str, type[Backend]] = {}
    for info in pkgutil.iter_modules(backends.__path__):
        module = importlib.import_module(f"{backends.__name__}.{info.name}")
        cls = getattr(module, "BACKEND", None)
        if cls is not None:
            found[cls.name] = cls
    return found


def backend_names() -> tuple[str, ...]:
    """The registered backends, sorted."""
    return tuple(sorted(registered_backends()))


def backend_class(name: str) -> type[Backend]:
    """The backend class for `name` (``auto``: the first installed one in ``auto_order``).

    Raises:
        NoLauncherError: ``auto`` found nothing installed, or the named backend is not installed.
        OptionError: an unknown name.
    """
    from hovcaffe.options import OptionError

    classes = registered_backends()
    if name == "auto":
        candidates = sorted((c for c in classes.values() if c.auto_order is not None),
                            key=lambda c: c.auto_order)
        reasons = []
        for cls in candidates:
            why = cls.missing()
            if why is None:
                return cls
            reasons.append(f"{cls.name}: {why}")
        raise NoLauncherError(f"distributed training needs a launcher and none is installed "
                              f"({'; '.join(reasons) or 'no backend takes part in auto'}); "
                              f"{INSTALL_HINT}")
    if name not in classes:
        raise OptionError(f"$backend {name!r} is not known; use one of: auto, "
                          f"{', '.join(sorted(classes))}")
    cls = classes[name]
    why = cls.missing()
    if why is not None:
        raise NoLauncherError(f"the {name} launcher is not installed ({why}); {INSTALL_HINT}")
    return cls


def session_refusal(cls: type[Backend], spark) -> str | None:
    """Why backend `cls` cannot launch in the session `spark` (None: it can)."""
    from hovcaffe.utils.spark import is_connect

    if cls.classic_only and is_connect(spark):
        return (f"the {cls.name} launcher starts its ranks through the classic SparkContext, "
                f"which a Spark Connect session does not offer")
    return None


def check_session(cls: type[Backend], spark) -> None:
    """Raise when backend `cls` cannot launch in `spark`, naming the backend that can.

    Raises:
        OptionError: a classic-only backend was named for a Spark Connect session (one line; the
            caller spells the option as its flag or Param).
    """
    from hovcaffe.options import OptionError

    why = session_refusal(cls, spark)
    if why is not None:
        raise OptionError(f"$backend {cls.name} in a Spark Connect session: {why}; use $backend "
                          f"torch (or auto), which runs the ranks as a barrier stage through "
                          f"Spark Connect, or a classic session")


def get_backend(options: "DistributedOptions", spark=None) -> Backend:
    """The backend `options.backend` names, ready to run (see :func:`backend_class`).

    For ``auto`` the run's session decides too: a backend that needs the classic SparkContext is
    passed over in a Spark Connect session. That session is `spark`, else the one the run will
    use (``runner.session_for``, started here only when a classic-only backend is a candidate;
    the chosen backend keeps it). A named backend is checked against `spark` when it is given,
    else in its preflight.

    Raises:
        NoLauncherError, OptionError: see :func:`backend_class` and :func:`check_session`.
    """
    if options.backend != "auto":
        cls = backend_class(options.backend)
        if spark is not None:
            check_session(cls, spark)
        return cls(options, spark=spark)
    first = backend_class("auto")  # the installed candidates, or NoLauncherError
    if not first.classic_only:
        return first(options, spark=spark)
    if spark is None:
        from hovcaffe.distributed.runner import session_for

        spark = session_for(options)
    candidates = sorted((c for c in registered_backends().values() if c.auto_order is not None),
                        key=lambda c: c.auto_order)
    reasons = []
    for cls in candidates:
        why = cls.missing() or session_refusal(cls, spark)
        if why is None:
            return cls(options, spark=spark)
        reasons.append(f"{cls.name}: {why}")
    raise NoLauncherError(f"no installed launcher can run in this Spark session "
                          f"({'; '.join(reasons)}); {INSTALL_HINT}")
