"""BatchNorm -> Scale pairs run as one F.batch_norm call (hovcaffe/layers/fusion.py).

The fused path (`net(**inputs)`, `run(outputs=...)`) is checked against NumPy's formulas of
docs/caffe-semantics.md ("BatchNorm, Scale, Bias and MVN") and against the layer-by-layer path (`net.run(inputs)`, which
the oracle tests hold to Caffe), in float64 so any difference beyond rounding shows.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import blob_to_array, parse_net, read_caffemodel
from hovcaffe.net import CaffeNet
from hovcaffe.weights import load_caffemodel, save_caffemodel

SHAPE = (4, 3, 2, 3)
PAIR = '''
layer { name: "bn" type: "BatchNorm" bottom: "c" top: "c" %s
        batch_norm_param { moving_average_fraction: 0.9 eps: 0.001 %s } }
layer { name: "sc" type: "Scale" bottom: "c" top: "c"
        param { lr_mult: 1 decay_mult: 1 } param { lr_mult: 2 decay_mult: 0 }
        scale_param { bias_term: true filler { type: "gaussian" std: 1 }
                      bias_filler { type: "gaussian" std: 1 } } }
'''
INPUT = ('layer { name: "in" type: "Input" top: "x" '
         'input_param { shape { dim: 4 dim: 3 dim: 2 dim: 3 } } }\n')
CONV = ('layer { name: "conv" type: "Convolution" bottom: "x" top: "c" convolution_param { '
        'num_output: 3 kernel_size: 1 weight_filler { type: "gaussian" std: 1 } '
        'bias_filler { type: "gaussian" std: 1 } } }\n')
RELU = 'layer { name: "relu" type: "ReLU" bottom: "c" top: "c" }\n'
# (phase, use_global_stats field): batch statistics in TRAIN, global in TEST, and both overrides
CASES = [("TRAIN", ""), ("TEST", ""), ("TRAIN", "use_global_stats: true"),
         ("TEST", "use_global_stats: false")]
# BatchNorm c -> n, Scale n -> s: the BatchNorm's top is a blob of its own
APART = PAIR.replace('top: "c" %s', 'top: "n" %s').replace(
    'bottom: "c" top: "c"\n        param', 'bottom: "n" top: "s"\n        param') % ("", "")
# the prototxt's float fields as the layer reads them (float32, like Caffe)
EPS, MAF = float(np.float32(1e-3)), float(np.float32(0.9))
STATS = (np.array([0.6, -1.2, 2.4]), np.array([1.8, 0.4, 3.0]), np.array([2.0]))


def build(text: str, phase: str, seed: int = 3) -> CaffeNet:
    torch.manual_seed(seed)
    net = CaffeNet(parse_net(text), phase).double()
    with torch.no_grad():   # non-trivial global statistics: sums over a scale factor of 2
        for blob, value in zip(net.layer("bn").blobs, STATS):
            blob.copy_(torch.as_tensor(value))
    return net


def inputs(seed: int = 0) -> torch.Tensor:
    return torch.as_tensor(np.random.RandomState(seed).randn(*SHAPE) * 2 + 0.5)


@pytest.mark.parametrize("phase,ugs", CASES)
def test_fused_pair_matches_caffes_formulas(phase, ugs):
    net = build(INPUT.replace('top: "x"', 'top: "c"') + PAIR % ("", ugs), phase)
    assert net.fused == [("bn", "sc")]
    x = inputs()
    gamma, beta = (b.detach().numpy() for b in net.layer("sc").blobs)
    y = net(c=x)["c"].detach().numpy()
    xd, v = x.numpy(), (1, 3, 1, 1)
    batch = phase == "TRAIN" if not ugs else "false" in ugs
    if batch:
        mean, var = xd.mean(axis=(0, 2, 3)), xd.var(axis=(0, 2, 3))
        m = xd.size // 3
        want_blobs = [MAF * STATS[0] + mean, MAF * STATS[1] + var * m / (m - 1),
                      MAF * STATS[2] + 1]
    else:
        mean, var = STATS[0] / STATS[2], STATS[1] / STATS[2]
        want_blobs = list(STATS)
    want = (xd - mean.reshape(v)) / np.sqrt(var.reshape(v) + EPS) * gamma.reshape(v) \
        + beta.reshape(v)
    np.testing.assert_allclose(y, want, rtol=1e-12, atol=1e-12)
    for blob, expected in zip(net.layer("bn").blobs, want_blobs):
        np.testing.assert_allclose(blob.detach().numpy(), expected, rtol=1e-12, atol=1e-12)


def _sgd_step(net: CaffeNet) -> None:
    with torch.no_grad():
        for p in net.learnable_params():
            if p.param.grad is not None:
                p.param.sub_(0.05 * p.lr_mult * p.param.grad)
                p.param.grad = None


@pytest.mark.parametrize("phase,ugs", CASES)
def test_fused_training_follows_the_layer_by_layer_path(phase, ugs):
    """Outputs, gradients (conv, gamma, beta, input) and BatchNorm blobs over 3 SGD steps."""
    text = INPUT + CONV + PAIR % ("", ugs) + RELU
    fused, apart = build(text, phase), build(text, phase)
    assert fused.fused == [("bn", "sc")]
    weights = torch.as_tensor(np.random.RandomState(9).randn(*SHAPE))
    for it in range(3):
        xf, xa = inputs(it).requires_grad_(True), inputs(it).requires_grad_(True)
        yf = fused(x=xf)["c"]
        slots = apart.run({"x": xa})
        ya = slots[apart.versions["c"][-1]]
        assert slots[apart.versions["c"][1]] is not None   # the BatchNorm top: run apart
        (yf * weights).sum().backward()
        (ya * weights).sum().backward()
        np.testing.assert_allclose(yf.detach(), ya.detach(), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(xf.grad, xa.grad, rtol=1e-10, atol=1e-12)
        for pf, pa in zip(fused.learnable_params(), apart.learnable_params()):
            assert pf.name == pa.name
            if pa.param.grad is None:
                assert pf.param.grad is None, pf.name
            else:
                np.testing.assert_allclose(pf.param.grad, pa.param.grad, rtol=1e-10,
                                           atol=1e-12, err_msg=pf.name)
        for bf, ba in zip(fused.layer("bn").blobs, apart.layer("bn").blobs):
            if it == 0:   # same input, same statistics: the update is the very same arithmetic
                assert torch.equal(bf, ba)
            np.testing.assert_allclose(bf.detach(), ba.detach(), rtol=1e-12, atol=1e-12)
        _sgd_step(fused)
        _sgd_step(apart)


def test_a_batchnorm_top_read_by_another_layer_is_not_fused():
    text = INPUT + CONV + APART + 'layer { name: "r" type: "ReLU" bottom: "n" top: "r" }\n'
    net = build(text, "TEST")
    assert net.fused == []
    out = net(x=inputs())
    n = out["n"].detach().numpy()
    gamma, beta = (b.detach().numpy().reshape(1, 3, 1, 1) for b in net.layer("sc").blobs)
    c = out["c"].detach().numpy()
    mean, var = (s.reshape(1, 3, 1, 1) / STATS[2] for s in STATS[:2])
    np.testing.assert_allclose(n, (c - mean) / np.sqrt(var + EPS), rtol=1e-12)
    np.testing.assert_allclose(out["s"].detach().numpy(), n * gamma + beta, rtol=1e-12)
    np.testing.assert_allclose(out["r"].detach().numpy(), np.maximum(n, 0), rtol=1e-12)


def test_a_batchnorm_top_that_is_a_net_blob_is_not_fused():
    """BatchNorm c -> n, Scale n -> s: `n` is a blob callers may ask for, so both layers run."""
    net = build(INPUT + CONV + APART, "TEST")
    assert net.fused == []
    n = net.run({"x": inputs()}, outputs=["n"])[net.versions["n"][-1]]
    assert n is not None and tuple(n.shape) == SHAPE


def test_forward_hooks_see_both_layers():
    """`hovcaffe time` times layers through forward hooks: a watched pair runs apart."""
    net = build(INPUT + CONV + PAIR % ("", "") + RELU, "TEST")
    seen = []
    for name in ("bn", "sc"):
        net.layer(name).register_forward_hook(lambda m, a, o: seen.append(m.name))
    fused = build(INPUT + CONV + PAIR % ("", "") + RELU, "TEST")
    x = inputs()
    np.testing.assert_allclose(net(x=x)["c"].detach(), fused(x=x)["c"].detach(), rtol=1e-12)
    assert seen == ["bn", "sc"]


def test_caffemodel_export_keeps_both_layers_blobs(tmp_path):
    net = CaffeNet(parse_net(INPUT + CONV + PAIR % ("", "") + RELU), "TRAIN")
    assert net.fused == [("bn", "sc")]
    assert [(p.name, p.lr_mult, p.decay_mult) for p in net.learnable_params()] == [
        ("conv/0", 1.0, 1.0), ("conv/1", 1.0, 1.0), ("bn/0", 0.0, 1.0), ("bn/1", 0.0, 1.0),
        ("bn/2", 0.0, 1.0), ("sc/0", 1.0, 1.0), ("sc/1", 2.0, 0.0)]
    for it in range(2):
        net(x=inputs(it).float())["c"].sum().backward()
        _sgd_step(net)
    assert sorted(k for k in net.state_dict() if "bn" in k or "sc" in k) == [
        "layers.bn.blobs.0", "layers.bn.blobs.1", "layers.bn.blobs.2",
        "layers.sc.blobs.0", "layers.sc.blobs.1"]
    save_caffemodel(net, tmp_path / "w.caffemodel")
    saved = {lp.name: lp for lp in read_caffemodel(tmp_path / "w.caffemodel").layer}
    for name in ("bn", "sc"):
        blobs = net.layer(name).blobs
        assert len(saved[name].blobs) == len(blobs)
        for b, proto in zip(blobs, saved[name].blobs):
            np.testing.assert_array_equal(blob_to_array(proto), b.detach().numpy())
    assert float(net.layer("bn").blobs[2]) == pytest.approx(MAF + 1)   # two batch updates
    fresh = CaffeNet(parse_net(INPUT + CONV + PAIR % ("", "") + RELU), caffe_pb2.TRAIN)
    load_caffemodel(fresh, tmp_path / "w.caffemodel", strict=True)
    for k, v in net.state_dict().items():
        assert torch.equal(v, fresh.state_dict()[k]), k
