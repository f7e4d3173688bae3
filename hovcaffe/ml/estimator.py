"""CaffeEstimator: train a Caffe solver on a DataFrame, as a ``pyspark.ml`` Estimator.

``fit(df)`` runs, in order, and fails at the first problem with a
:class:`~hovcaffe.errors.UserInputError` subclass:

1. Params: ``solver`` and ``modelDir`` set; the solver and nets parse; the TRAIN data layer that
   produces ``inputBlob`` exists (``hovcaffe.ml.fit_run``);
2. columns: ``featuresCol`` / ``labelCol`` exist with accepted types (``hovcaffe.ml.columns``);
   the DataFrame has rows; its first row decodes to the shape the net declares;
3. every row is written, validated, into a Parquet dataset under ``modelDir/datasets/`` (reused
   for the same DataFrame; ``hovcaffe.ml.materialize``), with an optional held-out split;
4. only then: distributed training on ``numProc`` ranks of the ``backend`` (``hovcaffe.ml.runner``), in a
   fresh run folder ``modelDir/runs/<run id>/`` (solver, snapshots, metrics CSV);
5. a :class:`CaffeModel` holding the final weights, the net, the solver and the metrics CSV as
   files, with this estimator's shared Params copied over.
"""
from __future__ import annotations

import dataclasses
import logging
import posixpath
import time
import uuid
from typing import Any

from pyspark.ml import Estimator
from pyspark.ml.util import DefaultParamsWritable, MLReadable

from hovcaffe.data import storage
from hovcaffe.errors import UserInputError
from hovcaffe.ml.artifacts import ModelFiles
from hovcaffe.ml.columns import (ColumnError, EmptyDataFrameError, decode_feature, feature_kind,
                                 format_shape, label_dtype, label_value)
from hovcaffe.ml.deploy import declared_sample_shape, transform_of
from hovcaffe.ml.fit_run import FitRun, Overrides, prepare_fit_run, solver_weights
from hovcaffe.ml.materialize import ColumnPlan, fingerprint, materialize
from hovcaffe.ml.inprocess import check_connect_fit, train_in_process, trains_in_process
from hovcaffe.ml.model import CaffeModel
from hovcaffe.ml.persistence import CheckedParamsReader
from hovcaffe.utils.executors import check_executors
from hovcaffe.options import NamesOptions
from hovcaffe.ml.params import (ESTIMATOR_MIXINS, STAGE_MIXINS, PARAM_NAMES, distributed_options,
                                require_params, set_params)

log = logging.getLogger(__name__)


class CaffeEstimator(Estimator, *STAGE_MIXINS, *ESTIMATOR_MIXINS, MLReadable,
                     DefaultParamsWritable):
    """Fits a Caffe solver on a DataFrame with distributed training on Spark; see the module
    docstring.

    Args:
        **params: any Param of the stage (``solver``, ``modelDir``, ``baseLr``, ...); unknown
            names raise UserInputError listing the valid ones. ``explainParams()`` documents all.

    Persistence stores the Params only: ``solver``/``net``/``weights`` are references to files,
    as any Spark estimator's input paths are; the fitted :class:`CaffeModel` stores its files.
    """

    def __init__(self, **params: Any):
        super().__init__()
        set_params(self, params)

    def setParams(self, **params: Any) -> "CaffeEstimator":
        """Set several Params at once (names checked)."""
        return set_params(self, params)

    # ------------------------------------------------------------------ fit

    def _fit(self, dataset) -> CaffeModel:
        require_params(self, ["solver", "modelDir"], "fit")
        check_executors(dataset.sparkSession)
        options = distributed_options(self)
        check_connect_fit(dataset.sparkSession, options)
        run_dir = self._new_run_dir()
        job = prepare_fit_run(self.getSolver(), run_dir, Overrides(
            base_lr=self.getBaseLr(), max_iter=self.getMaxIter(), batch_size=self.getBatchSize(),
            net=self.getNet(), held_out_test=self.getValidationFraction() > 0),
            input_blob=self.getInputBlob())
        plan = self._column_plan(dataset.schema, job)
        self._check_first_row(dataset, plan)
        train_url, test_url, sample_shape = self._materialize(dataset, plan)

        from hovcaffe.ml.runner import TrainRequest, run_training

        job.write()
        weights = [w for w in [self.getWeights()] if w] or solver_weights(self.getSolver())
        try:
            request = TrainRequest(job=job, train_data=train_url,
                                   test_data=test_url if job.testing else None, weights=weights,
                                   options=options)
            outcome = (train_in_process(request) if trains_in_process(dataset.sparkSession, options)
                       else run_training(request, spark=dataset.sparkSession))
        except NamesOptions as exc:  # the library names options; here they are Params
            raise exc.spelled(PARAM_NAMES) from exc.__cause__
        files = ModelFiles.from_sources(outcome.net_path, outcome.weights_path,
                                        solver_url=job.solver_path, history_url=outcome.metrics_csv)
        model = CaffeModel()
        self._copyValues(model)
        model.setSampleShape(list(sample_shape))
        model._setModelFiles(files)
        log.info("fit done: %s", outcome.weights_path)
        return model

    @classmethod
    def read(cls) -> CheckedParamsReader:
        """A reader that refuses a folder saved for another class before importing anything."""
        return CheckedParamsReader(cls)

    def _new_run_dir(self) -> str:
        root = storage.resolve(self.getModelDir())
        if not root.is_local:
            raise UserInputError(f"modelDir {self.getModelDir()!r}: fit needs a folder on a filesystem "
                                 "this driver and the executors share (a local path or NFS mount)")
        stamp = time.strftime("%Y%m%d-%H%M%S")
        return posixpath.join(root.path, "runs", f"{stamp}-{uuid.uuid4().hex[:8]}")

    def _column_plan(self, schema, job: FitRun) -> ColumnPlan:
        kind = feature_kind(schema, self.getFeaturesCol())
        ldtype = label_dtype(schema, self.getLabelCol())
        layer = job.train_layer
        shape = tuple(self.getSampleShape()) or declared_sample_shape(layer, self.getInputBlob())
        if shape is None and kind in ("array", "vector"):
            raise ColumnError(f"features column {self.getFeaturesCol()!r} holds flat {kind}s and "
                              f"the net's {layer.type} layer {layer.name!r} does not declare the "
                              "image shape; set sampleShape=[C, H, W]")
        transform = transform_of(layer, self.getInputBlob())
        color = "color" if transform.force_color else "gray" if transform.force_gray else "unchanged"
        return ColumnPlan(self.getFeaturesCol(), kind, self.getInputBlob(),
                          tuple(shape) if shape else None, color, self.getLabelCol(),
                          self.getLabelBlob(), ldtype)

    def _check_first_row(self, dataset, plan: ColumnPlan) -> None:
        """Fail in a second, before writing anything, for an empty DataFrame or a wrong first row."""
        first = dataset.select(plan.features_col, plan.label_col).head(1)
        if not first:
            raise EmptyDataFrameError("fit was given a DataFrame without rows; nothing to train on")
        row = first[0]
        try:
            image = decode_feature(plan.feature_kind, row[0], plan.sample_shape, plan.color)
        except ValueError as exc:
            raise ColumnError(f"features column {plan.features_col!r}, first row: {exc}") from None
        try:
            label_value(row[1], plan.label_dtype)
        except ValueError as exc:
            raise ColumnError(f"label column {plan.label_col!r}, first row: {exc}") from None
        log.info("first row: %s %s", plan.features_col, format_shape(image.shape))

    def _materialize(self, dataset, plan: ColumnPlan) -> tuple[str, str | None, tuple[int, ...]]:
        fraction, seed = self.getValidationFraction(), self.getSeed()
        parts = [dataset] if fraction == 0 else dataset.randomSplit([1 - fraction, fraction], seed)
        count = parts[0].count()
        if count == 0:
            raise EmptyDataFrameError(f"no training rows are left after holding out "
                                      f"validationFraction={fraction} of the DataFrame")
        key = fingerprint(parts[0], plan, count, {"validation": [fraction, seed]})
        root = posixpath.join(self.getModelDir(), "datasets", key[:24])
        info = materialize(parts[0], plan, posixpath.join(root, "train"), key)
        shape = tuple(int(d) for d in info.field(plan.input_blob).shape)
        test_url = None
        if fraction > 0:
            n_test = parts[1].count()
            if n_test == 0:
                raise EmptyDataFrameError(f"validationFraction={fraction} held out no rows of "
                                          f"this {count}-row DataFrame; use a larger fraction")
            test_key = fingerprint(parts[1], plan, n_test, {"validation": [fraction, seed], "part": 1})
            test_url = posixpath.join(root, "test")
            materialize(parts[1], dataclasses.replace(plan, sample_shape=shape), test_url, test_key)
        return posixpath.join(root, "train"), test_url, shape
