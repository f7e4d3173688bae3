"""Fitting in the driver process: how ``CaffeEstimator.fit`` trains in a Spark Connect session.

Horovod's launcher starts its ranks through the classic ``SparkContext``, which Spark Connect does
not offer. With one process (``numProc=1``) nothing needs launching: the estimator has already
written the DataFrame's rows as a Parquet dataset on its executors (``hovcaffe.ml.materialize``,
a ``mapInArrow``), and this module runs the same training loop ``hovcaffe train`` runs, here,
reading that dataset, then writes the final ``.caffemodel`` and the metrics CSV where the
distributed runner would. More processes need a classic session until training runs as a barrier
stage (which Spark Connect can start).
"""
from __future__ import annotations

import logging
import posixpath

from hovcaffe.errors import UserInputError
from hovcaffe.ml.runner import METRICS_FILE, MODEL_FILE, TrainOutcome, TrainRequest
from hovcaffe.options import DistributedOptions
from hovcaffe.utils.spark import is_connect

log = logging.getLogger(__name__)


def check_connect_fit(spark, options: DistributedOptions) -> None:
    """Fail before any work when a Spark Connect session is asked to train on several ranks.

    Raises:
        UserInputError: numProc > 1 in a Spark Connect session (one line, with the alternatives).
    """
    num_proc = options.num_proc or 1
    if is_connect(spark) and num_proc > 1:
        raise UserInputError(f"fit with numProc={num_proc} in a Spark Connect session: training on "
                             "several ranks needs a classic Spark session (Horovod's launcher uses "
                             "the SparkContext); set numProc=1 to train in the driver process, or "
                             "use a classic session")


def train_in_process(request: TrainRequest) -> TrainOutcome:
    """Train `request` in this process (one rank; see :func:`check_connect_fit`); returns its files."""
    from hovcaffe.metrics import MetricsCallback
    from hovcaffe.training.loop import TrainConfig, Trainer
    from hovcaffe.weights import save_caffemodel

    job = request.job
    config = TrainConfig(solver=job.solver, solver_path=job.solver_path,
                         weights=tuple(request.weights), train_data=request.train_data,
                         test_data=request.test_data, handle_signals=False)
    model_path = posixpath.join(job.run_dir, MODEL_FILE)
    metrics = posixpath.join(job.run_dir, METRICS_FILE)
    trainer = Trainer(config, callbacks=[MetricsCallback(metrics)])
    log.info("training in this process (Spark Connect session, numProc=1)")
    result = trainer.solve()
    save_caffemodel(trainer.train_net, model_path)
    return TrainOutcome(net_path=job.net_path, weights_path=model_path, metrics_csv=metrics,
                        result=result)
