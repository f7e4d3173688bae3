"""Legacy Caffe nets and solvers upgrade to the current form, as Caffe's upgrade_proto does."""
from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest

from conftest import ZOO
from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe import io
from hovcaffe.caffe.upgrade import V1_TYPE_NAMES, upgrade_net
from hovcaffe.errors import NetDefinitionError, SolverError

# LeNet exactly as Caffe's examples/mnist/lenet_train_test.prototxt read in its V1 days:
# enum types, blobs_lr, `layers` entries. Written here from scratch.
V1_LENET = """
name: "LeNet"
layers {
  name: "mnist"  type: DATA  top: "data"  top: "label"
  data_param { source: "examples/mnist/mnist_train_lmdb" backend: LMDB batch_size: 64 }
  transform_param { scale: 0.00390625 }
  include: { phase: TRAIN }
}
layers {
  name: "mnist"  type: DATA  top: "data"  top: "label"
  data_param { source: "examples/mnist/mnist_test_lmdb" backend: LMDB batch_size: 100 }
  transform_param { scale: 0.00390625 }
  include: { phase: TEST }
}
layers {
  name: "conv1"  type: CONVOLUTION  bottom: "data"  top: "conv1"
  blobs_lr: 1  blobs_lr: 2
  convolution_param {
    num_output: 20  kernel_size: 5  stride: 1
    weight_filler { type: "xavier" }  bias_filler { type: "constant" }
  }
}
layers {
  name: "pool1"  type: POOLING  bottom: "conv1"  top: "pool1"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "conv2"  type: CONVOLUTION  bottom: "pool1"  top: "conv2"
  blobs_lr: 1  blobs_lr: 2
  convolution_param {
    num_output: 50  kernel_size: 5  stride: 1
    weight_filler { type: "xavier" }  bias_filler { type: "constant" }
  }
}
layers {
  name: "pool2"  type: POOLING  bottom: "conv2"  top: "pool2"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 }
}
layers {
  name: "ip1"  type: INNER_PRODUCT  bottom: "pool2"  top: "ip1"
  blobs_lr: 1  blobs_lr: 2
  inner_product_param {
    num_output: 500
    weight_filler { type: "xavier" }  bias_filler { type: "constant" }
  }
}
layers { name: "relu1"  type: RELU  bottom: "ip1"  top: "ip1" }
layers {
  name: "ip2"  type: INNER_PRODUCT  bottom: "ip1"  top: "ip2"
  blobs_lr: 1  blobs_lr: 2
  inner_product_param {
    num_output: 10
    weight_filler { type: "xavier" }  bias_filler { type: "constant" }
  }
}
layers {
  name: "accuracy"  type: ACCURACY  bottom: "ip2"  bottom: "label"  top: "accuracy"
  include: { phase: TEST }
}
layers { name: "loss"  type: SOFTMAX_LOSS  bottom: "ip2"  bottom: "label"  top: "loss" }
"""


def test_v1_lenet_upgrades_to_the_current_lenet(caplog):
    with caplog.at_level(logging.INFO, logger="hovcaffe.caffe.upgrade"):
        upgraded = io.parse_net(V1_LENET, "lenet_v1.prototxt")
    current = io.read_net(ZOO / "bvlc" / "mnist" / "lenet_train_test.prototxt")
    assert upgraded == current
    records = [r for r in caplog.records if r.name == "hovcaffe.caffe.upgrade"]
    assert len(records) == 1 and "lenet_v1.prototxt" in records[0].getMessage()


def test_current_file_is_not_reported_as_upgraded(caplog):
    with caplog.at_level(logging.INFO, logger="hovcaffe.caffe.upgrade"):
        io.read_net(ZOO / "bvlc" / "mnist" / "lenet_train_test.prototxt")
    assert not caplog.records


def test_every_v1_enum_value_has_a_v2_type():
    names = set(pb.V1LayerParameter.LayerType.keys())
    assert names == set(V1_TYPE_NAMES)
    for name in names - {"NONE"}:
        net = io.parse_net(f'layers {{ name: "x" type: {name} }}')
        assert net.layer[0].type == V1_TYPE_NAMES[name]
    # Spot checks of the irregular spellings, from Caffe's layer factory names.
    assert V1_TYPE_NAMES["SOFTMAX_LOSS"] == "SoftmaxWithLoss"
    assert V1_TYPE_NAMES["HDF5_DATA"] == "HDF5Data" and V1_TYPE_NAMES["TANH"] == "TanH"


def test_v1_param_names_share_modes_and_decay():
    net = io.parse_net("""
      layers { name: "a" type: INNER_PRODUCT bottom: "x" top: "y"
               param: "w" param: "b" blob_share_mode: PERMISSIVE
               blobs_lr: 1 blobs_lr: 2 weight_decay: 1 weight_decay: 0 loss_weight: 0.5
               inner_product_param { num_output: 3 } }""")
    layer = net.layer[0]
    assert [(p.name, p.lr_mult, p.decay_mult) for p in layer.param] == [("w", 1, 1), ("b", 2, 0)]
    assert layer.param[0].share_mode == pb.ParamSpec.PERMISSIVE
    assert not layer.param[1].HasField("share_mode")
    assert list(layer.loss_weight) == [0.5] and layer.inner_product_param.num_output == 3


def test_v1_data_layer_transform_fields_move_to_transform_param():
    net = io.parse_net("""
      layers { name: "d" type: DATA top: "data" top: "label"
               data_param { source: "db" batch_size: 8 scale: 0.5 mean_file: "m.binaryproto"
                            crop_size: 20 mirror: true } }""")
    layer = net.layer[0]
    t = layer.transform_param
    assert (t.scale, t.mean_file, t.crop_size, t.mirror) == (0.5, "m.binaryproto", 20, True)
    for f in ("scale", "mean_file", "crop_size", "mirror"):
        assert not layer.data_param.HasField(f)
    assert layer.data_param.source == "db" and layer.data_param.batch_size == 8


def test_v0_net_with_padding_layer_upgrades():
    net = io.parse_net("""
      name: "v0"
      input: "data" input_dim: 1 input_dim: 3 input_dim: 10 input_dim: 10
      input: "label" input_dim: 1 input_dim: 1 input_dim: 1 input_dim: 1
      layers { layer { name: "pad1" type: "padding" pad: 2 } bottom: "data" top: "pad1" }
      layers { layer { name: "conv1" type: "conv" num_output: 4 kernelsize: 3 stride: 2
                       biasterm: false blobs_lr: 1 weight_decay: 1
                       weight_filler { type: "gaussian" std: 0.01 } }
               bottom: "pad1" top: "conv1" }
      layers { layer { name: "pool1" type: "pool" pool: AVE kernelsize: 2 stride: 2 }
               bottom: "conv1" top: "pool1" }
      layers { layer { name: "drop" type: "dropout" dropout_ratio: 0.3 } bottom: "pool1" top: "pool1" }
      layers { layer { name: "fc" type: "innerproduct" num_output: 2 } bottom: "pool1" top: "fc" }
      layers { layer { name: "loss" type: "softmax_loss" } bottom: "fc" bottom: "label" top: "loss" }
    """)
    names = [l.name for l in net.layer]
    assert names == ["input", "conv1", "pool1", "drop", "fc", "loss"]
    assert [l.type for l in net.layer] == ["Input", "Convolution", "Pooling", "Dropout",
                                           "InnerProduct", "SoftmaxWithLoss"]
    assert [list(s.dim) for s in net.layer[0].input_param.shape] == [[1, 3, 10, 10], [1, 1, 1, 1]]
    conv = net.layer[1]
    assert list(conv.bottom) == ["data"]  # the padding layer is folded away
    cp = conv.convolution_param
    assert (list(cp.pad), list(cp.kernel_size), list(cp.stride), cp.num_output, cp.bias_term) \
        == ([2], [3], [2], 4, False)
    assert cp.weight_filler.type == "gaussian" and abs(cp.weight_filler.std - 0.01) < 1e-9
    assert [(p.lr_mult, p.decay_mult) for p in conv.param] == [(1, 1)]
    assert net.layer[2].pooling_param.pool == pb.PoolingParameter.AVE
    assert abs(net.layer[3].dropout_param.dropout_ratio - 0.3) < 1e-7


def test_padding_layer_into_a_non_conv_is_an_error():
    with pytest.raises(NetDefinitionError, match="padding layer 'pad1' feeds layer 'r'"):
        io.parse_net("""input: "data"
          layers { layer { name: "pad1" type: "padding" pad: 1 } bottom: "data" top: "p" }
          layers { layer { name: "r" type: "relu" } bottom: "p" top: "r" }""")


def test_mixing_layers_and_layer_is_an_error():
    with pytest.raises(NetDefinitionError, match="both V1 `layers"):
        io.parse_net('layers { name: "a" type: RELU } layer { name: "b" type: "ReLU" }', "mix.prototxt")


@pytest.mark.parametrize("text, shapes", [
    ('input: "data" input_dim: 10 input_dim: 3 input_dim: 227 input_dim: 227',
     [[10, 3, 227, 227]]),
    ('input: "a" input_shape { dim: 2 dim: 5 } input: "b" input_shape { dim: 7 }', [[2, 5], [7]]),
])
def test_input_fields_become_a_first_input_layer(text, shapes):
    net = io.parse_net(text + ' layer { name: "r" type: "ReLU" bottom: "a" top: "r" }')
    first = net.layer[0]
    assert (first.name, first.type) == ("input", "Input")
    assert [list(s.dim) for s in first.input_param.shape] == shapes
    assert not len(net.input) and not len(net.input_dim) and not len(net.input_shape)
    assert net.layer[1].name == "r"


def test_bare_input_without_dims_is_dropped():
    net = io.parse_net('input: "data" layer { name: "r" type: "ReLU" bottom: "data" top: "r" }')
    assert [l.name for l in net.layer] == ["r"] and not len(net.input)


def test_wrong_number_of_input_dims_is_an_error():
    with pytest.raises(NetDefinitionError, match="need 8 input_dim values"):
        io.parse_net('input: "a" input: "b" input_dim: 1 input_dim: 2 input_dim: 3 input_dim: 4')


def test_batchnorm_with_three_params_gets_zero_multipliers():
    net = io.parse_net("""layer { name: "bn" type: "BatchNorm" bottom: "x" top: "x"
        param { lr_mult: 1 } param { lr_mult: 1 decay_mult: 2 } param { } }""")
    assert [(p.lr_mult, p.decay_mult) for p in net.layer[0].param] == [(0, 0)] * 3


def test_v1_binary_caffemodel_with_legacy_shapes_loads(tmp_path: Path):
    rng = np.random.default_rng(0)
    w = rng.standard_normal((4, 3, 2, 2)).astype(np.float32)
    b = rng.standard_normal(4).astype(np.float32)
    ip = rng.standard_normal((5, 16)).astype(np.float64)
    old = pb.NetParameter(name="old")
    conv = old.layers.add(name="conv1", type=pb.V1LayerParameter.CONVOLUTION,
                          bottom=["data"], top=["conv1"], blobs_lr=[1, 2])
    conv.convolution_param.num_output = 4
    for arr, dims in ((w, (4, 3, 2, 2)), (b, (1, 1, 1, 4))):
        blob = conv.blobs.add(num=dims[0], channels=dims[1], height=dims[2], width=dims[3])
        blob.data.extend(arr.ravel().tolist())
    fc = old.layers.add(name="fc", type=pb.V1LayerParameter.INNER_PRODUCT, bottom=["conv1"], top=["fc"])
    blob = fc.blobs.add(num=1, channels=1, height=5, width=16)
    blob.double_data.extend(ip.ravel().tolist())
    path = tmp_path / "old.caffemodel"
    path.write_bytes(old.SerializeToString())

    net = io.read_caffemodel(path)
    assert [(l.name, l.type) for l in net.layer] == [("conv1", "Convolution"), ("fc", "InnerProduct")]
    got = [io.blob_to_array(x) for x in net.layer[0].blobs]
    assert np.array_equal(got[0], w) and got[1].shape == (1, 1, 1, 4)
    assert np.array_equal(got[1].ravel(), b)
    assert np.array_equal(io.blob_to_array(net.layer[1].blobs[0]).reshape(5, 16),
                          ip.astype(np.float32))
    assert [p.lr_mult for p in net.layer[0].param] == [1, 2]


def test_solver_type_enum_becomes_type_string(caplog):
    with caplog.at_level(logging.INFO, logger="hovcaffe.caffe.upgrade"):
        solver = io.parse_solver('base_lr: 0.1 solver_type: ADAM lr_policy: "fixed"', "s.prototxt")
    assert solver.type == "Adam" and not solver.HasField("solver_type")
    assert "s.prototxt" in caplog.text


@pytest.mark.parametrize("enum, name", [("SGD", "SGD"), ("NESTEROV", "Nesterov"),
                                        ("ADAGRAD", "AdaGrad"), ("RMSPROP", "RMSProp"),
                                        ("ADADELTA", "AdaDelta"), ("ADAM", "Adam")])
def test_every_solver_type_maps(enum, name):
    assert io.parse_solver(f"solver_type: {enum}").type == name


def test_solver_type_and_type_both_set_is_an_error():
    with pytest.raises(SolverError, match='both the legacy `solver_type: ADAM` and `type: "SGD"`'):
        io.parse_solver('solver_type: ADAM type: "SGD"', "s.prototxt")


def test_solver_inline_v1_net_is_upgraded():
    solver = io.read_solver(ZOO / "bvlc" / "mnist" / "lenet_consolidated_solver.prototxt")
    assert len(solver.net_param.layer) and not len(solver.net_param.layers)
    assert solver.net_param.layer[0].type


def test_upgrade_net_is_idempotent():
    net = io.parse_net(V1_LENET, upgrade=False)
    assert upgrade_net(net)
    assert upgrade_net(net) == []


# ----------------------------------------------------------------------------- `hovcaffe upgrade`

def _run(args):
    from click.testing import CliRunner

    from hovcaffe.cli import main
    return CliRunner().invoke(main, args)


def test_upgrade_command_rewrites_a_v1_prototxt(tmp_path: Path):
    src = tmp_path / "old.prototxt"
    src.write_text(V1_LENET)
    out = tmp_path / "new.prototxt"
    result = _run(["upgrade", str(src), str(out)])
    assert result.exit_code == 0, result.output
    assert "V1 layers -> current layer format" in result.output
    text = out.read_text()
    assert "layers {" not in text and 'type: "Convolution"' in text
    assert io.read_net(out) == io.read_net(ZOO / "bvlc" / "mnist" / "lenet_train_test.prototxt")


def test_upgrade_command_prints_an_upgraded_solver(tmp_path: Path):
    src = tmp_path / "solver.prototxt"
    src.write_text('net: "x.prototxt"\nbase_lr: 0.01\nsolver_type: NESTEROV\n')
    result = _run(["upgrade", str(src)])
    assert result.exit_code == 0, result.output
    assert 'type: "Nesterov"' in result.stdout and "solver_type" not in result.stdout


def test_upgrade_command_rewrites_a_binary_caffemodel(tmp_path: Path):
    old = pb.NetParameter(name="old")
    layer = old.layers.add(name="ip", type=pb.V1LayerParameter.INNER_PRODUCT, blobs_lr=[1, 2])
    blob = layer.blobs.add(num=1, channels=1, height=2, width=3)
    blob.data.extend([1, 2, 3, 4, 5, 6])
    src, dst = tmp_path / "old.caffemodel", tmp_path / "new.caffemodel"
    src.write_bytes(old.SerializeToString())
    result = _run(["upgrade", str(src), str(dst)])
    assert result.exit_code == 0, result.output
    new = io.read_caffemodel(dst, upgrade=False)
    assert not len(new.layers) and new.layer[0].type == "InnerProduct"
    assert io.blob_to_array(new.layer[0].blobs[0]).tolist() == [[[[1, 2, 3], [4, 5, 6]]]]


def test_upgrade_command_reports_parse_errors_with_exit_2(tmp_path: Path):
    src = tmp_path / "bad.prototxt"
    src.write_text('layer { name: "a" typo: 1 }')
    result = _run(["upgrade", str(src)])
    assert result.exit_code == 2
    assert 'bad.prototxt:1:19: unknown field "typo" in LayerParameter (layer "a")' in result.output

