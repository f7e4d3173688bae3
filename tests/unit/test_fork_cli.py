"""Issue 16's command-line bugs: the anonymous loss top, an input that is also an output in
ONNX, the --allow-python-layers advice, the missing-shape advice, a solver given to inspect,
and parse errors inside the forks' parameters."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hovcaffe import cli as cli_mod
from hovcaffe.caffe.io import parse_net
from hovcaffe.export import to_onnx_bytes
from hovcaffe.layers.registry import PYTHON_LAYER_COMMANDS
from hovcaffe.net import CaffeNet

LENET_NO_LOSS_TOP = """name: "LeNet"
layer { name: "data" type: "Input" top: "data" top: "label"
        input_param { shape { dim: 3 dim: 1 dim: 6 dim: 6 } shape { dim: 3 } } }
layer { name: "ip2" type: "InnerProduct" bottom: "data" top: "ip2"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" }
"""


def invoke(*args: str):
    return CliRunner().invoke(cli_mod.main, list(args))


def softmax_loss(logits: np.ndarray, labels: np.ndarray) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels.astype(int)].mean())


def test_loss_without_top_is_computed_shown_and_exportable(tmp_path: Path):
    net_file = tmp_path / "lenet.prototxt"
    net_file.write_text(LENET_NO_LOSS_TOP)
    rng = np.random.RandomState(0)
    feeds = {"data": rng.rand(3, 1, 6, 6).astype(np.float32),
             "label": np.array([0, 3, 1], np.float32)}
    np.savez(tmp_path / "in.npz", **feeds)

    res = invoke("forward", str(net_file), "--input", str(tmp_path / "in.npz"),
                 "--output", str(tmp_path / "out.npz"))
    assert res.exit_code == 0, res.output
    out = np.load(tmp_path / "out.npz")
    loss = float(out["(loss top 0)"])
    assert loss == pytest.approx(softmax_loss(out["ip2"], feeds["label"]), rel=1e-6)

    res = invoke("inspect", str(net_file))
    assert res.exit_code == 0, res.output
    assert "outputs: -" in res.output          # as Caffe: not in net_output_blobs_
    assert "loss: 1 x (loss top 0) (anonymous top" in res.output

    res = invoke("export", str(net_file), "--format", "onnx", "-o", str(tmp_path / "m.onnx"))
    assert res.exit_code == 2 and "'(loss top 0)' are Caffe's anonymous tops" in res.output
    res = invoke("export", str(net_file), "--format", "onnx", "-o", str(tmp_path / "m.onnx"),
                 "--outputs", "(loss top 0)")
    assert res.exit_code == 0, res.output


def test_onnx_keeps_the_name_of_an_input_that_is_also_an_output():
    import onnxruntime as ort
    net = CaffeNet(parse_net("""
        layer { name: "data" type: "Input" top: "data" top: "label"
                input_param { shape { dim: 2 dim: 3 } shape { dim: 2 } } }
        layer { name: "fc" type: "InnerProduct" bottom: "data" top: "fc"
                inner_product_param { num_output: 2 } }"""), "TEST")
    assert net.output_names == ["fc", "label"]
    model = to_onnx_bytes(net)
    sess = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    import onnx
    onnx.checker.check_model(onnx.load_from_string(model))
    assert [i.name for i in sess.get_inputs()] == ["data", "label"]
    label = np.array([4.0, 7.0], np.float32)
    got = sess.run(["label"], {"data": np.ones((2, 3), np.float32), "label": label})[0]
    assert got.tolist() == label.tolist()


def test_python_layer_advice_names_only_commands_that_take_the_flag(tmp_path: Path):
    def takes_flag(name: str) -> bool:
        cmd = cli_mod.main.get_command(None, name)
        return any("--allow-python-layers" in p.opts for p in cmd.params)

    assert all(takes_flag(c) for c in PYTHON_LAYER_COMMANDS)
    net_file = tmp_path / "py.prototxt"
    net_file.write_text('input: "data" input_shape { dim: 1 dim: 2 }\n'
                        'layer { name: "p" type: "Python" bottom: "data" top: "out" '
                        'python_param { module: "mine" layer: "Mine" } }\n')
    solver = tmp_path / "solver.prototxt"
    solver.write_text(f'net: "{net_file}"\nbase_lr: 0.1\nmax_iter: 1\nlr_policy: "fixed"\n')
    for command in ("inspect", "export", "train"):
        args = [command, str(net_file)]
        if command == "export":
            args += ["--format", "onnx", "-o", str(tmp_path / "x.onnx")]
        if command == "train":
            np.savez(tmp_path / "d.npz", data=np.zeros((1, 2), np.float32))
            args = [command, "--solver", str(solver), "--input-data", str(tmp_path / "d.npz")]
        message = invoke(*args).output
        assert "refused" in message, message
        advised = [c for c in cli_mod.main.list_commands(None) if f"hovcaffe {c}" in message]
        assert advised and all(takes_flag(c) for c in advised), (command, advised)
    assert not takes_flag("train") or "train" in PYTHON_LAYER_COMMANDS


def test_missing_input_shape_advice_uses_the_cli_spelling(tmp_path: Path):
    net_file = tmp_path / "n.prototxt"
    net_file.write_text('layer { name: "data" type: "Input" top: "data" }\n'
                        'layer { name: "r" type: "ReLU" bottom: "data" top: "r" }\n')
    res = invoke("export", str(net_file), "--format", "onnx", "-o", str(tmp_path / "x.onnx"))
    assert res.exit_code == 2
    assert "--input-shape data=N,C,H,W" in res.output
    res = invoke("export", str(net_file), "--format", "onnx", "-o", str(tmp_path / "x.onnx"),
                 "--input-shape", "data=1,2,3,3")
    assert res.exit_code == 0, res.output


def test_inspect_names_a_solver_and_its_net(tmp_path: Path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text('net: "train_val.prototxt"\nbase_lr: 0.01\neval_type: "detection"\n')
    res = invoke("inspect", str(solver))
    assert res.exit_code == 2
    assert "is a solver prototxt (SolverParameter), not a net; inspect its net: " \
           "train_val.prototxt" in res.output


@pytest.mark.parametrize("layer_text,expected", [
    ('type: "ShuffleChannel" shuffle_channel_param { groups: 3 }',
     'unknown field "groups" in ShuffleChannelParameter (layer "l"); did you mean "group"? '
     "(ShuffleChannelParameter belongs to ShuffleChannel layers, from the ShuffleNet fork"),
    ('type: "SmoothL1Loss" smooth_l1_loss_param { sigma2: 3 }',
     "SmoothL1LossParameter belongs to SmoothL1Loss layers, from the py-faster-rcnn fork"),
    ('type: "DenseImageData" dense_image_data_param { sorce: "x" }',
     'did you mean "source"? (DenseImageDataParameter belongs to DenseImageData layers, '
     "from the SegNet fork"),
    ('type: "BN" bn_param { bn_mode: TRAIN }',
     "allowed values: LEARN, INFERENCE (BNParameter belongs to BN layers, from the SegNet fork"),
    ('type: "Data" transform_param { resize_param { hieght: 300 } }',
     "ResizeParameter belongs to the transform_param of SSD's data layers, from the SSD fork"),
])
def test_errors_inside_fork_parameters_name_the_layer_type_and_fork(tmp_path, layer_text,
                                                                     expected):
    net_file = tmp_path / "n.prototxt"
    net_file.write_text(f'layer {{ name: "l" {layer_text} }}\n')
    res = invoke("inspect", str(net_file))
    assert res.exit_code == 2 and expected in res.output, res.output


def test_fork_fields_that_parse_now_no_longer_get_wrong_hints(tmp_path):
    """shuffle_channel_param / smooth_l1_loss_param / dense_image_data_param / resize_param /
    eval_type used to fail with "did you mean slice_param / loss_param / ..."."""
    parse_net('layer { name: "a" type: "ShuffleChannel" shuffle_channel_param { group: 2 } }\n'
              'layer { name: "b" type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 3 } }\n'
              'layer { name: "c" type: "DenseImageData" dense_image_data_param { source: "x" } }\n'
              'layer { name: "d" type: "Data" transform_param { resize_param { height: 3 } } }\n')
