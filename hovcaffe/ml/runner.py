"""The estimator's seam to distributed training (``hovcaffe.distributed.run_distributed``).

``fit`` prepares a run folder and datasets; this module turns them into the same ``TrainConfig``
``hovcaffe train -num-proc N`` uses (the dataset URLs as ``train_data`` / ``test_data`` source
overrides of the data layers) and collects what rank 0 wrote: the final ``.caffemodel`` and the
metrics CSV. Progress events of rank 0 go to this module's logger (INFO: tests and iterations at
the solver's ``display`` interval).
"""
from __future__ import annotations

import contextlib
import dataclasses
import logging
import posixpath
import threading
from typing import Any, Iterator, Sequence

from hovcaffe.ml.job import TrainingJob

log = logging.getLogger(__name__)

MODEL_FILE = "final.caffemodel"
METRICS_FILE = "metrics.csv"


@dataclasses.dataclass
class TrainRequest:
    """One fit's training, as the estimator hands it over.

    Attributes:
        job: the run folder's solver and nets (``hovcaffe.ml.job``).
        train_data / test_data: dataset URLs replacing the TRAIN / TEST data layers' sources.
        weights: .caffemodel files to fine-tune from.
        num_proc, connection, start_timeout: the launch (Params of the same names).
    """

    job: TrainingJob
    train_data: str
    test_data: str | None
    weights: Sequence[str]
    num_proc: int
    connection: str
    start_timeout: int


@dataclasses.dataclass
class TrainOutcome:
    """Files of a finished run (local paths) and rank 0's numbers."""

    net_path: str
    weights_path: str
    metrics_csv: str
    result: Any


def _log_event(event: dict) -> None:
    kind = event.get("kind")
    if kind == "test":
        log.info("test at iteration %s: %s", event.get("iter"), event.get("scores"))
    elif kind == "iter" and (event.get("display") or event.get("final")):
        log.info("iteration %s: loss %s, lr %s", event.get("iter"), event.get("loss"), event.get("lr"))
    elif kind in ("start", "end", "model"):
        log.info("training %s: %s", kind, {k: v for k, v in event.items() if k != "kind"})


def run_training(request: TrainRequest, *, spark) -> TrainOutcome:
    """Train `request` on Spark; returns the files rank 0 wrote.

    Raises:
        DistributedError: a preflight or rank failure (naming the rank and its error).
        UserInputError subclasses: the nets or data do not pass the runner's preflight.
    """
    from hovcaffe.distributed import DistributedOptions, run_distributed
    from hovcaffe.training.loop import TrainConfig

    job = request.job
    config = TrainConfig(solver=job.solver, solver_path=job.solver_path,
                         weights=tuple(request.weights), train_data=request.train_data,
                         test_data=request.test_data)
    options = DistributedOptions(num_proc=request.num_proc, connection=request.connection,
                                 start_timeout=request.start_timeout)
    model_path = posixpath.join(job.run_dir, MODEL_FILE)
    metrics = posixpath.join(job.run_dir, METRICS_FILE)
    with _signals_off_main_thread():
        result = run_distributed(config, options, model=model_path, metrics_csv=metrics,
                                 tensorboard=False, on_event=_log_event, spark=spark)
    return TrainOutcome(net_path=job.net_path, weights_path=result.model_url or model_path,
                        metrics_csv=result.metrics_csv or metrics, result=result)


class _MainThreadSignals:
    """The ``signal`` module as seen by Horovod's Gloo launcher, minus handler installation off
    the main thread (where Python refuses it)."""

    def __init__(self, module):
        self._module = module

    def __getattr__(self, name: str):
        return getattr(self._module, name)

    def signal(self, signalnum, handler):
        if threading.current_thread() is threading.main_thread():
            return self._module.signal(signalnum, handler)
        return None


_patch_lock = threading.Lock()
_patch_users = 0


@contextlib.contextmanager
def _signals_off_main_thread() -> Iterator[None]:
    """Let ``horovod.spark.run`` start from a worker thread.

    Horovod's Gloo launcher installs SIGINT/SIGTERM handlers, which Python allows only in the main
    thread; ``CrossValidator`` and ``fitMultiple`` call ``fit`` from pool threads. There the
    launcher skips the handlers (Ctrl-C still reaches the main thread, and a failed rank still ends
    the job). The main thread is left untouched.
    """
    global _patch_users
    if threading.current_thread() is threading.main_thread():
        yield
        return
    import horovod.runner.gloo_run as gloo_run

    with _patch_lock:
        if _patch_users == 0:
            gloo_run.signal = _MainThreadSignals(gloo_run.signal)
        _patch_users += 1
    try:
        yield
    finally:
        with _patch_lock:
            _patch_users -= 1
            if _patch_users == 0 and isinstance(gloo_run.signal, _MainThreadSignals):
                gloo_run.signal = gloo_run.signal._module
