"""float64 `torch.autograd.gradcheck` of the backward of every registered layer type.

GRAD_ROWS holds, per Caffe type, small layer settings with bottoms that avoid the layer's kinks;
`test_every_type_with_a_backward_has_a_row` fails when a type is registered whose class says
`has_backward` and that has neither a row here, nor a gradcheck elsewhere (CHECKED_ELSEWHERE),
nor a reason in NOTHING_TO_DIFFERENTIATE. Each row checks every float top with respect to every
bottom Caffe propagates to (all but the class's `no_grad_bottoms`) and every learnable blob (all
but `frozen_blobs`). Random layers (Dropout and stochastic pooling in TRAIN) draw from torch's
generator, which is reseeded before each evaluation, so every evaluation uses the same mask.

Layers run out of place here: in place, Caffe's elementwise backward reads the overwritten bottom
(the top), which is deliberately not the derivative (layers.common.LocalGrad). ContrastiveLoss's
backward divides by d + 1e-4 as Caffe's does; with d ~ 1 that is inside gradcheck's rtol 1e-3.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.func import functional_call

import hovcaffe.layers  # noqa: F401  (registers every type)
from hovcaffe.caffe import caffe_pb2
from hovcaffe.layers.registry import get_builder, list_layers
from layer_helpers import layer

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST
FILLERS = 'weight_filler { type: "gaussian" std: 0.5 } bias_filler { type: "gaussian" std: 0.5 }'


@dataclasses.dataclass(frozen=True)
class Bottom:
    """One bottom: its shape and what it holds.

    kind: "x" standard normal; "pos" in [0.5, 1.5]; "prob" rows that sum to 1 over axis 1;
    "label:K" integers in [0, K); "binary" 0/1; "cont" sequence-continuation flags (first step
    0, then 1); "index:N" integers in [0, N).
    """
    shape: tuple[int, ...]
    kind: str = "x"


@dataclasses.dataclass(frozen=True)
class Row:
    text: str
    bottoms: tuple[Bottom, ...]
    phase: int = TEST
    kinks: tuple[float, ...] = ()  # values of bottom 0 where the layer is not differentiable
    id: str = ""
    tops: int = 1


def x(*shape, kind="x") -> Bottom:
    return Bottom(tuple(shape), kind)


def row(text, *bottoms, phase=TEST, kinks=(), id="", tops=1) -> Row:
    return Row(text, tuple(bottoms), phase, tuple(kinks), id, tops)


GRAD_ROWS: dict[str, list[Row]] = {
    "AbsVal": [row("", x(2, 3, 4), kinks=(0,))],
    "BNLL": [row("", x(2, 3, 4))],
    "BatchNorm": [row("batch_norm_param { use_global_stats: false }", x(3, 2, 3), phase=TRAIN,
                      id="batch"),
                  row("batch_norm_param { use_global_stats: false eps: 0.1 }", x(4, 3), phase=TRAIN,
                      id="2d")],
    "BatchReindex": [row("", x(3, 2, 2), x(4, kind="index:3"))],
    "Bias": [row("bias_param { axis: 1 num_axes: 1 filler { type: 'gaussian' } }", x(2, 3, 4)),
             row("bias_param { axis: 1 }", x(2, 3, 4), x(3, 4), id="two bottoms")],
    "Clip": [row("clip_param { min: -0.5 max: 0.7 }", x(2, 3, 4), kinks=(-0.5, 0.7))],
    "Concat": [row("concat_param { axis: 1 }", x(2, 2, 3), x(2, 1, 3))],
    "ContrastiveLoss": [
        row("contrastive_loss_param { margin: 2.0 }", x(4, 3), x(4, 3), x(4, kind="binary")),
        row("contrastive_loss_param { margin: 2.0 legacy_version: true }", x(4, 3), x(4, 3),
            x(4, kind="binary"), id="legacy")],
    "Convolution": [
        row(f"convolution_param {{ num_output: 2 kernel_size: 3 pad: 1 stride: 2 group: 2 {FILLERS} }}",
            x(1, 2, 4, 4)),
        row(f"convolution_param {{ num_output: 1 kernel_h: 2 kernel_w: 3 dilation: 2 {FILLERS} }}",
            x(1, 2, 4, 5), id="dilated")],
    "Crop": [row("crop_param { axis: 2 offset: 1 }", x(2, 2, 5, 5), x(2, 2, 3, 2))],
    "Deconvolution": [
        row(f"convolution_param {{ num_output: 2 kernel_size: 3 pad: 1 stride: 2 group: 2 {FILLERS} }}",
            x(1, 2, 3, 3)),
        row(f"convolution_param {{ num_output: 1 kernel_size: 2 dilation: 2 {FILLERS} }}",
            x(1, 3, 3, 4), id="dilated")],
    "DepthwiseConvolution": [
        row(f"convolution_param {{ num_output: 2 kernel_size: 2 pad: 1 {FILLERS} }}", x(1, 2, 3, 3))],
    "Dropout": [row("dropout_param { dropout_ratio: 0.4 }", x(2, 3, 4), phase=TRAIN),
                row("dropout_param { dropout_ratio: 0.4 }", x(2, 3, 4), id="test")],
    "ELU": [row("elu_param { alpha: 0.7 }", x(2, 3, 4), kinks=(0,))],
    "Eltwise": [row("eltwise_param { operation: PROD }", x(2, 3), x(2, 3), x(2, 3), id="prod"),
                row("eltwise_param { operation: SUM coeff: 0.5 coeff: -2 }", x(2, 3), x(2, 3),
                    id="sum"),
                row("eltwise_param { operation: MAX }", x(2, 3), x(2, 3), id="max")],
    "Embed": [row(f"embed_param {{ num_output: 3 input_dim: 5 {FILLERS} }}", x(2, 3, kind="label:5"))],
    "EuclideanLoss": [row("", x(3, 4), x(3, 4))],
    "Exp": [row("exp_param { base: 2.0 scale: 0.5 shift: 0.1 }", x(2, 3))],
    "Filter": [row("", x(4, 3), x(4, 2), x(4, kind="binary"), tops=2)],
    "Flatten": [row("flatten_param { axis: 1 end_axis: 2 }", x(2, 3, 2, 2))],
    "HingeLoss": [row("hinge_loss_param { norm: L2 }", x(3, 4), x(3, kind="label:4"), id="L2")],
    "Im2col": [row("convolution_param { kernel_size: 2 stride: 1 pad: 1 }", x(2, 2, 3, 3))],
    "InfogainLoss": [row("", x(3, 4, kind="prob"), x(3, kind="label:4"), x(1, 1, 4, 4, kind="pos"))],
    "InnerProduct": [row(f"inner_product_param {{ num_output: 3 {FILLERS} }}", x(2, 2, 3)),
                     row(f"inner_product_param {{ num_output: 3 transpose: true {FILLERS} }}",
                         x(2, 4), id="transpose")],
    "LRN": [row("lrn_param { local_size: 3 alpha: 0.5 beta: 0.75 }", x(1, 4, 2, 3)),
            row("lrn_param { local_size: 3 alpha: 0.5 norm_region: WITHIN_CHANNEL }", x(1, 2, 3, 3),
                id="within")],
    "LSTM": [row(f"recurrent_param {{ num_output: 3 {FILLERS} }}", x(3, 2, 2), x(3, 2, kind="cont"))],
    "LSTMUnit": [row("", x(1, 2, 3), x(1, 2, 12), x(1, 2, kind="cont"), tops=2)],
    "Log": [row("log_param { base: 3.0 scale: 2.0 shift: 0.5 }", x(2, 3, kind="pos"))],
    "MVN": [row("", x(2, 3, 4)),
            row("mvn_param { across_channels: true normalize_variance: false }", x(2, 3, 4),
                id="across")],
    "MultinomialLogisticLoss": [row("", x(3, 4, kind="prob"), x(3, kind="label:4"))],
    "PReLU": [row("", x(2, 3, 4), kinks=(0,)),
              row("prelu_param { channel_shared: true }", x(2, 3, 4), kinks=(0,), id="shared")],
    "Parameter": [row("parameter_param { shape { dim: 2 dim: 3 } }")],
    "Pooling": [row("pooling_param { pool: MAX kernel_size: 3 stride: 2 pad: 1 }", x(1, 2, 4, 4)),
                row("pooling_param { pool: AVE kernel_size: 3 stride: 2 pad: 1 }", x(1, 2, 4, 4),
                    id="ave"),
                row("pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }",
                    x(1, 2, 4, 4, kind="pos"), phase=TRAIN, id="stochastic")],
    "Power": [row("power_param { power: 2.5 scale: 0.5 shift: 0.2 }", x(2, 3, kind="pos"))],
    "RNN": [row(f"recurrent_param {{ num_output: 3 {FILLERS} }}", x(3, 2, 2), x(3, 2, kind="cont"))],
    "ReLU": [row("relu_param { negative_slope: 0.1 }", x(2, 3, 4), kinks=(0,))],
    "Reduction": [row("reduction_param { operation: SUMSQ axis: 1 coeff: 0.5 }", x(2, 3, 4)),
                  row("reduction_param { operation: ASUM }", x(2, 3), kinks=(0,), id="asum"),
                  row("reduction_param { operation: MEAN axis: 1 }", x(2, 3), id="mean")],
    "Reshape": [row("reshape_param { shape { dim: 0 dim: -1 } }", x(2, 3, 2))],
    "SPP": [row("spp_param { pyramid_height: 2 pool: MAX }", x(1, 2, 3, 3)),
            row("spp_param { pyramid_height: 2 pool: AVE }", x(1, 1, 3, 3), id="ave")],
    "Scale": [row("scale_param { axis: 1 num_axes: 1 bias_term: true "
                  "filler { type: 'gaussian' } bias_filler { type: 'gaussian' } }", x(2, 3, 4)),
              row("scale_param { axis: 1 }", x(2, 3, 4), x(3, 4), id="two bottoms")],
    "Sigmoid": [row("", x(2, 3))],
    "SigmoidCrossEntropyLoss": [row("", x(3, 4), x(3, 4, kind="binary"))],
    "Slice": [row("slice_param { axis: 1 slice_point: 1 }", x(2, 3, 2), tops=2)],
    "Softmax": [row("softmax_param { axis: 1 }", x(2, 4, 2))],
    "SoftmaxWithLoss": [row("loss_param { normalization: VALID ignore_label: 1 }", x(4, 3),
                            x(4, kind="label:3"))],
    "Split": [row("", x(2, 3), tops=2)],
    "Swish": [row("swish_param { beta: 1.5 }", x(2, 3, 4))],
    "TanH": [row("", x(2, 3))],
    "Tile": [row("tile_param { axis: 1 tiles: 3 }", x(2, 2, 2))],
}
# Types whose backward is gradchecked in another file (a fork module's own tests).
CHECKED_ELSEWHERE = {
    "Axpy": "test_layers_forks_grad.py", "BN": "test_layers_forks_grad.py",
    "ConvolutionDepthwise": "test_layers_forks_grad.py", "Interp": "test_layers_forks_grad.py",
    "Normalize": "test_layers_forks_grad.py", "Permute": "test_layers_forks_grad.py",
    "ReLU6": "test_layers_forks_grad.py", "ShuffleChannel": "test_layers_forks_grad.py",
    "SmoothL1Loss": "test_layers_forks_grad.py", "Upsample": "test_layers_forks_grad.py",
    "MultiBoxLoss": "test_layers_multibox.py", "ROIPooling": "test_layers_roi.py",
    "PSROIPooling": "test_layers_roi.py",
}

# has_backward types with nothing a gradient could flow through.
NOTHING_TO_DIFFERENTIATE = {
    "DummyData": "no bottoms and no learnable blobs",
    "Input": "no bottoms and no learnable blobs",
    "HDF5Output": "no tops (it writes its bottoms to a file)",
    "Silence": "no tops",
}


def make_bottom(spec: Bottom, seed: int, kinks) -> torch.Tensor:
    rs = np.random.RandomState(seed)
    kind, _, arg = spec.kind.partition(":")
    if kind == "x":
        a = rs.randn(*spec.shape)
        for k in kinks:  # numeric derivatives are wrong next to a kink
            near = np.abs(a - k) < 0.05
            a[near] = k + 0.1 * np.sign(a[near] - k + 1e-12)
    elif kind == "pos":
        a = rs.uniform(0.5, 1.5, spec.shape)
    elif kind == "prob":
        a = rs.uniform(0.1, 1.0, spec.shape)
        a /= a.sum(axis=1, keepdims=True)
    elif kind in ("label", "index"):
        a = rs.randint(0, int(arg), spec.shape).astype(np.float64)
    elif kind == "binary":
        a = (np.arange(int(np.prod(spec.shape))) % 2).reshape(spec.shape).astype(np.float64)
    elif kind == "cont":
        a = np.ones(spec.shape)
        a[0] = 0
    else:
        raise ValueError(spec.kind)
    return torch.tensor(a, dtype=torch.float64)


def cases():
    for caffe_type, rows in sorted(GRAD_ROWS.items()):
        for r in rows:
            yield pytest.param(caffe_type, r, id=f"{caffe_type}-{r.id}" if r.id else caffe_type)


@pytest.mark.parametrize("caffe_type,spec", list(cases()))
def test_gradcheck(caffe_type, spec):
    torch.manual_seed(0)
    text = f'type: "{caffe_type}" {spec.text}'
    text += "".join(f' top: "t{i}"' for i in range(spec.tops))
    lay = layer(text, [b.shape for b in spec.bottoms], spec.phase).double()
    cls = type(lay)
    assert cls.has_backward
    bottoms = [make_bottom(b, seed, spec.kinks if seed == 0 else ())
               for seed, b in enumerate(spec.bottoms)]
    for i, b in enumerate(bottoms):
        b.requires_grad_(i not in cls.no_grad_bottoms and spec.bottoms[i].kind in ("x", "pos", "prob"))
    names = [name for name, _ in lay.named_parameters()]
    frozen = {f"blobs.{i}" for i in cls.frozen_blobs}
    params = [p.detach().clone().requires_grad_(name not in frozen)
              for name, p in lay.named_parameters()]
    assert any(t.requires_grad for t in bottoms + params), "nothing to check"

    def run(*args):
        torch.manual_seed(1)  # the same random mask for every evaluation
        ins, ps = args[:len(bottoms)], args[len(bottoms):]
        tops = functional_call(lay, dict(zip(names, ps)), tuple(ins))
        return tuple(t for t in tops if t.requires_grad)

    assert run(*bottoms, *params), "no top depends on a checked input"
    assert torch.autograd.gradcheck(run, tuple(bottoms) + tuple(params), eps=1e-6, atol=1e-5,
                                    nondet_tol=0.0)


def test_every_type_with_a_backward_has_a_row():
    missing = [t for t in list_layers()
               if get_builder(t).has_backward and t not in GRAD_ROWS
               and t not in CHECKED_ELSEWHERE and t not in NOTHING_TO_DIFFERENTIATE]
    assert not missing, f"registered types with a backward but no gradcheck: {missing}"
    registered = set(list_layers())
    stale = [t for t in (*GRAD_ROWS, *CHECKED_ELSEWHERE, *NOTHING_TO_DIFFERENTIATE)
             if t not in registered or not get_builder(t).has_backward]
    assert not stale, f"rows for types that are not registered or have no backward: {stale}"


@pytest.mark.parametrize("caffe_type", sorted(CHECKED_ELSEWHERE))
def test_the_file_named_for_a_type_gradchecks_it(caffe_type):
    text = (Path(__file__).parent / CHECKED_ELSEWHERE[caffe_type]).read_text()
    assert f'type: "{caffe_type}"' in text and "gradcheck" in text
