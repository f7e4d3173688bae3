"""Our caffe.proto keeps Caffe's wire numbers (checked against docs/caffe-semantics.md#wire-format)."""
from __future__ import annotations

import pytest

from hovcaffe.caffe import caffe_pb2 as pb

# message -> {field: number}, the facts listed for a hand-written reader of Caffe files.
DOCUMENTED = {
    pb.NetParameter: dict(name=1, layers=2, input=3, input_dim=4, force_backward=5, state=6,
                          debug_info=7, input_shape=8, layer=100),
    pb.LayerParameter: dict(name=1, type=2, bottom=3, top=4, loss_weight=5, param=6, blobs=7,
                            include=8, exclude=9, phase=10, propagate_down=11),
    pb.BlobProto: dict(num=1, channels=2, height=3, width=4, data=5, diff=6, shape=7,
                       double_data=8, double_diff=9),
    pb.V1LayerParameter: dict(layer=1, bottom=2, top=3, name=4, type=5, blobs=6, blobs_lr=7,
                              weight_decay=8, loss_weight=35, param=1001, blob_share_mode=1002,
                              include=32, exclude=33, convolution_param=10, pooling_param=19,
                              inner_product_param=17),
    pb.V0LayerParameter: dict(name=1, type=2, num_output=3, biasterm=4, blobs=50, blobs_lr=51,
                              weight_decay=52),
    pb.SolverState: dict(iter=1, learned_net=2, history=3, current_step=4),
    pb.Datum: dict(channels=1, height=2, width=3, data=4, label=5, float_data=6, encoded=7),
}


@pytest.mark.parametrize("message", list(DOCUMENTED), ids=lambda m: m.DESCRIPTOR.name)
def test_documented_field_numbers(message):
    fields = message.DESCRIPTOR.fields_by_name
    assert {k: fields[k].number for k in DOCUMENTED[message]} == DOCUMENTED[message]


def test_blob_values_are_packed():
    for name in ("data", "diff", "double_data", "double_diff"):
        assert pb.BlobProto.DESCRIPTOR.fields_by_name[name].GetOptions().packed
    assert pb.BlobShape.DESCRIPTOR.fields_by_name["dim"].GetOptions().packed


@pytest.mark.parametrize("message, field, default", [
    (pb.NetState, "phase", pb.TEST), (pb.ParamSpec, "lr_mult", 1.0), (pb.ParamSpec, "decay_mult", 1.0),
    (pb.PoolingParameter, "round_mode", pb.PoolingParameter.CEIL),
    (pb.LossParameter, "normalization", pb.LossParameter.VALID),
    (pb.SolverParameter, "type", "SGD"), (pb.SolverParameter, "random_seed", -1),
    (pb.SolverParameter, "momentum2", pytest.approx(0.999)), (pb.SolverParameter, "delta", pytest.approx(1e-8)),
    (pb.SolverParameter, "rms_decay", pytest.approx(0.99)), (pb.SolverParameter, "clip_gradients", -1),
    (pb.BatchNormParameter, "moving_average_fraction", pytest.approx(0.999)),
    (pb.BatchNormParameter, "eps", pytest.approx(1e-5)), (pb.LRNParameter, "local_size", 5),
    (pb.LRNParameter, "beta", 0.75), (pb.ConvolutionParameter, "bias_term", True),
    (pb.ReshapeParameter, "num_axes", -1), (pb.FillerParameter, "type", "constant"),
    (pb.FillerParameter, "std", 1.0), (pb.DropoutParameter, "dropout_ratio", 0.5),
    (pb.ImageDataParameter, "batch_size", 1), (pb.InfogainLossParameter, "axis", 1),
    (pb.SwishParameter, "beta", 1.0), (pb.CropParameter, "axis", 2),
])
def test_defaults_that_change_numbers(message, field, default):
    assert getattr(message(), field) == default


def test_layer_parameter_has_every_layer_param_of_master():
    names = set(pb.LayerParameter.DESCRIPTOR.fields_by_name)
    for expected in ("clip_param", "swish_param", "recurrent_param", "spp_param", "infogain_loss_param",
                     "python_param", "window_data_param", "parameter_param", "crop_param", "input_param",
                     "bias_param", "scale_param", "embed_param", "tile_param", "elu_param"):
        assert expected in names
    numbers = {f.name: f.number for f in pb.LayerParameter.DESCRIPTOR.fields}
    assert (numbers["clip_param"], numbers["swish_param"], numbers["recurrent_param"]) == (148, 147, 146)
