"""Whole fork-style nets: inspect (published parameter counts), forward against OpenCV's
Caffe importer, ONNX export against onnxruntime.

MobileNet v1/v2 are shicai/MobileNet-Caffe's deploy files (tests/zoo/forks/MobileNet-Caffe,
BSD 3-Clause), also rewritten the way yonghenglh6/DepthwiseConvolution's script rewrites them
(depthwise Convolution -> ConvolutionDepthwise) and with ReLU6 for v2. DenseNet-121 and
ShuffleNet v1/v2 come from fork_net_builders (their public files carry no licence).
Weights are the fillers' random values, BatchNorm/Scale/BN statistics randomised too.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fork_helpers import max_rel, run_hovcaffe, run_onnxruntime, run_opencv
from fork_net_builders import densenet, enet_style, shufflenet_v1, shufflenet_v2
from hovcaffe.caffe.io import parse_net, to_prototxt
from hovcaffe.commands.inspect import summarize
from hovcaffe.net import CaffeNet

ZOO = Path(__file__).resolve().parents[1] / "zoo" / "forks" / "MobileNet-Caffe"
TOL = 1e-5


def depthwise_port(text: str, relu6: bool = False) -> str:
    """The DepthwiseConvolution port's rewrite: a Convolution with group == num_output ==
    its input channels becomes ConvolutionDepthwise (and ReLU becomes ReLU6 if asked)."""
    net = parse_net(text)
    for lp in net.layer:
        cp = lp.convolution_param
        if lp.type == "Convolution" and cp.group > 1 and cp.group == cp.num_output:
            lp.type = "ConvolutionDepthwise"
        if relu6 and lp.type == "ReLU":
            lp.type = "ReLU6"
    return to_prototxt(net)


NETS = {
    "mobilenet_v1": lambda: (ZOO / "mobilenet_deploy.prototxt").read_text(),
    "mobilenet_v2": lambda: (ZOO / "mobilenet_v2_deploy.prototxt").read_text(),
    "mobilenet_v1_depthwise": lambda: depthwise_port((ZOO / "mobilenet_deploy.prototxt").read_text()),
    "mobilenet_v2_depthwise_relu6": lambda: depthwise_port(
        (ZOO / "mobilenet_v2_deploy.prototxt").read_text(), relu6=True),
    "densenet121": densenet,
    "shufflenet_v1_g3": shufflenet_v1,
    "shufflenet_v2": shufflenet_v2,
    "enet_style": enet_style,
}

# Learnable parameters (convolutions, BatchNorm's Scale, classifier): the papers' /
# reference implementations' counts (MobileNet v1 4.2M, v2 3.5M, DenseNet-121 8.0M,
# ShuffleNet v2 1x 2.3M; torchvision / Keras give the exact numbers below).
PUBLISHED_PARAMS = {
    "mobilenet_v1": 4_231_976, "mobilenet_v1_depthwise": 4_231_976,
    # torchvision's 3,504,872 + the 1x1 expansion (32 x 32 weights + 2 x 32 Scale) that
    # shicai's file keeps in the first block, whose expansion factor is 1.
    "mobilenet_v2": 3_505_960, "mobilenet_v2_depthwise_relu6": 3_505_960,
    "densenet121": 7_978_856, "shufflenet_v2": 2_278_604,
}
FORK_TYPES = {"mobilenet_v1_depthwise": {"ConvolutionDepthwise"},
              "mobilenet_v2_depthwise_relu6": {"ConvolutionDepthwise", "ReLU6"},
              "shufflenet_v1_g3": {"ConvolutionDepthwise", "ShuffleChannel"},
              "shufflenet_v2": {"ConvolutionDepthwise", "ShuffleChannel"},
              "enet_style": {"BN", "Upsample"}}


def randomize_statistics(net: CaffeNet, seed: int = 0) -> None:
    """Non-trivial normalisation layers: random means, variances, scales and shifts."""
    gen = torch.Generator().manual_seed(seed)

    def u(shape, lo, hi):
        return torch.rand(shape, generator=gen) * (hi - lo) + lo

    with torch.no_grad():
        for layer in net.layers.values():
            b = layer.blobs
            if layer.type == "BatchNorm":
                b[0].copy_(u(b[0].shape, -0.2, 0.2))
                b[1].copy_(u(b[1].shape, 0.5, 1.5))
                b[2].fill_(1.0)
            elif layer.type in ("Scale", "BN"):
                b[0].copy_(u(b[0].shape, 0.5, 1.5))
                b[-1].copy_(u(b[-1].shape, -0.2, 0.2))
            elif layer.type == "PReLU":
                b[0].copy_(u(b[0].shape, 0.0, 0.5))
            else:   # weights whose prototxt gives no filler (constant 0)
                for blob in b:
                    if not blob.any():
                        blob.copy_(u(blob.shape, -0.1, 0.1))


def built(name: str) -> tuple[str, CaffeNet]:
    text = NETS[name]()
    torch.manual_seed(0)
    net = CaffeNet(parse_net(text, name), "TEST").eval()
    randomize_statistics(net)
    return text, net


def compared_blob(net: CaffeNet) -> str:
    """The logits: a final Softmax would turn fp32 rounding of large logits into large
    relative errors of tiny probabilities."""
    out = net.output_names[0]
    last = list(net.layers.values())[-1]
    return last.param.bottom[0] if last.type == "Softmax" else out


def feeds(net: CaffeNet) -> dict[str, np.ndarray]:
    rng = np.random.RandomState(0)
    return {n: rng.rand(*net.blob_shapes[n]).astype(np.float32) for n in net.input_names}


@pytest.mark.parametrize("name", list(NETS))
def test_fork_net_inspects_with_its_published_parameter_count(name):
    summary = summarize(parse_net(NETS[name](), name), "TEST")
    assert FORK_TYPES.get(name, set()) <= {row.type for row in summary.layers}
    if name in PUBLISHED_PARAMS:
        assert summary.learnable_params == PUBLISHED_PARAMS[name]
    last = summary.layers[-1].top_shapes[0]
    assert last == [1, 4, 32, 32] if name == "enet_style" else math.prod(last) == 1000


def test_densenet_needs_ceil_mode_false_for_its_7x7_head():
    net = CaffeNet(parse_net(densenet()), "TEST")
    assert net.blob_shapes["pool1"][2:] == (56, 56)
    assert net.blob_shapes["concat_5_16"][2:] == (7, 7)
    ceil = CaffeNet(parse_net(densenet().replace("ceil_mode: false", "ceil_mode: true")), "TEST")
    assert ceil.blob_shapes["concat_5_16"][2:] == (8, 8)


@pytest.mark.parametrize("name", [n for n in NETS if n != "enet_style"])
def test_fork_net_forward_matches_opencv(name, tmp_path: Path):
    text, net = built(name)
    out = compared_blob(net)
    x = feeds(net)
    ours = run_hovcaffe(net, x, [out])[0]
    theirs = run_opencv(text, net, x, [out], tmp_path)[0]
    assert max_rel(ours, theirs) < TOL, max_rel(ours, theirs)


@pytest.mark.parametrize("name", list(NETS))
def test_fork_net_onnx_matches_onnxruntime(name):
    _, net = built(name)
    out = compared_blob(net)
    x = feeds(net)
    ours = run_hovcaffe(net, x, [out])[0]
    theirs = run_onnxruntime(net, x, [out])[0]
    assert max_rel(theirs, ours) < TOL, max_rel(theirs, ours)


@pytest.mark.parametrize("name", ["enet_style", "shufflenet_v2", "mobilenet_v2_depthwise_relu6"])
def test_fork_net_weights_round_trip_and_torchscript(name, tmp_path: Path):
    """The fork layers' blobs go out to a .caffemodel and back in by layer name, and the
    traced TorchScript module gives the eager outputs."""
    from hovcaffe.export import to_torchscript
    from hovcaffe.weights import load_weights, save_caffemodel

    text, net = built(name)
    out = compared_blob(net)
    x = feeds(net)
    ours = run_hovcaffe(net, x, [out])[0]
    save_caffemodel(net, tmp_path / "w.caffemodel")
    torch.manual_seed(123)   # other fillers: only the load can make the outputs equal
    fresh = CaffeNet(parse_net(text, name), "TEST").eval()
    report = load_weights(fresh, str(tmp_path / "w.caffemodel"))
    assert not report.missing
    np.testing.assert_array_equal(run_hovcaffe(fresh, x, [out])[0], ours)
    traced = to_torchscript(net, outputs=[out])
    with torch.no_grad():
        got = traced(*[torch.from_numpy(x[n]) for n in net.input_names])[0].numpy()
    assert max_rel(got, ours) < 1e-6


ENET = Path(__file__).resolve().parents[1] / "zoo" / "forks" / "ENet" / "prototxts" / \
    "enet_deploy_final.prototxt"


def test_enet_deploy_inspects_exports_and_matches_onnxruntime():
    """TimoSaemann/ENet's deploy net (BN INFERENCE, PReLU, pooling masks, Upsample), at a
    smaller input; the paper gives 0.37M parameters. OpenCV has neither BN nor Upsample."""
    text = ENET.read_text()
    shapes = {"data": (1, 3, 64, 128)}
    summary = summarize(parse_net(text, "enet"), "TEST", input_shapes=shapes)
    assert f"{summary.learnable_params / 1e6:.2f}" == "0.37"
    assert {"BN", "Upsample", "PReLU"} <= {row.type for row in summary.layers}
    assert summary.outputs == ["deconv6_0_0"]
    assert summary.layers[-1].top_shapes == [[1, 19, 64, 128]]
    torch.manual_seed(0)
    net = CaffeNet(parse_net(text, "enet"), "TEST", input_shapes=shapes).eval()
    randomize_statistics(net)
    x = feeds(net)
    ours = run_hovcaffe(net, x, ["deconv6_0_0"])[0]
    theirs = run_onnxruntime(net, x, ["deconv6_0_0"])[0]
    assert max_rel(theirs, ours) < TOL
