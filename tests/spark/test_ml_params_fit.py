"""One CaffeEstimator.fit that sets every Param no other fit sets - net, weights, batchSize,
inputBlob / labelBlob / outputBlob, numThreads, connection, startTimeout - and checks each one's
effect against numbers computed here with NumPy (never by hovcaffe):

* net: the solver names a net file that does not exist; only the `net` Param's file can train;
* inputBlob / labelBlob: that net's data tops are ``pixels`` / ``target``, and the rows are
  written under those names;
* weights + batchSize: the first loss is the softmax loss of the given weights over ALL 12 rows
  (batchSize 12 replaces the prototxt's 5; the constant-0 filler would give log 3);
* outputBlob: predictions and probabilities come from the frozen ``aux`` head (the given weights,
  untouched by training) instead of the trained ``ip`` head the loss names;
* numThreads: the executor function of transform sets torch's threads to it;
* connection / startTimeout: what the Horovod launch was given (its log line).
"""
from __future__ import annotations

import logging

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.ml import CaffeEstimator

pytestmark = [pytest.mark.spark, pytest.mark.distributed]

NET = """
name: "paramsnet"
layer { name: "feed" type: "Data" top: "pixels" top: "target" include { phase: TRAIN }
  data_param { source: "nowhere" batch_size: 5 } }
layer { name: "feed" type: "Data" top: "pixels" top: "target" include { phase: TEST }
  data_param { source: "nowhere" batch_size: 5 } }
layer { name: "ip" type: "InnerProduct" bottom: "pixels" top: "ip"
  inner_product_param { num_output: 3 weight_filler { type: "constant" value: 0 } } }
layer { name: "aux" type: "InnerProduct" bottom: "pixels" top: "aux"
  param { lr_mult: 0 decay_mult: 0 } param { lr_mult: 0 decay_mult: 0 }
  inner_product_param { num_output: 3 weight_filler { type: "constant" value: 0 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "target" top: "loss" }
"""
SOLVER = """net: "no_such_net.prototxt"
base_lr: 0.1
lr_policy: "fixed"
momentum: 0.9
max_iter: 50
display: 1
snapshot: 0
random_seed: 1
"""
ROWS, SHAPE = 12, (1, 2, 3)


@pytest.fixture(scope="module")
def spark():
    from hovcaffe.utils.spark import get_spark

    session = get_spark("local[2]", app_name="test_ml_params_fit")
    yield session
    session.stop()


def _blob(values: np.ndarray) -> pb.BlobProto:
    blob = pb.BlobProto()
    blob.shape.dim.extend(values.shape)
    blob.data.extend(values.astype(np.float32).ravel().tolist())
    return blob


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    folder = tmp_path_factory.mktemp("params")
    (folder / "solver.prototxt").write_text(SOLVER)
    (folder / "net.prototxt").write_text(NET)
    rng = np.random.default_rng(4)
    weights = {name: (rng.normal(0, 0.8, (3, 6)), rng.normal(0, 0.5, 3)) for name in ("ip", "aux")}
    model = pb.NetParameter(name="given")
    for name, (w, b) in weights.items():
        layer = model.layer.add(name=name, type="InnerProduct")
        layer.blobs.extend([_blob(w), _blob(b)])
    (folder / "given.caffemodel").write_bytes(model.SerializeToString())
    features = rng.normal(0, 1, (ROWS, 6)).astype(np.float32)
    labels = np.arange(ROWS) % 3
    return folder, weights, features, labels


@pytest.fixture(scope="module")
def fitted(spark, case, tmp_path_factory):
    folder, _, features, labels = case
    rows = [(row.astype(float).tolist(), int(lab)) for row, lab in zip(features, labels)]
    frame = spark.createDataFrame(rows, ["features", "label"])
    est = CaffeEstimator(solver=str(folder / "solver.prototxt"), net=str(folder / "net.prototxt"),
                         weights=str(folder / "given.caffemodel"), modelDir=str(folder / "model"),
                         featuresCol="features", sampleShape=list(SHAPE), inputBlob="pixels",
                         labelBlob="target", outputBlob="aux", batchSize=ROWS, maxIter=2, numProc=1,
                         backend="horovod", numThreads=3, connection="gloo", startTimeout=47)
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append   # the driver's own log records, as they are made
    logger = logging.getLogger("hovcaffe")
    logger.addHandler(handler)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        model = est.fit(frame)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)
    return est, model, frame, [r.getMessage() for r in records]


def test_net_input_and_label_blobs_name_what_is_trained(fitted, case):
    folder = case[0]
    _, model, _, _ = fitted
    assert "paramsnet" in model.modelFiles.text("solver.prototxt")   # the `net` file, inlined
    (train,) = (folder / "model" / "datasets").glob("*/train")
    columns = set(pq.read_schema(next(train.glob("*.parquet"))).names)
    assert {"pixels", "target"} <= columns and not {"data", "label"} & columns


def test_weights_and_batch_size_give_the_first_loss(fitted, case):
    _, weights, features, labels = case
    _, model, _, _ = fitted
    w, b = weights["ip"]
    z = features.astype(np.float64) @ w.astype(np.float32).T + b.astype(np.float32)
    expected = float(np.mean(-np.log(_softmax(z)[np.arange(ROWS), labels])))   # all 12 rows at once
    first_iteration, first_loss = model.history.loss[0]
    assert first_iteration == 0
    assert first_loss == pytest.approx(expected, rel=1e-5)
    assert abs(first_loss - np.log(3)) > 0.05   # not the filler's all-zero start
    assert "batch_size: 12" in model.modelFiles.text("solver.prototxt")


def test_output_blob_decides_predictions(fitted, case):
    _, weights, features, _ = case
    _, model, frame, _ = fitted
    w, b = weights["aux"]
    want = _softmax(features.astype(np.float64) @ w.astype(np.float32).T + b.astype(np.float32))
    rows = model.transform(frame).select("features", "prediction", "probability").collect()
    got = {tuple(np.float32(r.features)): (r.prediction, r.probability.toArray()) for r in rows}
    for row, probs in zip(features, want):
        prediction, probability = got[tuple(row)]
        assert prediction == float(np.argmax(probs))
        np.testing.assert_allclose(probability, probs, rtol=1e-5)


def test_num_threads_is_what_transform_runs_with(fitted):
    from hovcaffe.ml.inference import predict_batches

    _, model, frame, _ = fitted

    class Weights:   # the model's bytes, handed over as the broadcast would
        key = ("test", 0)

        @staticmethod
        def load() -> bytes:
            return model.modelFiles.weights

    spec = model.inferencePlan(frame.schema)
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        batches = frame.toArrow().to_batches()
        assert sum(b.num_rows for b in predict_batches(spec, Weights, "features", batches)) == ROWS
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_connection_and_start_timeout_reach_the_launch(fitted):
    _, _, _, messages = fitted
    (launch,) = [m for m in messages if m.startswith("launching 1 rank(s)")]
    assert "over Gloo over TCP" in launch and "start timeout 47 s" in launch
