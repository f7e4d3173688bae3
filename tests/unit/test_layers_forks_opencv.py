"""Fork layers against OpenCV's independent Caffe importer (cv2.dnn) on random weights.

Each case is a one-layer prototxt; hovcaffe builds it, fills every blob with random values and
writes them with its own caffemodel writer; OpenCV reads both files with its own parser.
Outputs must agree to 1e-5 of their scale (max |a - b| / max |b|). What OpenCV cannot run
(Normalize across space with a per-channel or 0-axis scale, a partial Permute order, Interp's
crop and shrink, BN, Upsample, SmoothL1Loss) is checked by hand in test_layers_forks_grad.py.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fork_helpers import build, max_rel, one_layer, randomize, run_hovcaffe, run_opencv

cv2 = pytest.importorskip("cv2", reason="OpenCV's dnn module is the independent reference")

TOL = 1e-5


CASES = {
    "Normalize per position, per-channel scale": (
        "Normalize", "norm_param { across_spatial: false channel_shared: false eps: 1e-6 }",
        (2, 4, 5, 6)),
    "Permute NCHW->NHWC": ("Permute", "permute_param { order: 0 order: 2 order: 3 order: 1 }",
                           (2, 4, 5, 6)),
    "Permute 1 0 3 2": ("Permute", "permute_param { order: 1 order: 0 order: 3 order: 2 }",
                        (2, 3, 4, 5)),
    "ShuffleChannel group 3": ("ShuffleChannel", "shuffle_channel_param { group: 3 }", (2, 6, 4, 5)),
    "ShuffleChannel group 4": ("ShuffleChannel", "shuffle_channel_param { group: 4 }", (1, 8, 3, 3)),
    "ReLU6": ("ReLU6", "", (2, 3, 4, 5)),
    "Interp zoom 3": ("Interp", "interp_param { zoom_factor: 3 }", (1, 2, 5, 7)),
    "Interp to height/width": ("Interp", "interp_param { height: 11 width: 4 }", (2, 3, 5, 7)),
    "ConvolutionDepthwise 3x3 s2 p1": (
        "ConvolutionDepthwise", "convolution_param { num_output: 4 kernel_size: 3 pad: 1 stride: 2 }",
        (2, 4, 9, 9)),
    "ConvolutionDepthwise 5x3 dilated, no bias": (
        "ConvolutionDepthwise", "convolution_param { num_output: 6 kernel_h: 5 kernel_w: 3 "
        "pad_h: 2 pad_w: 1 dilation: 2 bias_term: false }", (1, 6, 11, 8)),
    "Pooling ceil_mode false (floor)": (
        "Pooling", "pooling_param { pool: MAX kernel_size: 3 stride: 2 ceil_mode: false }",
        (1, 2, 8, 8)),
    "Pooling ceil_mode true": (
        "Pooling", "pooling_param { pool: AVE kernel_size: 3 stride: 2 ceil_mode: true }",
        (1, 2, 8, 8)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_fork_layer_matches_opencv(case, tmp_path: Path):
    type_, param, shape = CASES[case]
    text = one_layer(type_, param, shape)
    net = build(text)
    randomize(net)
    x = {"data": (np.random.RandomState(0).randn(*shape) * 4).astype(np.float32)}
    ours = run_hovcaffe(net, x, ["l"])[0]
    theirs = run_opencv(text, net, x, ["l"], tmp_path)[0]
    assert ours.shape == theirs.shape
    assert max_rel(ours, theirs) < TOL
    assert np.abs(theirs).max() > 0


def test_pooling_ceil_mode_false_rounds_down():
    """8 -> (8 - 3) / 2 + 1: 3 rows with ceil_mode false (floor), 4 with BVLC's ceil."""
    floor = build(one_layer("Pooling", "pooling_param { kernel_size: 3 stride: 2 ceil_mode: false }",
                            (1, 1, 8, 8)))
    ceil = build(one_layer("Pooling", "pooling_param { kernel_size: 3 stride: 2 }", (1, 1, 8, 8)))
    assert floor.blob_shapes["l"] == (1, 1, 3, 3) and ceil.blob_shapes["l"] == (1, 1, 4, 4)


def test_axpy_matches_opencv_with_its_bottoms_swapped(tmp_path: Path):
    """OpenCV's importer computes a * bottom[2] + bottom[1]; the SENet fork computes
    a * bottom[1] + bottom[2]. Fed the swapped prototxt, OpenCV must give our a * x + y."""
    decl = ('input: "a" input_shape { dim: 1 dim: 3 dim: 1 dim: 1 }\n'
            'input: "x" input_shape { dim: 1 dim: 3 dim: 4 dim: 5 }\n'
            'input: "y" input_shape { dim: 1 dim: 3 dim: 4 dim: 5 }\n')
    ours_text = decl + 'layer { name: "l" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "l" }\n'
    cv_text = decl + 'layer { name: "l" type: "Axpy" bottom: "a" bottom: "y" bottom: "x" top: "l" }\n'
    r = np.random.RandomState(3)
    feeds = {"a": r.randn(1, 3, 1, 1), "x": r.randn(1, 3, 4, 5), "y": r.randn(1, 3, 4, 5)}
    feeds = {k: v.astype(np.float32) for k, v in feeds.items()}
    net = build(ours_text)
    ours = run_hovcaffe(net, feeds, ["l"])[0]
    theirs = run_opencv(cv_text, build(cv_text), feeds, ["l"], tmp_path)[0]
    assert max_rel(ours, theirs) < TOL
    np.testing.assert_allclose(ours, feeds["a"] * feeds["x"] + feeds["y"], rtol=1e-6)


def test_depthwise_convolution_spelling_is_a_grouped_convolution(tmp_path: Path):
    """DepthwiseConvolution (the ports that subclass Convolution) against OpenCV's Convolution."""
    param = "convolution_param { num_output: 8 group: 4 kernel_size: 3 pad: 1 }"
    ours_text = one_layer("DepthwiseConvolution", param, (2, 4, 7, 7))
    net = build(ours_text)
    randomize(net)
    x = {"data": np.random.RandomState(1).randn(2, 4, 7, 7).astype(np.float32)}
    theirs = run_opencv(one_layer("Convolution", param, (2, 4, 7, 7)), net, x, ["l"], tmp_path)[0]
    assert max_rel(run_hovcaffe(net, x, ["l"])[0], theirs) < TOL


ONNX_EXTRA = {
    "Interp shrink": ("Interp", "interp_param { shrink_factor: 2 }", (1, 2, 9, 7)),
    "Interp crop then zoom": ("Interp", "interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -1 }",
                              (1, 2, 9, 7)),
    "Normalize across space, shared scale": ("Normalize", "norm_param { across_spatial: true }",
                                             (2, 3, 4, 4)),
    "Upsample nearest": ("Upsample", "upsample_param { scale: 3 }", (1, 2, 3, 4)),
    "BN LEARN": ("BN", "bn_param { bn_mode: LEARN }", (3, 2, 4, 4)),
    "BN INFERENCE": ("BN", "bn_param { bn_mode: INFERENCE }", (1, 2, 4, 4)),
}


@pytest.mark.parametrize("case", list(CASES) + list(ONNX_EXTRA))
def test_fork_layer_exports_to_onnx(case):
    from fork_helpers import run_onnxruntime
    type_, param, shape = {**CASES, **ONNX_EXTRA}[case]
    net = build(one_layer(type_, param, shape))
    randomize(net)
    x = {"data": (np.random.RandomState(0).randn(*shape) * 4).astype(np.float32)}
    ours = run_hovcaffe(net, x, ["l"])[0]
    assert max_rel(run_onnxruntime(net, x, ["l"])[0], ours) < TOL


def test_axpy_and_smooth_l1_loss_export_to_onnx():
    from fork_helpers import run_onnxruntime
    net = build('input: "a" input_shape { dim: 2 dim: 3 dim: 1 dim: 1 }\n'
                'input: "x" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                'input: "y" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                'input: "wi" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                'input: "wo" input_shape { dim: 2 dim: 3 dim: 4 dim: 5 }\n'
                'layer { name: "l" type: "Axpy" bottom: "a" bottom: "x" bottom: "y" top: "l" }\n'
                'layer { name: "loss" type: "SmoothL1Loss" bottom: "l" bottom: "y" bottom: "wi" '
                'bottom: "wo" top: "loss" smooth_l1_loss_param { sigma: 3 } }\n')
    r = np.random.RandomState(5)
    feeds = {n: r.rand(*net.blob_shapes[n]).astype(np.float32) for n in net.input_names}
    ours = run_hovcaffe(net, feeds, ["l", "loss"])
    for got, want in zip(run_onnxruntime(net, feeds, ["l", "loss"]), ours):
        assert max_rel(got, want) < TOL
