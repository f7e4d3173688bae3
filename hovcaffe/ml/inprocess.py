"""Fitting in a Spark Connect session: which way ``CaffeEstimator.fit`` trains there.

A Connect session has no classic ``SparkContext``. With one process (``numProc=1``) nothing needs
launching: the estimator has already written the DataFrame's rows as a Parquet dataset on its
executors (``hovcaffe.ml.materialize``, a ``mapInArrow``), and this module runs the same training
loop ``hovcaffe train`` runs, here, reading that dataset, then writes the final ``.caffemodel`` and
the metrics CSV where the distributed runner would. More processes train like in a classic session
(``hovcaffe.ml.runner``), on a launcher that can start through Spark Connect: the torch backend's
barrier stage (``auto`` picks it there; Horovod's launcher needs the SparkContext).
"""
from __future__ import annotations

import logging
import posixpath

from hovcaffe.ml.runner import METRICS_FILE, MODEL_FILE, TrainOutcome, TrainRequest
from hovcaffe.options import DistributedOptions, NamesOptions
from hovcaffe.utils.spark import is_connect

log = logging.getLogger(__name__)


def trains_in_process(spark, options: DistributedOptions) -> bool:
    """Whether a fit in `spark` trains in this process: a Spark Connect session and one rank."""
    return is_connect(spark) and (options.num_proc or 1) == 1


def check_connect_fit(spark, options: DistributedOptions) -> None:
    """Fail before any work when a Spark Connect session is asked to train on several ranks with
    a launcher that cannot start there (``backend='horovod'``).

    Raises:
        OptionError: numProc > 1 with a classic-only backend in a Spark Connect session (one line
            naming Param backend and the torch backend).
    """
    if not is_connect(spark) or (options.num_proc or 1) == 1:
        return
    from hovcaffe.distributed.backend import get_backend
    from hovcaffe.ml.params import PARAM_NAMES

    try:
        get_backend(options, spark=spark)  # a named backend is checked against the session
    except NamesOptions as exc:
        raise exc.spelled(PARAM_NAMES) from None


def train_in_process(request: TrainRequest) -> TrainOutcome:
    """Train `request` in this process (one rank; see :func:`trains_in_process`); returns its files."""
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
