"""Params, net surgery and column checks of hovcaffe.ml (no Spark session needed)."""
from __future__ import annotations

import numpy as np
import pytest
from pyspark.ml.linalg import VectorUDT, Vectors
from pyspark.ml.tuning import ParamGridBuilder
from pyspark.sql import types as T

from conftest import ZOO
from hovcaffe.caffe.io import parse_net, read_net
from hovcaffe.errors import NetDefinitionError, UserInputError
from hovcaffe.ml import CaffeEstimator, CaffeModel
from hovcaffe.ml.columns import ColumnError, decode_feature, feature_kind, label_dtype
from hovcaffe.ml.deploy import plan_inference
from hovcaffe.ml.params import ESTIMATOR_PARAMS, STAGE_PARAMS

ALL_SPECS = STAGE_PARAMS + ESTIMATOR_PARAMS


# ----------------------------------------------------------------------------- Params


@pytest.mark.parametrize("spec", ALL_SPECS, ids=lambda s: s.name)
def test_every_param_is_generated_documented_and_camel_case(spec):
    est = CaffeEstimator()
    assert spec.name[0].islower() and "_" not in spec.name
    assert spec.doc.endswith(".") and len(spec.doc.split()) >= 5
    param = est.getParam(spec.name)
    assert param.doc == spec.doc
    getter, setter = getattr(est, "get" + spec.suffix), getattr(est, "set" + spec.suffix)
    default = getter()
    if default is not None:
        assert setter(default) is est and getter() == default


def test_model_has_the_stage_params_but_not_the_training_ones():
    model = CaffeModel()
    names = {p.name for p in model.params}
    assert {s.name for s in STAGE_PARAMS} <= names
    assert not names & {s.name for s in ESTIMATOR_PARAMS}


def test_constructor_kwargs_set_params_and_unset_overrides_read_none():
    est = CaffeEstimator(solver="s.prototxt", baseLr=0.05, featureBlobs="fc7, prob", numProc=1)
    assert est.getSolver() == "s.prototxt" and est.getBaseLr() == 0.05
    assert est.getFeatureBlobs() == ["fc7", "prob"] and est.getNumProc() == 1
    assert est.getMaxIter() is None and est.getBatchSize() is None
    assert est.getFeaturesCol() == "image" and est.getLabelCol() == "label"


def test_unknown_param_names_the_close_match():
    with pytest.raises(UserInputError, match=r"no Param 'baselr'.*Did you mean 'baseLr'"):
        CaffeEstimator(baselr=0.1)


@pytest.mark.parametrize("kwargs, expected", [
    ({"numProc": 0}, "numProc.*integer >= 1"),
    ({"baseLr": -0.1}, "baseLr.*> 0"),
    ({"validationFraction": 1.0}, "validationFraction.*< 1"),
    ({"connection": "pigeon"}, "connection.*'pigeon' is not known.*gloo"),
    ({"sampleShape": [1, 0, 28]}, "sampleShape.*positive integers"),
])
def test_bad_values_name_the_param_and_the_range(kwargs, expected):
    with pytest.raises(UserInputError, match=expected):
        CaffeEstimator(**kwargs)


def test_param_grid_and_copy_work_on_the_generated_params():
    est = CaffeEstimator(solver="s.prototxt", baseLr=0.1)
    grid = ParamGridBuilder().addGrid(est.baseLr, [0.01, 0.1]).build()
    assert [m[est.baseLr] for m in grid] == [0.01, 0.1]
    copy = est.copy(grid[0])
    assert copy.getBaseLr() == 0.01 and est.getBaseLr() == 0.1 and copy.uid == est.uid


def test_fit_without_solver_or_model_dir_says_which_param_is_missing():
    with pytest.raises(UserInputError, match="needs Param.*solver, modelDir"):
        CaffeEstimator().fit(None)


# ----------------------------------------------------------------------------- net surgery


def test_lenet_train_test_becomes_a_label_free_test_net():
    plan = plan_inference(read_net(ZOO / "bvlc/mnist/lenet_train_test.prototxt"), input_blob="data",
                          sample_shape=(1, 28, 28), batch_size=5, feature_blobs=["ip1"])
    kinds = [(layer.name, layer.type) for layer in plan.net_param.layer]
    assert kinds[0] == ("mnist", "Input")
    assert list(plan.net_param.layer[0].input_param.shape[0].dim) == [5, 1, 28, 28]
    assert not {"Accuracy", "SoftmaxWithLoss", "Data"} & {t for _, t in kinds}
    assert ("relu1", "ReLU") in kinds  # in place on ip1: the feature blob's final value needs it
    assert plan.score_blob == "ip2" and not plan.scores_are_probabilities
    assert plan.transform.scale == pytest.approx(1 / 256)


def test_googlenet_picks_the_main_head_and_center_crop_shape():
    plan = plan_inference(read_net(ZOO / "bvlc/bvlc_googlenet/train_val.prototxt"), input_blob="data",
                          sample_shape=(3, 256, 256), batch_size=2)
    assert plan.score_blob == "loss3/classifier"
    assert plan.net_input_shape == (3, 224, 224)
    names = {layer.name for layer in plan.net_param.layer}
    assert "loss1/classifier" not in names and "loss3/classifier" in names


def test_deploy_net_with_softmax_output_gives_probabilities():
    plan = plan_inference(read_net(ZOO / "bvlc/bvlc_googlenet/deploy.prototxt"), input_blob="data",
                          sample_shape=None, batch_size=1)
    assert plan.score_blob == "prob" and plan.scores_are_probabilities


def test_unknown_output_blob_and_label_dependent_blobs_are_refused():
    net = read_net(ZOO / "bvlc/mnist/lenet_train_test.prototxt")
    with pytest.raises(NetDefinitionError, match="'fc7'"):
        plan_inference(net, input_blob="data", sample_shape=(1, 28, 28), batch_size=1,
                       feature_blobs=["fc7"])
    with pytest.raises(NetDefinitionError, match="transform cannot feed"):
        plan_inference(net, input_blob="data", sample_shape=(1, 28, 28), batch_size=1,
                       feature_blobs=["accuracy"])
    with pytest.raises(NetDefinitionError, match="no data or Input layer produces blob 'pixels'"):
        plan_inference(net, input_blob="pixels", sample_shape=(1, 28, 28), batch_size=1)


def test_data_layer_without_declared_shape_asks_for_sample_shape():
    with pytest.raises(NetDefinitionError, match="sampleShape"):
        plan_inference(read_net(ZOO / "bvlc/mnist/lenet_train_test.prototxt"), input_blob="data",
                       sample_shape=None, batch_size=1)


# ----------------------------------------------------------------------------- columns


def _schema(**cols) -> T.StructType:
    return T.StructType([T.StructField(n, t) for n, t in cols.items()])


@pytest.mark.parametrize("dtype, kind", [
    (T.BinaryType(), "binary"), (T.ArrayType(T.FloatType()), "array"),
    (T.ArrayType(T.IntegerType()), "array"), (VectorUDT(), "vector"),
    (_schema(origin=T.StringType(), height=T.IntegerType(), width=T.IntegerType(),
             nChannels=T.IntegerType(), mode=T.IntegerType(), data=T.BinaryType()), "image"),
])
def test_feature_kinds(dtype, kind):
    assert feature_kind(_schema(image=dtype), "image") == kind


def test_missing_and_wrong_type_columns_name_the_column_and_the_expectation():
    with pytest.raises(ColumnError, match=r"'img' is not in the DataFrame; its columns are: image"):
        feature_kind(_schema(image=T.BinaryType()), "img")
    with pytest.raises(ColumnError, match=r"'image' has type string; expected binary"):
        feature_kind(_schema(image=T.StringType()), "image")
    with pytest.raises(ColumnError, match=r"label column 'label' has type string"):
        label_dtype(_schema(label=T.StringType()), "label")
    assert label_dtype(_schema(label=T.DoubleType()), "label") == "float32"
    assert label_dtype(_schema(label=T.LongType()), "label") == "int32"


def test_decoding_raw_bytes_vectors_and_sizes():
    img = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    np.testing.assert_array_equal(decode_feature("binary", img.tobytes(), (2, 3, 4)), img)
    vec = Vectors.dense(img.ravel().astype(float))
    np.testing.assert_array_equal(decode_feature("vector", vec, (2, 3, 4)), img.astype(np.float32))
    with pytest.raises(ValueError, match=r"23 values, expected 24"):
        decode_feature("array", list(range(23)), (2, 3, 4))
    with pytest.raises(ValueError, match=r"neither PNG nor JPEG nor raw pixels of shape 1×28×28"):
        decode_feature("binary", b"\x00" * 10, (1, 28, 28))


def test_decoding_png_follows_the_expected_channels():
    from hovcaffe.data.codecs import encode_png

    gray = (np.arange(28 * 28) % 256).astype(np.uint8).reshape(1, 28, 28)
    np.testing.assert_array_equal(decode_feature("binary", encode_png(gray), (1, 28, 28)), gray)
    with pytest.raises(ValueError, match=r"shape 1×28×28, expected 1×32×32"):
        decode_feature("binary", encode_png(gray), (1, 32, 32))


def test_caffe_model_from_files_checks_the_weights(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text('name: "n" layer { name: "in" type: "Input" top: "data" '
                   'input_param { shape { dim: 1 dim: 4 } } }')
    parse_net(net.read_text())
    bad = tmp_path / "w.caffemodel"
    bad.write_bytes(b"not a protobuf at all")
    with pytest.raises(UserInputError, match="w.caffemodel"):
        CaffeModel.from_files(str(net), str(bad))
    with pytest.raises(UserInputError, match="does not exist"):
        CaffeModel.from_files(str(net), str(tmp_path / "missing.caffemodel"))
