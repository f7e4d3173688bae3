"""Batched TEST-phase inference inside Spark tasks (the executor side of ``CaffeModel.transform``).

Transform is a ``DataFrame.mapInArrow``: each task receives Arrow record batches, decodes the
feature column of a whole batch (``hovcaffe.ml.columns.decode_arrow_column``), runs one forward
pass per ``inferenceBatchSize`` rows under ``torch.inference_mode()``, and returns the same batch
with the new columns appended - no row is pickled on the way. The net is built once per Python
worker (:data:`_PREDICTORS` caches it by the weights' key; Spark reuses Python workers), never per
batch. The weights reach the executors as a broadcast on a classic session and as a session
artifact (``SparkSession.addArtifacts``) on Spark Connect, which has no broadcasts.

``transform_param`` is applied as the TEST data layer would (centre crop, mean, scale), except
``mirror``: Caffe mirrors at random even in TEST, which would make predictions change from run to
run, so inference never mirrors.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator

import numpy as np

log = logging.getLogger(__name__)
_PREDICTORS: dict[Any, "Predictor"] = {}
_MAX_CACHED = 4


@dataclasses.dataclass(frozen=True, eq=False)
class PredictorSpec:
    """Everything a task needs besides the weights (small; pickled into the task closure).

    Attributes:
        net_bytes: the inference NetParameter (``hovcaffe.ml.deploy.plan_inference``), serialised.
        input_blob, score_blob, feature_blobs: blob names.
        scores_are_probabilities: the score blob is a Softmax top.
        sample_shape: per-row shape before transform (what rows are decoded to).
        transform: ``hovcaffe.data.transform.TransformSpec`` of the TEST data layer (mirror off).
        feature_kind, color: how the feature column decodes (``hovcaffe.ml.columns``).
        batch_size: rows per forward pass; threads: torch intra-op threads per task.
        probabilities: whether a probability column is produced.
        fast: the forward's fast path, "auto", "on" or "off" (``hovcaffe.runtime.fastpath``).
    """

    net_bytes: bytes
    input_blob: str
    score_blob: str
    scores_are_probabilities: bool
    feature_blobs: tuple[str, ...]
    sample_shape: tuple[int, ...]
    transform: Any
    feature_kind: str
    color: str
    batch_size: int
    threads: int = 1
    probabilities: bool = True
    fast: str = "off"


class Predictor:
    """A TEST-phase CaffeNet with loaded weights, mapping batches of decoded rows to outputs."""

    def __init__(self, spec: PredictorSpec, weights: bytes):
        import torch

        from hovcaffe.caffe import caffe_pb2
        from hovcaffe.caffe.io import parse_caffemodel
        from hovcaffe.data.transform import TEST, Transformer
        from hovcaffe.net import CaffeNet
        from hovcaffe.runtime.process import apply_process_settings
        from hovcaffe.weights import load_caffemodel

        apply_process_settings()  # this executor process runs the net over all its batches
        self.spec = spec
        net_param = caffe_pb2.NetParameter.FromString(spec.net_bytes)
        self.net = CaffeNet(net_param, caffe_pb2.TEST)
        self.net.eval()
        load_caffemodel(self.net, parse_caffemodel(weights, "<broadcast weights>"), strict=True)
        if spec.fast != "off":  # chosen once per executor process, on a batch of zeros
            from hovcaffe.runtime.fastpath import enable_fast_path

            sample = {spec.input_blob: torch.zeros(self.net.blob_shapes[spec.input_blob])}
            enable_fast_path(self.net, spec.fast, sample, training=False)
        self.transformer = Transformer(spec.transform, TEST)
        self._rng = np.random.default_rng(0)  # unused: TEST crops are centred and mirror is off
        self._torch = torch

    def forward(self, images: np.ndarray) -> dict[str, np.ndarray]:
        """Outputs for a batch of decoded rows (N × sample_shape): scores and feature blobs.

        The net was built for ``batch_size`` rows; a shorter last batch is padded with zeros and
        the padding dropped from the outputs (TEST nets treat rows independently).
        """
        spec, torch = self.spec, self._torch
        n = len(images)
        x = self.transformer(images, self._rng)
        if n < spec.batch_size:
            x = torch.cat([x, x.new_zeros((spec.batch_size - n,) + tuple(x.shape[1:]))])
        with torch.inference_mode():
            blobs = self.net(**{spec.input_blob: x})
        names = (spec.score_blob,) + tuple(b for b in spec.feature_blobs if b != spec.score_blob)
        return {b: blobs[b][:n].detach().to(torch.float32).reshape(n, -1).cpu().numpy() for b in names}


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    z = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


@dataclasses.dataclass(frozen=True)
class BroadcastWeights:
    """Weights shipped as a broadcast variable (classic sessions)."""

    broadcast: Any
    broadcast_id: int  # executors' Broadcast objects do not carry their id

    @property
    def key(self) -> Any:
        return ("broadcast", self.broadcast_id)

    def load(self) -> bytes:
        return self.broadcast.value


@dataclasses.dataclass(frozen=True)
class ArtifactWeights:
    """Weights shipped as a session artifact file (Spark Connect); `name` holds their SHA-256."""

    name: str

    @property
    def key(self) -> Any:
        return ("artifact", self.name)

    def load(self) -> bytes:
        from pyspark import SparkFiles

        with open(SparkFiles.get(self.name), "rb") as fh:
            return fh.read()


def get_predictor(spec: PredictorSpec, weights: BroadcastWeights | ArtifactWeights) -> Predictor:
    """The Predictor for these weights and net, built on first use in this Python worker."""
    key = (weights.key, spec.net_bytes)
    predictor = _PREDICTORS.get(key)
    if predictor is None:
        if len(_PREDICTORS) >= _MAX_CACHED:
            _PREDICTORS.pop(next(iter(_PREDICTORS)))
        predictor = _PREDICTORS[key] = Predictor(spec, weights.load())
    return predictor


def predict_batches(spec: PredictorSpec, weights: BroadcastWeights | ArtifactWeights,
                    features_col: str, batches: Iterable[Any]) -> Iterator[Any]:
    """Each record batch of a partition plus (prediction, probability?, *feature blobs) columns.

    Runs on the executors as the function of ``mapInArrow``. The appended columns are float64
    predictions, the probability vector as Spark ML's vector struct (dense: type 1 and values)
    and one ``list<float>`` per feature blob.

    Raises:
        ValueError: a row's feature does not decode or has the wrong shape (the message names the
            column and the row's position in the partition).
    """
    import pyarrow as pa
    import torch

    from hovcaffe.ml.columns import decode_arrow_column

    torch.set_num_threads(spec.threads)
    predictor = None
    position = 0
    for batch in batches:
        n = batch.num_rows
        if n == 0:
            continue
        try:
            images = decode_arrow_column(spec.feature_kind, batch.column(features_col),
                                         spec.sample_shape, spec.color)
        except ValueError as exc:
            raise ValueError(f"features column {features_col!r}, {_shift_row(str(exc), position)}"
                             ) from None
        position += n
        predictor = predictor or get_predictor(spec, weights)
        chunks = [predictor.forward(images[i:i + spec.batch_size])
                  for i in range(0, n, spec.batch_size)]
        out = {b: np.concatenate([c[b] for c in chunks]) for b in chunks[0]}
        scores = out[spec.score_blob]
        columns = list(batch.columns) + [pa.array(scores.argmax(axis=1).astype(np.float64))]
        names = list(batch.schema.names) + [_PREDICTION]
        if spec.probabilities:
            probs = scores.astype(np.float64) if spec.scores_are_probabilities else softmax(scores)
            columns.append(_dense_vectors(probs))
            names.append(_PROBABILITY)
        for blob in spec.feature_blobs:
            columns.append(_float_lists(out[blob]))
            names.append(blob)
        yield pa.RecordBatch.from_arrays(columns, names=names)


#: placeholder names of the appended columns; mapInArrow matches columns by position
_PREDICTION, _PROBABILITY = "__prediction", "__probability"


def _shift_row(message: str, offset: int) -> str:
    """'row I: ...' from decode_arrow_column, with I counted from the start of the partition."""
    head, _, rest = message.partition(": ")
    index = head[4:] if head.startswith("row ") else ""
    return f"row {int(index) + offset} of this partition: {rest}" if index.isdigit() else message


def _rows_offsets(n: int, width: int):
    import pyarrow as pa

    return pa.array(np.arange(0, (n + 1) * width, width, dtype=np.int32))


def _float_lists(values: np.ndarray):
    import pyarrow as pa

    n, width = values.shape
    return pa.ListArray.from_arrays(_rows_offsets(n, width),
                                    pa.array(values.astype(np.float32).reshape(-1)))


def _dense_vectors(values: np.ndarray):
    """Rows of `values` as the struct Spark ML's VectorUDT stores (type 1 = dense)."""
    import pyarrow as pa

    n, width = values.shape
    return pa.StructArray.from_arrays(
        [pa.array(np.ones(n, np.int8)), pa.nulls(n, pa.int32()), pa.nulls(n, pa.list_(pa.int32())),
         pa.ListArray.from_arrays(_rows_offsets(n, width), pa.array(values.reshape(-1)))],
        names=["type", "size", "indices", "values"])
