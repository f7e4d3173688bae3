"""CaffeModel.transform on local Spark: outputs checked against the net's own local forward pass,
persistence inside a PipelineModel checked in a fresh Spark session (a subprocess)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch

from conftest import REPO
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net
from hovcaffe.data.codecs import encode_png
from hovcaffe.ml import CaffeModel
from hovcaffe.ml.columns import ColumnError
from hovcaffe.net import CaffeNet
from hovcaffe.weights import load_caffemodel, save_caffemodel

pytestmark = pytest.mark.spark

LAYERS = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 5 weight_filler { type: "xavier" }
                      bias_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" }
                        bias_filler { type: "uniform" min: -0.1 max: 0.1 } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
"""
SCALE = 0.00390625
TRAIN_VAL = f"""
name: "toy"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ scale: {SCALE} }} data_param {{ source: "unused" batch_size: 8 }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: {SCALE} }} data_param {{ source: "unused" batch_size: 8 }} }}
{LAYERS}
layer {{ name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include {{ phase: TEST }} }}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""
# The deploy form a Caffe user writes by hand: the reference the transform is checked against.
DEPLOY = f"""
name: "toy"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1 dim: 28 dim: 28 }} }} }}
{LAYERS}
"""
N_ROWS = 23  # not a multiple of the batch size: the last batch of a partition is short


@pytest.fixture(scope="module")
def spark():
    from hovcaffe.utils.spark import get_spark

    session = get_spark("local[2]", app_name="test_ml_transform")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("toy")
    (folder / "train_val.prototxt").write_text(TRAIN_VAL)
    torch.manual_seed(3)
    net = CaffeNet(parse_net(TRAIN_VAL), caffe_pb2.TEST, input_shapes={"data": (1, 1, 28, 28),
                                                                        "label": (1,)})
    save_caffemodel(net, folder / "toy.caffemodel")
    return folder


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(7)
    return rng.integers(0, 256, size=(N_ROWS, 1, 28, 28), dtype=np.uint8)


def _deploy_blobs(weights, images):
    """Blobs of the hand-written deploy net, loaded with `weights`, on `images`."""
    net = CaffeNet(parse_net(DEPLOY), caffe_pb2.TEST, input_shapes={"data": (N_ROWS, 1, 28, 28)})
    load_caffemodel(net, str(weights), strict=True)
    x = torch.from_numpy(images.astype(np.float32) * np.float32(SCALE))
    with torch.no_grad():
        blobs = net(data=x)
    return {name: blobs[name].reshape(N_ROWS, -1).numpy().astype(np.float64) for name in ("ip1", "ip2")}


@pytest.fixture(scope="module")
def reference(files, images):
    """Blobs of the hand-written deploy net, loaded with the same weights, on the same rows."""
    return _deploy_blobs(files / "toy.caffemodel", images)


@pytest.fixture(scope="module")
def frame(spark, images):
    from pyspark.ml.linalg import Vectors

    rows = [(i, bytes(img.tobytes()), bytearray(encode_png(img)), Vectors.dense(img.ravel().tolist()),
             ["a", "b", "c"][i % 3]) for i, img in enumerate(images)]
    return spark.createDataFrame(rows, ["id", "raw", "png", "vec", "name"]).repartition(2)


def _by_id(rows):
    return {r["id"]: r for r in rows}


def _numpy_softmax(z):
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_transform_matches_the_local_forward_pass(files, frame, reference):
    model = CaffeModel.from_files(str(files / "train_val.prototxt"), str(files / "toy.caffemodel"),
                                  featuresCol="raw", sampleShape=[1, 28, 28], featureBlobs=["ip1"],
                                  inferenceBatchSize=5)
    out = model.transform(frame)
    assert out.columns == frame.columns + ["prediction", "probability", "ip1"]
    rows = _by_id(out.collect())
    assert len(rows) == N_ROWS
    expected_prob = _numpy_softmax(reference["ip2"])
    for i in range(N_ROWS):
        prob = rows[i]["probability"].toArray()
        assert prob.sum() == pytest.approx(1.0, abs=1e-12)
        np.testing.assert_allclose(prob, expected_prob[i], rtol=1e-5, atol=1e-6)
        assert rows[i]["prediction"] == float(np.argmax(reference["ip2"][i]))
        np.testing.assert_allclose(rows[i]["ip1"], reference["ip1"][i], rtol=1e-5, atol=1e-5)
        assert min(rows[i]["ip1"]) >= 0  # the in-place ReLU ran: the blob's final value


def test_a_model_with_other_weights_does_not_reuse_the_cached_net(files, frame, reference, images,
                                                                  tmp_path):
    # Executors keep built nets across tasks (hovcaffe.ml.inference._PREDICTORS); the same net
    # with other weights, in the same session and Python workers, must predict with its own.
    torch.manual_seed(11)
    other = CaffeNet(parse_net(TRAIN_VAL), caffe_pb2.TEST, input_shapes={"data": (1, 1, 28, 28),
                                                                          "label": (1,)})
    save_caffemodel(other, tmp_path / "other.caffemodel")
    expected = _deploy_blobs(tmp_path / "other.caffemodel", images)["ip2"]
    assert not np.allclose(expected, reference["ip2"])  # the check below can tell them apart
    probs = {}
    for name, weights in (("first", files / "toy.caffemodel"), ("other", tmp_path / "other.caffemodel")):
        model = CaffeModel.from_files(str(files / "train_val.prototxt"), str(weights),
                                      featuresCol="raw", sampleShape=[1, 28, 28])
        rows = _by_id(model.transform(frame).select("id", "probability").collect())
        probs[name] = np.array([rows[i]["probability"].toArray() for i in range(N_ROWS)])
    np.testing.assert_allclose(probs["first"], _numpy_softmax(reference["ip2"]), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(probs["other"], _numpy_softmax(expected), rtol=1e-5, atol=1e-6)


def test_png_and_vector_columns_predict_like_raw_bytes(files, frame, reference):
    for column in ("png", "vec"):
        model = CaffeModel.from_files(str(files / "train_val.prototxt"), str(files / "toy.caffemodel"),
                                      featuresCol=column, sampleShape=[1, 28, 28], probabilityCol="")
        rows = _by_id(model.transform(frame).select("id", "prediction").collect())
        assert [rows[i]["prediction"] for i in range(N_ROWS)] == \
            [float(np.argmax(reference["ip2"][i])) for i in range(N_ROWS)], column


def test_bad_input_fails_with_the_column_and_what_was_expected(spark, files, frame):
    model = CaffeModel.from_files(str(files / "train_val.prototxt"), str(files / "toy.caffemodel"),
                                  featuresCol="raw", sampleShape=[1, 28, 28])
    with pytest.raises(ColumnError, match="'pixels' is not in the DataFrame"):
        model.copy({model.featuresCol: "pixels"}).transform(frame)
    with pytest.raises(ColumnError, match="already has"):
        model.copy({model.predictionCol: "name"}).transform(frame)
    small = spark.createDataFrame([(bytes(16 * 16),)], ["raw"])
    with pytest.raises(Exception, match=r"features column 'raw'.*256 bytes.*1×28×28"):
        model.transform(small).collect()


SCRIPT = textwrap.dedent("""
    import json, sys
    from pyspark.ml import PipelineModel
    from hovcaffe.utils.spark import get_spark
    spark = get_spark("local[1]", app_name="fresh")
    model = PipelineModel.load(sys.argv[1])
    rows = model.transform(spark.read.parquet(sys.argv[2])).collect()
    json.dump({r["id"]: [r["label"], r["prediction"], r["probability"].toArray().tolist()] for r in rows},
              open(sys.argv[3], "w"))
    spark.stop()
""")


def test_saved_pipeline_model_predicts_the_same_in_a_fresh_session(spark, files, frame, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.feature import StringIndexer

    indexer = Pipeline(stages=[StringIndexer(inputCol="name", outputCol="label")]).fit(frame).stages[0]
    caffe = CaffeModel.from_files(str(files / "train_val.prototxt"), str(files / "toy.caffemodel"),
                                  featuresCol="raw", sampleShape=[1, 28, 28], inferenceBatchSize=4)
    pipeline = PipelineModel(stages=[indexer, caffe])
    here = {r["id"]: r for r in pipeline.transform(frame).collect()}
    pipeline.write().overwrite().save(str(tmp_path / "pipeline"))
    frame.select("id", "raw", "name").write.parquet(str(tmp_path / "rows"))

    stage_dir = next((tmp_path / "pipeline" / "stages").glob("1_*"))
    assert (stage_dir / "files" / "weights.caffemodel").read_bytes() == \
        (files / "toy.caffemodel").read_bytes()
    metadata = json.loads((stage_dir / "metadata" / next(
        p.name for p in (stage_dir / "metadata").iterdir() if p.name.startswith("part-"))).read_text())
    assert metadata["paramMap"]["sampleShape"] == [1, 28, 28]
    assert set(metadata["hovcaffe"]["files"]) == {"net.prototxt", "weights.caffemodel"}

    paths = [str(REPO)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(paths)}
    result = tmp_path / "fresh.json"
    subprocess.run([sys.executable, "-c", SCRIPT, str(tmp_path / "pipeline"), str(tmp_path / "rows"),
                    str(result)], check=True, env=env, timeout=300)
    fresh = {int(k): v for k, v in json.loads(result.read_text()).items()}
    assert sorted(fresh) == sorted(here)
    for i, (label, prediction, prob) in fresh.items():
        assert label == here[i]["label"] and prediction == here[i]["prediction"]
        np.testing.assert_allclose(prob, here[i]["probability"].toArray(), rtol=0, atol=1e-6)


def test_saved_model_refuses_a_damaged_weights_file(spark, files, tmp_path):
    model = CaffeModel.from_files(str(files / "train_val.prototxt"), str(files / "toy.caffemodel"),
                                  sampleShape=[1, 28, 28])
    model.save(str(tmp_path / "m"))
    loaded = CaffeModel.load(str(tmp_path / "m"))
    assert loaded.modelFiles.weights == model.modelFiles.weights and loaded.uid == model.uid
    (tmp_path / "m" / "files" / "weights.caffemodel").write_bytes(b"\x00" * 10)
    with pytest.raises(Exception, match="weights.caffemodel has 10 bytes"):
        CaffeModel.load(str(tmp_path / "m"))


def test_mean_file_comes_from_the_model_files_and_mirror_is_off():
    from hovcaffe.caffe.io import array_to_blob
    from hovcaffe.errors import DataSourceError
    from hovcaffe.ml.artifacts import MEAN_FILE, NET_FILE, WEIGHTS_FILE, ModelFiles
    from hovcaffe.ml.model import _transform_spec

    mean = np.random.default_rng(5).uniform(0, 255, (1, 3, 4, 5)).astype(np.float32)
    files = ModelFiles({NET_FILE: b"", WEIGHTS_FILE: b"", MEAN_FILE: array_to_blob(mean).SerializeToString()})
    param = caffe_pb2.TransformationParameter(mean_file="/elsewhere/mean.binaryproto", mirror=True, scale=0.5)
    spec = _transform_spec(param, files)
    np.testing.assert_array_equal(spec.mean, mean[0])
    assert not spec.mirror and spec.scale == 0.5
    files.files[MEAN_FILE] = b"\xff\x00 not a blob"
    with pytest.raises(DataSourceError, match=f"mean_file .*{MEAN_FILE}: not a BlobProto"):
        _transform_spec(param, files)
