"""Batched TEST-phase inference inside Spark tasks (the executor side of ``CaffeModel.transform``).

Spark's Arrow paths (pandas UDFs, ``mapInPandas``) refuse to run with the pinned pyarrow 14, so
transform is a plain RDD ``mapPartitions``: each task decodes its rows, groups them into batches of
``inferenceBatchSize``, runs one forward pass per batch and yields the input row plus the new
columns. The net is built once per Python worker and weights broadcast (:data:`_PREDICTORS` caches
it by broadcast id; Spark reuses Python workers), never per row.

``transform_param`` is applied as the TEST data layer would (centre crop, mean, scale), except
``mirror``: Caffe mirrors at random even in TEST, which would make predictions change from run to
run, so inference never mirrors.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from hovcaffe.ml.columns import decode_feature

log = logging.getLogger(__name__)
_PREDICTORS: dict[Any, "Predictor"] = {}
_MAX_CACHED = 4


@dataclasses.dataclass(frozen=True, eq=False)
class InferenceSpec:
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


class Predictor:
    """A TEST-phase CaffeNet with loaded weights, mapping batches of decoded rows to outputs."""

    def __init__(self, spec: InferenceSpec, weights: bytes):
        import torch

        from hovcaffe.caffe import caffe_pb2
        from hovcaffe.caffe.io import parse_caffemodel
        from hovcaffe.data.transform import TEST, Transformer
        from hovcaffe.net import CaffeNet
        from hovcaffe.weights import load_caffemodel

        self.spec = spec
        net_param = caffe_pb2.NetParameter.FromString(spec.net_bytes)
        self.net = CaffeNet(net_param, caffe_pb2.TEST)
        self.net.eval()
        load_caffemodel(self.net, parse_caffemodel(weights, "<broadcast weights>"), strict=True)
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
        with torch.no_grad():
            blobs = self.net(**{spec.input_blob: x})
        names = (spec.score_blob,) + tuple(b for b in spec.feature_blobs if b != spec.score_blob)
        return {b: blobs[b][:n].detach().to(torch.float32).reshape(n, -1).cpu().numpy() for b in names}


def softmax(scores: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable: the row maximum is subtracted first)."""
    z = scores.astype(np.float64) - scores.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def get_predictor(spec: InferenceSpec, weights_bc) -> Predictor:
    """The Predictor for this broadcast, built on first use in this Python worker."""
    key = (weights_bc.id if hasattr(weights_bc, "id") else id(weights_bc), spec.net_bytes)
    predictor = _PREDICTORS.get(key)
    if predictor is None:
        if len(_PREDICTORS) >= _MAX_CACHED:
            _PREDICTORS.pop(next(iter(_PREDICTORS)))
        predictor = _PREDICTORS[key] = Predictor(spec, weights_bc.value)
    return predictor


def batches(rows: Iterable[Any], size: int) -> Iterator[list[Any]]:
    batch: list[Any] = []
    for row in rows:
        batch.append(row)
        if len(batch) == size:
            yield batch
            batch = []
    if batch:
        yield batch


def predict_partition(spec: InferenceSpec, weights_bc, feature_index: int, features_col: str,
                      rows: Iterable[Sequence[Any]]) -> Iterator[tuple]:
    """Rows of one partition + (prediction, probability?, *feature blobs) (runs on executors).

    Raises:
        ValueError: a row's feature does not decode or has the wrong shape (the message names the
            column and the row's position in the partition).
    """
    import torch
    from pyspark.ml.linalg import DenseVector

    torch.set_num_threads(spec.threads)
    predictor = None
    position = 0
    for batch in batches(rows, spec.batch_size):
        images = []
        for row in batch:
            try:
                images.append(decode_feature(spec.feature_kind, row[feature_index], spec.sample_shape,
                                             spec.color))
            except ValueError as exc:
                raise ValueError(f"features column {features_col!r}, row {position} of this "
                                 f"partition: {exc}") from None
            position += 1
        predictor = predictor or get_predictor(spec, weights_bc)
        out = predictor.forward(np.stack(images))
        scores = out[spec.score_blob]
        prediction = scores.argmax(axis=1).astype(np.float64)
        probs = None
        if spec.probabilities:
            probs = scores.astype(np.float64) if spec.scores_are_probabilities else softmax(scores)
        for i, row in enumerate(batch):
            extra: list[Any] = [float(prediction[i])]
            if probs is not None:
                extra.append(DenseVector(probs[i]))
            extra.extend(out[b][i].tolist() for b in spec.feature_blobs)
            yield tuple(row) + tuple(extra)
