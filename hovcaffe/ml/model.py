"""CaffeModel: a trained Caffe net as a ``pyspark.ml`` Transformer.

``transform(df)`` keeps every input column and adds ``predictionCol`` (argmax, double),
``probabilityCol`` (DenseVector summing to 1) and one ``array<float>`` column per ``featureBlobs``
entry, computed in TEST phase on the executors in batches through ``mapInArrow``
(``hovcaffe.ml.inference``) with the TEST data layer's ``transform_param``; classic and Spark
Connect sessions alike. A model comes from :meth:`CaffeEstimator.fit`, from
:meth:`CaffeModel.from_files` (any Caffe net + ``.caffemodel``, e.g. a Model Zoo download, which
makes CaffeOnSpark's ``-features`` a Transformer), or from ``CaffeModel.load``/a loaded
``PipelineModel``.
"""
from __future__ import annotations

import dataclasses
import functools
import logging
from typing import Any

from pyspark.ml import Model
from pyspark.ml.util import MLReadable, MLWritable
from pyspark.sql import types as T

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.errors import UserInputError
from hovcaffe.ml.artifacts import HISTORY_FILE, MEAN_FILE, ModelFiles
from hovcaffe.ml.columns import ColumnError, feature_kind
from hovcaffe.ml.deploy import plan_inference
from hovcaffe.ml.history import TrainingHistory
from hovcaffe.ml.inference import (ArtifactWeights, BroadcastWeights, PredictorSpec,
                                   predict_batches)
from hovcaffe.ml.params import STAGE_MIXINS, set_params
from hovcaffe.ml.persistence import FilesStageReader, FilesStageWriter
from hovcaffe.utils.spark import is_connect

log = logging.getLogger(__name__)


class CaffeModel(Model, *STAGE_MIXINS, MLReadable, MLWritable):
    """A Caffe net with trained weights, transforming DataFrames (see the module docstring).

    Args:
        **params: any Param of the stage (``featuresCol``, ``featureBlobs``, ...); unknown names
            raise UserInputError listing the valid ones.
    """

    def __init__(self, **params: Any):
        super().__init__()
        self._files: ModelFiles | None = None
        self._shipped: dict[str, Any] = {}
        set_params(self, params)

    def setParams(self, **params: Any) -> "CaffeModel":
        """Set several Params at once (names checked)."""
        return set_params(self, params)

    # ------------------------------------------------------------------ files and history

    @classmethod
    def from_files(cls, net: str, weights: str, **params: Any) -> "CaffeModel":
        """A model from a net prototxt (train/val or deploy form) and a ``.caffemodel``.

        Args:
            net: path or URL of the prototxt; its TEST data layer's transform_param (and
                mean_file) is what transform applies.
            weights: path or URL of the weights.
            **params: Params of the model; ``sampleShape`` is needed when the net's data layer
                does not declare the image size (a ``Data`` layer over LMDB).
        """
        model = cls(**params)
        model._setModelFiles(ModelFiles.from_sources(net, weights))
        return model

    def _setModelFiles(self, files: ModelFiles) -> "CaffeModel":
        self._files = files
        self._shipped = {}
        return self

    @property
    def modelFiles(self) -> ModelFiles:
        """The model's files (net prototxt, caffemodel, solver, metrics CSV, mean file)."""
        if self._files is None:
            raise UserInputError("this CaffeModel has no weights; make it with CaffeEstimator.fit, "
                              "CaffeModel.from_files or CaffeModel.load")
        return self._files

    @property
    def history(self) -> TrainingHistory | None:
        """Per-iteration loss and test outputs of the fit that made this model (None if unknown)."""
        text = self.modelFiles.text(HISTORY_FILE)
        return None if text is None else TrainingHistory.from_csv(text)

    def saveWeights(self, path: str) -> None:
        """Write the weights as a ``.caffemodel`` file (readable by BVLC Caffe) to a path or URL."""
        from hovcaffe.data import storage

        storage.resolve(path).write_bytes(self.modelFiles.weights)

    # ------------------------------------------------------------------ transform

    def inferencePlan(self, schema: T.StructType | None = None) -> PredictorSpec:
        """What transform will run: the pruned TEST net, blobs, preprocessing (for inspection).

        Args:
            schema: the input DataFrame's schema (decides how the feature column decodes); None
                describes an array/vector column.
        """
        return self._spec(feature_kind(schema, self.getFeaturesCol()) if schema else "array")

    def _spec(self, kind: str) -> PredictorSpec:
        files = self.modelFiles
        plan = plan_inference(files.net_param, input_blob=self.getInputBlob(),
                              sample_shape=self.getSampleShape() or None,
                              batch_size=self.getInferenceBatchSize(),
                              output_blob=self.getOutputBlob(), feature_blobs=self.getFeatureBlobs())
        transform = _transform_spec(plan.transform, files)
        return PredictorSpec(
            net_bytes=plan.net_param.SerializeToString(), input_blob=plan.input_blob,
            score_blob=plan.score_blob, scores_are_probabilities=plan.scores_are_probabilities,
            feature_blobs=plan.feature_blobs, sample_shape=plan.sample_shape, transform=transform,
            feature_kind=kind, color=transform.color or "unchanged",
            batch_size=self.getInferenceBatchSize(), threads=self.getNumThreads(),
            probabilities=bool(self.getProbabilityCol()), fast=self.getFast())

    def _output_schema(self, schema: T.StructType) -> T.StructType:
        from pyspark.ml.linalg import VectorUDT

        new = [(self.getPredictionCol(), T.DoubleType())]
        if self.getProbabilityCol():
            new.append((self.getProbabilityCol(), VectorUDT()))
        new += [(blob, T.ArrayType(T.FloatType(), False)) for blob in self.getFeatureBlobs()]
        names = [n for n, _ in new]
        clash = [n for n in names if n in schema.fieldNames()]
        dupes = {n for n in names if names.count(n) > 1}
        if clash or dupes:
            raise ColumnError(f"transform would add column(s) {', '.join(sorted(set(clash) | dupes))}, "
                              "which the DataFrame already has (or that collide); rename them with "
                              "predictionCol / probabilityCol, or drop the input columns")
        return T.StructType(list(schema.fields) + [T.StructField(n, t, False) for n, t in new])

    def _shipped_weights(self, spark) -> BroadcastWeights | ArtifactWeights:
        """The weights where this session's executors can read them, shipped once per session."""
        key = spark.session_id if is_connect(spark) else spark.sparkContext.applicationId
        shipped = self._shipped.get(key)
        if shipped is None:
            shipped = self._shipped[key] = _ship_weights(spark, self.modelFiles.weights)
        return shipped

    def _transform(self, dataset):
        from hovcaffe.utils.executors import check_executors

        schema = dataset.schema
        spec = self._spec(feature_kind(schema, self.getFeaturesCol()))
        out_schema = self._output_schema(schema)
        spark = dataset.sparkSession
        check_executors(spark)
        fn = functools.partial(predict_batches, spec, self._shipped_weights(spark),
                               self.getFeaturesCol())
        return dataset.mapInArrow(fn, out_schema)

    # ------------------------------------------------------------------ persistence

    def write(self) -> FilesStageWriter:
        """Writer saving the Params as JSON metadata and the model's files next to it."""
        return FilesStageWriter(self)

    @classmethod
    def read(cls) -> FilesStageReader:
        return FilesStageReader(cls)

    def __repr__(self) -> str:
        origin = self._files.origin if self._files is not None else "no weights"
        return f"CaffeModel(uid={self.uid}, files from {origin})"


def _ship_weights(spark, weights: bytes) -> BroadcastWeights | ArtifactWeights:
    """A broadcast on a classic session; on Spark Connect a session artifact named by its hash."""
    if not is_connect(spark):
        broadcast = spark.sparkContext.broadcast(weights)
        return BroadcastWeights(broadcast, broadcast._jbroadcast.id())
    import hashlib
    import os
    import tempfile

    name = f"hovcaffe-weights-{hashlib.sha256(weights).hexdigest()[:32]}.caffemodel"
    with tempfile.TemporaryDirectory(prefix="hovcaffe-artifact-") as folder:
        path = os.path.join(folder, name)
        with open(path, "wb") as fh:
            fh.write(weights)
        spark.addArtifacts(path, file=True)  # uploaded in chunks: no gRPC message size limit
    return ArtifactWeights(name)


def _transform_spec(param: pb.TransformationParameter, files: ModelFiles):
    """The TEST transform of the model: mean from the model's own files, mirror off."""
    from hovcaffe.data.transform import TransformSpec, mean_from_bytes

    bare = pb.TransformationParameter()
    bare.CopyFrom(param)
    bare.ClearField("mean_file")
    spec = TransformSpec.from_proto(bare)
    if param.HasField("mean_file"):
        data = files.files.get(MEAN_FILE)
        if data is None:
            raise ColumnError(f"the net's transform_param names mean_file {param.mean_file!r}, which "
                              "the model's files do not hold")
        spec = dataclasses.replace(spec, mean=mean_from_bytes(data, f"{files.origin}/{MEAN_FILE}"))
    return dataclasses.replace(spec, mirror=False)
