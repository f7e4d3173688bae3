"""CaffeEstimator.fit on local Spark with 2 Horovod ranks: a tiny LeNet-like net learns procedurally
generated 28×28 patterns (3 classes), inside a Pipeline and a CrossValidator; bad input fails
before any training starts."""
from __future__ import annotations

import numpy as np
import pytest

from hovcaffe.data.codecs import encode_png
from hovcaffe.ml import CaffeEstimator, CaffeModel
from hovcaffe.ml.columns import ColumnError, EmptyDataFrameError

pytestmark = [pytest.mark.spark, pytest.mark.distributed, pytest.mark.slow]

NET = """
name: "tinylenet"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "no-such-lmdb" batch_size: 8 } }
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TEST }
  transform_param { scale: 0.00390625 } data_param { source: "no-such-lmdb" batch_size: 8 } }
layer { name: "conv1" type: "Convolution" bottom: "data" top: "conv1"
  convolution_param { num_output: 4 kernel_size: 5 weight_filler { type: "xavier" } } }
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "ip1" type: "InnerProduct" bottom: "pool1" top: "ip1"
  inner_product_param { num_output: 16 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "accuracy" type: "Accuracy" bottom: "ip2" bottom: "label" top: "accuracy"
  include { phase: TEST } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""
SOLVER = """net: "tinylenet_train_test.prototxt"
test_iter: 2
test_interval: 20
base_lr: 0.001
momentum: 0.9
weight_decay: 0.0005
lr_policy: "fixed"
display: 10
max_iter: 1000
snapshot: 0
random_seed: 1
"""
NAMES = ["stripes", "bars", "diagonals"]


def make_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class templates (vertical / horizontal / diagonal waves) plus heavy Gaussian noise."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:28, 0:28]
    templates = np.stack([np.sin(xx / 2.0) > 0, np.sin(yy / 2.0) > 0,
                          np.sin((xx + yy) / 3.0) > 0]).astype(np.float32) * 120 + 60
    labels = rng.integers(0, 3, n)
    noisy = templates[labels] + rng.normal(0, 50, (n, 28, 28))
    return np.clip(noisy, 0, 255).astype(np.uint8)[:, None], labels


@pytest.fixture(scope="module")
def spark():
    from hovcaffe.utils.spark import get_spark

    session = get_spark("local[2]", app_name="test_ml_fit")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def solver(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tinylenet")
    (folder / "tinylenet_train_test.prototxt").write_text(NET)
    (folder / "tinylenet_solver.prototxt").write_text(SOLVER)
    return str(folder / "tinylenet_solver.prototxt")


def _frame(spark, n: int, seed: int):
    images, labels = make_images(n, seed)
    rows = [(bytearray(encode_png(img)), NAMES[lab], int(lab)) for img, lab in zip(images, labels)]
    return spark.createDataFrame(rows, ["image", "name", "label"])


def test_bad_input_fails_before_any_training(spark, solver, tmp_path):
    est = CaffeEstimator(solver=solver, modelDir=str(tmp_path), numProc=2, maxIter=5,
                         sampleShape=[1, 28, 28])
    good = _frame(spark, 6, 0)
    with pytest.raises(ColumnError, match=r"features column 'pixels' is not in the DataFrame"):
        est.copy({est.featuresCol: "pixels"}).fit(good)
    with pytest.raises(ColumnError, match=r"label column 'name' has type string; expected an integer"):
        est.copy({est.labelCol: "name"}).fit(good)
    with pytest.raises(EmptyDataFrameError, match="without rows"):
        est.fit(good.limit(0))
    with pytest.raises(ColumnError, match=r"first row: shape 1×32×32, expected 1×28×28"):
        est.fit(spark.createDataFrame([(bytearray(encode_png(np.zeros((1, 32, 32), np.uint8))), 0)],
                                      ["image", "label"]))
    # a bad row further down is caught while the rows are written, still before training
    rows = [(bytes(img.tobytes()), int(lab)) for img, lab in zip(*make_images(6, 1))]
    rows[4] = (bytes(10 * 10), 1)
    with pytest.raises(ColumnError, match=r"row \d+: features column 'image': 100 bytes.*1×28×28"):
        est.fit(spark.createDataFrame(rows, ["image", "label"]).coalesce(1))
    assert not (tmp_path / "runs").exists()  # no run folder: training never started
    assert not list(tmp_path.rglob("_SUCCESS"))  # and no half-validated dataset was committed


def test_pipeline_fit_transform_beats_chance_and_keeps_its_history(spark, solver, tmp_path):
    from pyspark.ml import Pipeline, PipelineModel
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.feature import StringIndexer

    est = CaffeEstimator(solver=solver, modelDir=str(tmp_path / "model"), numProc=2, baseLr=0.02,
                         maxIter=40, labelCol="index", validationFraction=0.2, seed=3,
                         sampleShape=[1, 28, 28])
    pipeline = Pipeline(stages=[StringIndexer(inputCol="name", outputCol="index"), est])
    fitted = pipeline.fit(_frame(spark, 160, 0))
    caffe = fitted.stages[-1]
    assert isinstance(caffe, CaffeModel)

    unseen = _frame(spark, 90, 1)
    predictions = fitted.transform(unseen)
    accuracy = MulticlassClassificationEvaluator(labelCol="index", metricName="accuracy").evaluate(
        predictions)
    assert accuracy > 0.6, accuracy  # chance is 1/3

    history = caffe.history
    assert [it for it, _ in history.loss] == list(range(41))
    first, last = np.mean([v for _, v in history.loss[:5]]), np.mean([v for _, v in history.loss[-5:]])
    assert last < 0.5 * first
    assert [it for it, _ in history.test_outputs["test/accuracy"]] == [0, 20, 40]
    solver_text = caffe.modelFiles.text("solver.prototxt")
    assert "base_lr: 0.02" in solver_text and "max_iter: 40" in solver_text

    # the same Pipeline persisted unfitted and fitted: Params and files come back
    pipeline.write().overwrite().save(str(tmp_path / "pipeline"))
    again = Pipeline.load(str(tmp_path / "pipeline")).getStages()[-1]
    assert again.getBaseLr() == 0.02 and again.getSolver() == solver and again.uid == est.uid
    fitted.write().overwrite().save(str(tmp_path / "fitted"))
    loaded = PipelineModel.load(str(tmp_path / "fitted")).stages[-1]
    assert loaded.history.rows == history.rows
    assert loaded.modelFiles.weights == caffe.modelFiles.weights


def test_cross_validator_over_base_lr_picks_the_better_one(spark, solver, tmp_path):
    from pyspark.ml.evaluation import MulticlassClassificationEvaluator
    from pyspark.ml.tuning import CrossValidator, ParamGridBuilder

    data = _frame(spark, 96, 2).select("image", "label").cache()
    # the torch backend: a 1-rank barrier stage per fit starts faster than a Horovod job
    est = CaffeEstimator(solver=solver, modelDir=str(tmp_path), numProc=1, maxIter=20,
                         sampleShape=[1, 28, 28], probabilityCol="", backend="torch")
    grid = ParamGridBuilder().addGrid(est.baseLr, [1e-6, 0.02]).build()
    cv = CrossValidator(estimator=est, estimatorParamMaps=grid, numFolds=2, seed=5, parallelism=1,
                        evaluator=MulticlassClassificationEvaluator(metricName="accuracy"))
    cv_model = cv.fit(data)
    assert len(cv_model.avgMetrics) == 2
    best = int(np.argmax(cv_model.avgMetrics))
    assert cv_model.avgMetrics[1] > cv_model.avgMetrics[0]
    assert f"base_lr: {grid[best][est.baseLr]:g}" in cv_model.bestModel.modelFiles.text("solver.prototxt")
    # 5 fits (2 folds x 2 rates + the refit) wrote 3 datasets: each fold's rows once, then all rows
    assert len(list((tmp_path / "datasets").iterdir())) == 3
    assert len(list((tmp_path / "runs").iterdir())) == 5
