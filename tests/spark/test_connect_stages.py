"""hovcaffe in a Spark Connect session (``SparkSession.builder.remote("local[2]")``): convert,
features, CaffeEstimator.fit (one process and 2 ranks) / transform, CaffeModel and PipelineModel
persistence, `hovcaffe train -num-proc 2 -remote`, which launcher ``auto`` picks there, and the
one-line error where the classic SparkContext is needed (backend horovod).

Spark Connect switches the whole Python process into "remote" mode (``pyspark.ml`` and
``SparkSession`` follow an environment variable), so the scenario runs in its own process
(:func:`scenario`, this file run as a script) and writes what it saw as JSON; the tests check it
against references computed here: the pixels written into the idx files, a torch forward of a
hand-written deploy net with the fitted weights, and a local training run over the same rows.
"""
from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

pytestmark = [pytest.mark.spark, pytest.mark.slow]

LAYERS = """
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
"""
SCALE = 0.00390625
NET = f"""
name: "tiny"
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TRAIN }}
  transform_param {{ scale: {SCALE} }} data_param {{ source: "train-data" batch_size: 8 }} }}
layer {{ name: "data" type: "Data" top: "data" top: "label" include {{ phase: TEST }}
  transform_param {{ scale: {SCALE} }} data_param {{ source: "train-data" batch_size: 8 }} }}
{LAYERS}
layer {{ name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }}
"""
DEPLOY = f"""
name: "tiny"
layer {{ name: "data" type: "Input" top: "data" input_param {{ shape {{ dim: 1 dim: 1 dim: 28 dim: 28 }} }} }}
{LAYERS}
"""
SOLVER = """net: "tiny.prototxt"
base_lr: 0.01
momentum: 0.9
lr_policy: "fixed"
display: 0
max_iter: 12
snapshot: 0
random_seed: 5
"""
N_ROWS = 40


def make_rows(n: int = N_ROWS) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(11)
    return rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), rng.integers(0, 3, n)


def write_idx(folder: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    """MNIST idx3 images + idx1 labels (big-endian headers, magic 2051 / 2049)."""
    n = len(images)
    path = folder / "train-images-idx3-ubyte"
    path.write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
    (folder / "train-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n)
                                                      + labels.astype(np.uint8).tobytes())
    return path


# ----------------------------------------------------------------------------- the scenario

def scenario(folder: Path) -> dict:
    """Everything done through Spark Connect; returns what each step produced (JSON-able)."""
    from pyspark.ml import Pipeline, PipelineModel

    from hovcaffe.cli import main as hovcaffe_cli
    from hovcaffe.ml import CaffeEstimator, CaffeModel
    from hovcaffe.utils.spark import get_spark, is_connect

    images, labels = make_rows()
    idx = write_idx(folder, images, labels)
    (folder / "tiny.prototxt").write_text(NET)
    (folder / "solver.prototxt").write_text(SOLVER)
    spark = get_spark(remote="local[2]", app_name="test_connect_stages")
    out: dict = {"connect": is_connect(spark)}

    dataset = folder / "mnist.parquet"
    hovcaffe_cli.main(["convert", "mnist", str(idx), str(dataset), "--remote", "local[2]"],
                      standalone_mode=False)
    out["converted"] = str(dataset)

    df = spark.createDataFrame([(i, images[i].tobytes(), int(labels[i])) for i in range(N_ROWS)],
                               ["id", "image", "label"]).coalesce(1)
    est = CaffeEstimator(solver=str(folder / "solver.prototxt"), modelDir=str(folder / "fits"),
                         featuresCol="image", sampleShape=[1, 28, 28], numProc=1)
    model = est.fit(df)
    out["fit_weights"] = model.modelFiles.weights.hex()
    out["run_solver"] = str(next((folder / "fits" / "runs").glob("*/solver.prototxt")))

    def predictions(m) -> dict:
        rows = m.transform(df.repartition(2)).select("id", "prediction", "probability").collect()
        return {r["id"]: [r["prediction"], list(r["probability"].toArray())] for r in rows}

    model.setFeatureBlobs(["ip2"])
    rows = model.transform(df.repartition(2)).select("id", "prediction", "probability", "ip2").collect()
    out["transform"] = {r["id"]: [r["prediction"], list(r["probability"].toArray()), list(r["ip2"])]
                        for r in rows}
    model.setFeatureBlobs([])

    model.write().save(str(folder / "model"))
    out["loaded"] = predictions(CaffeModel.load(str(folder / "model")))
    PipelineModel([model]).write().save(str(folder / "pipeline"))
    out["pipeline_loaded"] = predictions(PipelineModel.load(str(folder / "pipeline")))
    out["pipeline_fit"] = predictions(Pipeline(stages=[est]).fit(df))

    weights = folder / "fitted.caffemodel"
    model.saveWeights(str(weights))
    hovcaffe_cli.main(["features", "-model", str(folder / "tiny.prototxt"), "-weights", str(weights),
                       "-features", "ip2", "-label", "label", "-input", str(dataset),
                       "-output", str(folder / "features"), "-outputFormat", "json",
                       "--remote", "local[2]"], standalone_mode=False)
    out["features"] = [json.loads(line) for path in sorted((folder / "features").glob("part-*.json"))
                       for line in path.read_text().splitlines()]

    out.update(two_ranks(folder, spark, df, dataset))
    spark.stop()
    return out


def two_ranks(folder: Path, spark, df, dataset: Path) -> dict:
    """2 ranks through the same Connect session: the Estimator (numProc=2) and `hovcaffe train
    -num-proc 2 -remote`, both with backend auto; and backend='horovod', which cannot start there."""
    from hovcaffe.cli import main as hovcaffe_cli
    from hovcaffe.distributed.backend import get_backend
    from hovcaffe.ml import CaffeEstimator
    from hovcaffe.options import DistributedOptions

    out: dict = {"auto_in_connect": get_backend(DistributedOptions(num_proc=2), spark=spark).name}
    est = CaffeEstimator(solver=str(folder / "solver.prototxt"), modelDir=str(folder / "fits2"),
                         featuresCol="image", sampleShape=[1, 28, 28], numProc=2)
    t0 = time.monotonic()
    out["fit2_weights"] = est.fit(df).modelFiles.weights.hex()
    out["fit2_seconds"] = time.monotonic() - t0
    out["fit2_solver"] = str(next((folder / "fits2" / "runs").glob("*/solver.prototxt")))
    try:
        est.copy({est.backend: "horovod"}).fit(df)
        out["horovod_error"] = None
    except Exception as exc:  # noqa: BLE001 - the message is what is checked
        out["horovod_error"] = f"{type(exc).__name__}: {exc}"

    model = folder / "cli" / "tiny.caffemodel"
    t0 = time.monotonic()
    hovcaffe_cli.main(["train", "-solver", str(folder / "solver.prototxt"), "-num-proc", "2",
                       "-remote", "local[2]", "-input", str(dataset), "-model", str(model),
                       "--no-progress", "--no-tensorboard"], standalone_mode=False)
    out["cli_seconds"] = time.monotonic() - t0
    out["cli_weights"] = model.read_bytes().hex()
    return out


# ----------------------------------------------------------------------------- the tests

@pytest.fixture(scope="module")
def seen(tmp_path_factory) -> dict:
    folder = tmp_path_factory.mktemp("connect")
    result = folder / "result.json"
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    proc = subprocess.run([sys.executable, __file__, str(folder), str(result)], env=env,
                          capture_output=True, text=True, timeout=900, cwd=folder)
    assert proc.returncode == 0, proc.stderr[-4000:]
    data = json.loads(result.read_text())
    data["folder"] = str(folder)
    return data


def _deploy_forward(weights: bytes, images: np.ndarray) -> np.ndarray:
    """ip2 of the hand-written deploy net with `weights`, in float64 (the reference)."""
    import torch

    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import parse_net
    from hovcaffe.net import CaffeNet
    from hovcaffe.weights import load_caffemodel

    path = Path(os.environ.get("TMPDIR", "/tmp")) / f"connect-ref-{os.getpid()}.caffemodel"
    path.write_bytes(weights)
    net = CaffeNet(parse_net(DEPLOY), caffe_pb2.TEST, input_shapes={"data": (len(images), 1, 28, 28)})
    load_caffemodel(net, str(path), strict=True)
    path.unlink()
    with torch.no_grad():
        return net(data=torch.from_numpy(images.astype(np.float32) * np.float32(SCALE)))["ip2"].double().numpy()


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def test_the_session_is_spark_connect(seen):
    assert seen["connect"] is True


def test_convert_through_connect_writes_every_pixel(seen):
    import sys as _sys

    _sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
    from data_fixtures import read_rows

    images, labels = make_rows()
    rows = read_rows(Path(seen["converted"]))
    np.testing.assert_array_equal(np.stack(rows["data"]), images)
    assert rows["label"] == labels.tolist()


def test_fit_in_one_process_equals_a_local_run_over_the_same_rows(seen, tmp_path):
    """The Connect fit (rows through mapInArrow into a dataset, training in the driver) ends at the
    weights `hovcaffe train`'s loop reaches on the idx conversion of the same rows."""
    from hovcaffe.caffe.io import read_solver
    from hovcaffe.training.loop import TrainConfig, Trainer
    from hovcaffe.weights import save_caffemodel

    solver_path = seen["run_solver"]
    trainer = Trainer(TrainConfig(solver=read_solver(solver_path), solver_path=solver_path,
                                  train_data=seen["converted"], handle_signals=False,
                                  snapshot_prefix=str(tmp_path / "ref")))
    trainer.solve()
    save_caffemodel(trainer.train_net, tmp_path / "ref.caffemodel")
    images, _ = make_rows()
    fitted = _deploy_forward(bytes.fromhex(seen["fit_weights"]), images)
    reference = _deploy_forward((tmp_path / "ref.caffemodel").read_bytes(), images)
    np.testing.assert_allclose(fitted, reference, rtol=0, atol=1e-6)


def test_transform_equals_the_deploy_forward(seen):
    images, _ = make_rows()
    ip2 = _deploy_forward(bytes.fromhex(seen["fit_weights"]), images)
    got = {int(k): v for k, v in seen["transform"].items()}
    assert sorted(got) == list(range(N_ROWS))
    np.testing.assert_allclose(np.array([got[i][2] for i in range(N_ROWS)]), ip2, rtol=0, atol=1e-5)
    np.testing.assert_allclose(np.array([got[i][1] for i in range(N_ROWS)]), _softmax(ip2),
                               rtol=0, atol=1e-6)
    assert [got[i][0] for i in range(N_ROWS)] == ip2.argmax(axis=1).astype(float).tolist()


@pytest.mark.parametrize("key", ["loaded", "pipeline_loaded"])
def test_saved_and_loaded_models_predict_the_same(seen, key):
    before = {int(k): v for k, v in seen["transform"].items()}
    after = {int(k): v for k, v in seen[key].items()}
    assert sorted(after) == list(range(N_ROWS))
    for i in range(N_ROWS):
        assert after[i][0] == before[i][0]
        np.testing.assert_allclose(after[i][1], before[i][1], rtol=0, atol=1e-12)


def test_a_pipeline_fit_predicts_with_the_same_trained_weights(seen):
    before = {int(k): v for k, v in seen["transform"].items()}
    again = {int(k): v for k, v in seen["pipeline_fit"].items()}
    np.testing.assert_allclose([again[i][1] for i in range(N_ROWS)],
                               [before[i][1] for i in range(N_ROWS)], rtol=0, atol=1e-6)


def test_features_through_connect_equal_the_deploy_forward_in_sample_order(seen):
    images, labels = make_rows()
    ip2 = _deploy_forward(bytes.fromhex(seen["fit_weights"]), images)
    rows = sorted(seen["features"], key=lambda r: r["SampleID"])
    assert [r["SampleID"] for r in rows] == list(range(N_ROWS))
    np.testing.assert_allclose(np.array([r["ip2"] for r in rows]), ip2, rtol=0, atol=1e-5)
    assert [r["label"][0] for r in rows] == labels.astype(float).tolist()


def _learnables(weights: bytes) -> dict[str, np.ndarray]:
    from hovcaffe.caffe import caffe_pb2

    model = caffe_pb2.NetParameter()
    model.ParseFromString(weights)
    return {f"{layer.name}/{i}": np.array(blob.data, dtype=np.float64)
            for layer in model.layer for i, blob in enumerate(layer.blobs)}


@pytest.fixture(scope="module")
def double_batch(seen, tmp_path_factory) -> dict[str, np.ndarray]:
    """One process, batch 16, over the idx conversion of the rows: what 2 ranks x 8 must reach.

    Rank r reads records r, r+2, ... so the ranks' batches of an iteration are together the
    16-batch of one process, and the mean of their gradients is its gradient (the rows reach the
    fit's dataset in DataFrame order: one partition). Only float32 summation order differs.
    """
    from hovcaffe.caffe.io import read_solver
    from hovcaffe.training.loop import TrainConfig, Trainer
    from hovcaffe.weights import save_caffemodel

    folder = tmp_path_factory.mktemp("double-batch")
    solver = read_solver(seen["fit2_solver"])
    for layer in solver.train_net_param.layer:  # the TRAIN and the (unused) TEST data layer
        if layer.type == "Data":
            assert layer.data_param.batch_size == 8
            layer.data_param.batch_size = 16
    trainer = Trainer(TrainConfig(solver=solver, solver_path=seen["fit2_solver"],
                                  train_data=seen["converted"], handle_signals=False,
                                  snapshot_prefix=str(folder / "ref")))
    trainer.solve()
    save_caffemodel(trainer.train_net, folder / "ref.caffemodel")
    return _learnables((folder / "ref.caffemodel").read_bytes())


def test_auto_picks_the_torch_launcher_in_a_connect_session(seen):
    """Horovod's launcher needs the classic SparkContext; the barrier stage starts through Connect."""
    assert seen["auto_in_connect"] == "torch"


@pytest.mark.parametrize("key", ["fit2_weights", "cli_weights"])
def test_two_ranks_through_connect_equal_one_process_with_the_double_batch(seen, double_batch, key):
    got = _learnables(bytes.fromhex(seen[key]))
    assert sorted(got) == sorted(double_batch)
    for name, reference in double_batch.items():
        np.testing.assert_allclose(got[name], reference, rtol=0, atol=1e-6, err_msg=name)


def test_backend_horovod_in_a_connect_session_is_one_line_naming_torch(seen):
    message = seen["horovod_error"]
    assert message is not None and "\n" not in message
    assert message.startswith("OptionError: Param backend horovod in a Spark Connect session: "
                              "the horovod launcher starts its ranks through the classic "
                              "SparkContext"), message
    assert "use Param backend torch (or auto)" in message


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    os.environ.setdefault("HOVCAFFE_SPARK_LOG_LEVEL", "ERROR")
    report = scenario(Path(sys.argv[1]))
    Path(sys.argv[2]).write_text(json.dumps(report))
