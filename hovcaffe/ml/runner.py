"""The estimator's way to distributed training (``hovcaffe.distributed.run_distributed``).

``fit`` prepares a run folder and datasets; this module turns them into the same ``TrainConfig``
``hovcaffe train -num-proc N`` uses (the dataset URLs as ``train_data`` / ``test_data`` source
overrides of the data layers) and collects what rank 0 wrote: the final ``.caffemodel`` and the
metrics CSV. Progress events of rank 0 go to this module's logger (INFO: tests and iterations at
the solver's ``display`` interval).
"""
from __future__ import annotations

import dataclasses
import logging
import posixpath
from typing import Any, Sequence

from hovcaffe.ml.fit_run import FitRun
from hovcaffe.options import DistributedOptions

log = logging.getLogger(__name__)

MODEL_FILE = "final.caffemodel"
METRICS_FILE = "metrics.csv"


@dataclasses.dataclass
class TrainRequest:
    """One fit's training, as the estimator hands it over.

    Attributes:
        job: the run folder's solver and nets (``hovcaffe.ml.fit_run``).
        train_data / test_data: dataset URLs replacing the TRAIN / TEST data layers' sources.
        weights: .caffemodel files to fine-tune from.
        options: the launch (from the Params numProc, backend, connection, startTimeout).
    """

    job: FitRun
    train_data: str
    test_data: str | None
    weights: Sequence[str]
    options: DistributedOptions


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
    from hovcaffe.distributed import run_distributed
    from hovcaffe.training.loop import TrainConfig

    job = request.job
    config = TrainConfig(solver=job.solver, solver_path=job.solver_path,
                         weights=tuple(request.weights), train_data=request.train_data,
                         test_data=request.test_data)
    model_path = posixpath.join(job.run_dir, MODEL_FILE)
    metrics = posixpath.join(job.run_dir, METRICS_FILE)
    options = request.options.replace(model=model_path)
    result = run_distributed(config, options, metrics_csv=metrics, tensorboard=False,
                             on_event=_log_event, spark=spark)
    return TrainOutcome(net_path=job.net_path, weights_path=result.model_url or model_path,
                        metrics_csv=result.metrics_csv or metrics, result=result)
