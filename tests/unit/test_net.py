"""CaffeNet: dataflow, in-place versions, loss weights, backward rules, sharing, phases, inputs."""
from __future__ import annotations

import sys
import types

import h5py
import numpy as np
import pytest
import torch

from conftest import ZOO
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net, read_net
from hovcaffe.errors import NetDefinitionError, ShapeError, UnsupportedLayerError, UserInputError
from hovcaffe.layers.base import CaffeLayer
from hovcaffe.net import CaffeNet

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def net_of(body: str, phase=TRAIN, inputs="x:2,3", **kw) -> CaffeNet:
    """A net with an Input layer `name:d0,d1 ...` followed by `body`."""
    decl = []
    for spec in inputs.split():
        name, dims = spec.split(":")
        decl.append((name, [int(d) for d in dims.split(",")]))
    head = "".join(f'top: "{n}" ' for n, _ in decl)
    shapes = "".join("shape { " + "".join(f"dim: {d} " for d in dims) + "} " for _, dims in decl)
    text = f'layer {{ name: "in" type: "Input" {head} input_param {{ {shapes} }} }}\n{body}'
    return CaffeNet(parse_net(text), phase, **kw)


def t(a, grad=False):
    return torch.tensor(np.asarray(a, np.float32)).requires_grad_(grad)


X = np.array([[-1.0, 2.0, -3.0], [4.0, -5.0, 6.0]], np.float32)


def test_in_place_tops_are_new_versions_and_earlier_readers_see_the_old_value():
    net = net_of('''
      layer { name: "p" type: "Power" bottom: "x" top: "c" power_param { scale: 2 } }
      layer { name: "before" type: "Power" bottom: "c" top: "a" }
      layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }
      layer { name: "after" type: "Power" bottom: "c" top: "b" }''')
    blobs = net(x=t(X))
    np.testing.assert_array_equal(blobs["a"].numpy(), 2 * X)
    np.testing.assert_array_equal(blobs["b"].numpy(), np.maximum(2 * X, 0))
    np.testing.assert_array_equal(blobs["c"].numpy(), np.maximum(2 * X, 0))
    assert len(net.versions["c"]) == 2 and net.output_names == ["a", "b"]   # c is consumed
    assert net.blob_shapes == {"x": (2, 3), "c": (2, 3), "a": (2, 3), "b": (2, 3)}


def test_fan_out_gradients_are_summed_and_loss_weights_scale_the_objective():
    net = net_of('''
      layer { name: "p1" type: "Power" bottom: "x" top: "y1" power_param { power: 2 } }
      layer { name: "p2" type: "Power" bottom: "x" top: "y2" loss_weight: 3 }
      layer { name: "eu" type: "EuclideanLoss" bottom: "y1" bottom: "t" top: "l" loss_weight: 0.5 }
      layer { name: "eu2" type: "EuclideanLoss" bottom: "y1" bottom: "t" }''',
                 inputs="x:2,3 t:2,3")
    target = np.ones_like(X)
    x = t(X, grad=True)
    blobs = net(x=x, t=t(target))
    loss = net.objective(blobs)
    eu = ((X ** 2 - target) ** 2).sum() / (2 * 2)
    np.testing.assert_allclose(float(loss.detach()), 0.5 * eu + eu + 3 * X.sum(), rtol=1e-6)
    loss.backward()
    grad = 1.5 * 2 * X * (X ** 2 - target) / 2 + 3
    np.testing.assert_allclose(x.grad.numpy(), grad, rtol=1e-5)
    # the loss layer without a top got an anonymous one, which is no net output
    assert len(net.loss_weights) == 3 and "l" in net.output_names
    assert not any(n.startswith("(") for n in net.output_names)


def test_propagate_down_false_blocks_the_gradient_unless_force_backward():
    body = '''
      layer { name: "eu" type: "EuclideanLoss" bottom: "x" bottom: "t" top: "l"
              propagate_down: true propagate_down: false }'''
    for force, expect_t_grad in (("", False), ("force_backward: true\n", True)):
        net = CaffeNet(parse_net(force + 'layer { name: "in" type: "Input" top: "x" top: "t" '
                                 'input_param { shape { dim: 2 dim: 3 } } }' + body), TRAIN)
        x, tt = t(X, grad=True), t(np.zeros_like(X), grad=True)
        net.objective(net(x=x, t=tt)).backward()
        assert x.grad is not None
        assert (tt.grad is not None) == expect_t_grad


def test_labels_and_no_backward_layers_get_no_gradient():
    net = net_of('''
      layer { name: "sce" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "lab" top: "l" }
      layer { name: "th" type: "Threshold" bottom: "x" top: "th" loss_weight: 1 }''',
                 inputs="x:2,3 lab:2,3")
    x, lab = t(X, grad=True), t(np.full_like(X, 0.3), grad=True)
    net.objective(net(x=x, lab=lab)).backward()
    assert lab.grad is None
    sig = 1 / (1 + np.exp(-X.astype(np.float64)))
    np.testing.assert_allclose(x.grad.numpy(), (sig - 0.3) / 2, rtol=1e-5)   # Threshold adds 0


SHARED = '''
  layer { name: "ip1" type: "InnerProduct" bottom: "x" top: "a"
          param { name: "w" lr_mult: 1 decay_mult: 2 } param { lr_mult: 2 decay_mult: 0 }
          inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
  layer { name: "ip2" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" }
          inner_product_param { num_output: 4 bias_term: false } }
  layer { name: "bn" type: "BatchNorm" bottom: "a" top: "an" }
  layer { name: "frozen" type: "InnerProduct" bottom: "b" top: "c" param { lr_mult: 0 }
          inner_product_param { num_output: 2 } }'''


def test_param_sharing_lr_mult_and_learnable_order():
    net = net_of(SHARED)
    assert net.layers["ip1"].blobs[0] is net.layers["ip2"].blobs[0]
    params = net.learnable_params()
    assert [p.name for p in params] == ["ip1/0", "ip1/1", "bn/0", "bn/1", "bn/2", "frozen/0",
                                        "frozen/1"]
    assert [(p.lr_mult, p.decay_mult) for p in params] == [
        (1, 2), (2, 0), (0, 1), (0, 1), (0, 1), (0, 1), (1, 1)]
    assert [p.param.requires_grad for p in params] == [True, True, False, False, False, False, True]
    x = t(X, grad=True)
    blobs = net(x=x)
    (blobs["a"].sum() + blobs["b"].sum()).backward()
    # the shared weight accumulates the gradients of both layers
    w = net.layers["ip1"].blobs[0]
    np.testing.assert_allclose(w.grad.numpy(), np.tile(X.sum(0), (4, 1)) * 2, rtol=1e-5)
    groups = net.param_groups()
    assert sorted((g["lr_mult"], g["decay_mult"], len(g["params"])) for g in groups) == \
        [(1, 1, 1), (1, 2, 1), (2, 0, 1)]


@pytest.mark.parametrize("body,error,match", [
    ('layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } '
     'inner_product_param { num_output: 4 } } '
     'layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" } '
     'inner_product_param { num_output: 5 } }', ShapeError, "owned by layer 'a'.*\\[4, 3\\].*\\[5, 3\\]"),
    ('layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" lr_mult: 1 } '
     'inner_product_param { num_output: 4 } } '
     'layer { name: "b" type: "InnerProduct" bottom: "x" top: "b" param { name: "w" lr_mult: 2 } '
     'inner_product_param { num_output: 4 } }', NetDefinitionError, "mismatched lr_mult"),
    ('layer { name: "a" type: "ReLU" bottom: "nope" top: "a" }', NetDefinitionError,
     "Unknown bottom blob 'nope'"),
    ('layer { name: "a" type: "ReLU" bottom: "x" top: "a" } '
     'layer { name: "b" type: "ReLU" bottom: "x" top: "a" }', NetDefinitionError,
     "multiple sources"),
    ('layer { name: "a" type: "Convolutoin" bottom: "x" top: "a" }', UnsupportedLayerError,
     "(?i)did you mean 'Convolution'"),
    ('layer { name: "a" type: "ReLU" bottom: "x" top: "a" loss_weight: 1 loss_weight: 2 }',
     NetDefinitionError, "loss_weight"),
    ('layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param {} param {} param {} '
     'inner_product_param { num_output: 4 } }', NetDefinitionError, "3 param specs"),
])
def test_net_definition_errors_name_the_layer(body, error, match):
    with pytest.raises(error, match=match):
        net_of(body)


def test_duplicate_layer_names_are_accepted_like_caffe():
    net = net_of('''
      layer { name: "a" type: "InnerProduct" bottom: "x" top: "y"
              inner_product_param { num_output: 2 } }
      layer { name: "a" type: "InnerProduct" bottom: "x" top: "z"
              inner_product_param { num_output: 3 } }
      layer { name: "b.c" type: "ReLU" bottom: "z" top: "w" }''')
    assert list(net.layers) == ["a", "a#2", "b\u2024c"]
    assert net.layer("a") is net.layers["a"] and net.layer("b.c") is net.layers["b\u2024c"]
    assert [p.name for p in net.learnable_params()] == ["a/0", "a/1", "a#2/0", "a#2/1"]
    assert net(x=t(X))["w"].shape == (2, 3)


def test_permissive_sharing_requires_equal_shapes_here():
    with pytest.raises(NetDefinitionError, match="PERMISSIVE"):
        net_of('layer { name: "a" type: "InnerProduct" bottom: "x" top: "a" param { name: "w" } '
               'inner_product_param { num_output: 4 } } '
               'layer { name: "b" type: "InnerProduct" bottom: "y" top: "b" '
               'param { name: "w" share_mode: PERMISSIVE } inner_product_param { num_output: 2 } }',
               inputs="x:2,3 y:2,6")


def test_share_from_uses_the_train_nets_parameters():
    text = 'layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }' \
        + SHARED + 'layer { name: "drop" type: "Dropout" bottom: "c" top: "c" ' \
                   'include { phase: TRAIN } }'
    train = CaffeNet(parse_net(text), TRAIN)
    test = CaffeNet(parse_net(text), TEST)
    assert "drop" in train.layers and "drop" not in test.layers
    test.share_from(train)
    for name, module in test.layers.items():
        for i, p in enumerate(module.blobs):
            assert p is train.layers[name].blobs[i]
    assert test.learnable_params()[0].param is train.learnable_params()[0].param


def test_layer_phase_field_overrides_the_net_phase():
    net = net_of('layer { name: "d" type: "Dropout" bottom: "x" top: "y" phase: TRAIN }',
                 phase=TEST, inputs="x:400,50")
    torch.manual_seed(0)
    y = net(x=torch.ones(400, 50))["y"]
    assert 0.4 < float((y == 0).float().mean()) < 0.6


def test_data_layers_are_inputs_with_prototxt_shapes(tmp_path):
    with h5py.File(tmp_path / "a.h5", "w") as f:
        f["data"] = np.zeros((10, 3, 5), np.float32)
        f["label"] = np.zeros((10,), np.float32)
    (tmp_path / "list.txt").write_text("a.h5\n")
    text = f'''
      layer {{ name: "mem" type: "MemoryData" top: "m" top: "ml"
              memory_data_param {{ batch_size: 4 channels: 2 height: 3 width: 5 }} }}
      layer {{ name: "h5" type: "HDF5Data" top: "data" top: "label"
              hdf5_data_param {{ source: "list.txt" batch_size: 7 }} }}
      layer {{ name: "db" type: "Data" top: "img" data_param {{ source: "x" batch_size: 8 }} }}'''
    with pytest.raises(ShapeError, match="input_shapes=.*'img'"):
        CaffeNet(parse_net(text), TRAIN, source=str(tmp_path / "net.prototxt"))
    net = CaffeNet(parse_net(text), TRAIN, source=str(tmp_path / "net.prototxt"),
                   input_shapes={"img": (8, 1, 4, 4)})
    assert net.input_names == ["m", "ml", "data", "label", "img"]
    assert [lp.name for lp in net.data_layers] == ["mem", "h5", "db"]
    assert [net.blob_shapes[n] for n in net.input_names] == [
        (4, 2, 3, 5), (4,), (7, 3, 5), (7,), (8, 1, 4, 4)]


def test_forward_checks_its_inputs():
    net = net_of('layer { name: "r" type: "ReLU" bottom: "x" top: "y" }')
    with pytest.raises(UserInputError, match="missing net input 'x'"):
        net()
    with pytest.raises(UserInputError, match="unknown net inputs \\['z'\\]"):
        net(x=t(X), z=t(X))


class Doubler(CaffeLayer):
    """A PyTorch replacement for a Caffe Python layer (used by the test below)."""

    def __init__(self, param, bottom_shapes, phase):
        super().__init__(param)

    def output_shapes(self, bottom_shapes):
        return [tuple(bottom_shapes[0])]

    def forward(self, x):
        return [2 * x]


def test_python_layers_need_the_flag_and_a_caffelayer_replacement(monkeypatch):
    mod = types.ModuleType("hovcaffe_test_pylayers")
    mod.Doubler, mod.NotALayer = Doubler, object
    monkeypatch.setitem(sys.modules, "hovcaffe_test_pylayers", mod)
    body = ('layer { name: "py" type: "Python" bottom: "x" top: "y" '
            'python_param { module: "hovcaffe_test_pylayers" layer: "%s" } }')
    with pytest.raises(UnsupportedLayerError, match="refused"):
        net_of(body % "Doubler")
    net = net_of(body % "Doubler", allow_python_layers=True)
    np.testing.assert_array_equal(net(x=t(X))["y"].numpy(), 2 * X)
    with pytest.raises(NetDefinitionError, match="not a hovcaffe CaffeLayer"):
        net_of(body % "NotALayer", allow_python_layers=True)


def test_zoo_nets_build_with_caffes_shapes():
    g = CaffeNet(read_net(ZOO / "bvlc/bvlc_googlenet/deploy.prototxt"), TEST)
    assert g.blob_shapes["pool5/7x7_s1"] == (10, 1024, 1, 1)
    assert g.blob_shapes["inception_3a/output"] == (10, 256, 28, 28)
    assert g.blob_shapes["pool1/3x3_s2"] == (10, 64, 56, 56)   # ceil-mode pooling of 112
    assert g.output_names == ["prob"]
    gt = CaffeNet(read_net(ZOO / "bvlc/bvlc_googlenet/train_val.prototxt"), TRAIN,
                  input_shapes={"data": (2, 3, 224, 224), "label": (2,)})
    assert gt.loss_weights == pytest.approx({"loss1/loss1": 0.3, "loss2/loss2": 0.3,
                                             "loss3/loss3": 1.0})
    c = CaffeNet(read_net(ZOO / "bvlc/bvlc_reference_caffenet/deploy.prototxt"), TEST)
    assert c.blob_shapes["pool5"] == (10, 256, 6, 6) and c.blob_shapes["prob"] == (10, 1000)
    lenet = CaffeNet(read_net(ZOO / "bvlc/mnist/lenet_train_test.prototxt"), TEST,
                     input_shapes={"data": (100, 1, 28, 28)})
    assert lenet.input_names == ["data", "label"] and lenet.output_names == ["accuracy", "loss"]


def test_vision_layer_families_register_caffes_types():
    from hovcaffe.layers import list_layers
    assert list_layers("conv") == ["Convolution", "Deconvolution", "Im2col"]
    assert list_layers("pooling") == ["Pooling", "SPP"]
    assert list_layers("lrn") == ["LRN"]
    assert list_layers("linear") == ["Embed", "InnerProduct"]
    assert list_layers("normalization") == ["BatchNorm", "Bias", "MVN", "Scale"]
    assert list_layers("neuron") == sorted(["ReLU", "PReLU", "ELU", "Sigmoid", "TanH", "AbsVal",
                                            "BNLL", "Power", "Exp", "Log", "Threshold", "Swish",
                                            "Clip", "Dropout"])


def test_inputs_of_the_wrong_shape_name_the_layer_and_both_shapes():
    import torch

    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import parse_net
    from hovcaffe.errors import ShapeError
    from hovcaffe.net import CaffeNet

    net = CaffeNet(parse_net("""
        layer { name: "in" type: "Input" top: "data" input_param { shape { dim: 2 dim: 1 dim: 8 dim: 8 } } }
        layer { name: "conv" type: "Convolution" bottom: "data" top: "c"
                convolution_param { num_output: 2 kernel_size: 3 } }
    """), caffe_pb2.TEST)
    with pytest.raises(ShapeError, match=r"layer 'conv' \(Convolution\) got bottoms of shape "
                                         r"\[\[2, 3, 8, 8\]\] but the net was built for \[\[2, 1, 8, 8\]\]"):
        net(data=torch.zeros(2, 3, 8, 8))
    assert net(data=torch.zeros(5, 1, 8, 8))["c"].shape == (5, 2, 6, 6)  # another batch size is fine


def test_layers_named_like_module_methods_build_and_keep_their_caffe_names():
    """Caffe accepts any layer name; "eval", "train", "forward" and "keys" are attributes of
    torch's ModuleDict, which refused them as keys ("attribute 'eval' already exists")."""
    body = "".join(
        f'layer {{ name: "{n}" type: "InnerProduct" bottom: "{b}" top: "{n}" '
        'inner_product_param { num_output: 3 bias_term: false } }\n'
        for n, b in (("eval", "x"), ("train", "eval"), ("forward", "train"), ("keys", "forward")))
    net = net_of(body, phase=TEST)
    w = {}
    for name in ("eval", "train", "forward", "keys"):
        layer = net.layer(name)
        assert layer is not None, name
        w[name] = torch.randn(3, 3)
        with torch.no_grad():
            layer.blobs[0].copy_(w[name])
    out = net(x=t(X))["keys"]
    expected = torch.from_numpy(X)
    for name in ("eval", "train", "forward", "keys"):   # y = x W^T, one layer after another
        expected = expected @ w[name].T
    assert torch.allclose(out, expected, rtol=1e-5, atol=1e-5)
