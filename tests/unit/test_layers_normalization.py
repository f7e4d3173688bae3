"""BatchNorm, Scale, Bias and MVN against NumPy formulas.

The rules: docs/caffe-semantics.md#batchnorm-scale-bias-and-mvn.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import NetDefinitionError, ShapeError
from layer_helpers import layer, rng, tensor


def set_blobs(lay, *arrays):
    with torch.no_grad():
        for b, a in zip(lay.blobs, arrays):
            b.copy_(torch.as_tensor(np.asarray(a, np.float32)))


def test_batchnorm_defaults_use_global_stats_by_phase():
    assert layer('type: "BatchNorm"', [(2, 3)], caffe_pb2.TEST).use_global_stats
    assert not layer('type: "BatchNorm"', [(2, 3)], caffe_pb2.TRAIN).use_global_stats
    assert layer('type: "BatchNorm" batch_norm_param { use_global_stats: true }', [(2, 3)],
                 caffe_pb2.TRAIN).use_global_stats


def test_batchnorm_train_updates_caffes_normalised_running_sums():
    x = rng().randn(4, 3, 2, 5).astype(np.float32)
    lay = layer('type: "BatchNorm" batch_norm_param { moving_average_fraction: 0.9 eps: 1e-3 }',
                [x.shape], caffe_pb2.TRAIN)
    assert [tuple(b.shape) for b in lay.blobs] == [(3,), (3,), (1,)]
    assert not any(b.requires_grad for b in lay.blobs)
    set_blobs(lay, [1, 2, 3], [4, 5, 6], [2.0])
    y = lay(tensor(x, grad=True))[0]
    xd = x.astype(np.float64)
    mean, var = xd.mean(axis=(0, 2, 3)), xd.var(axis=(0, 2, 3))
    want = (xd - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-3)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-4, atol=1e-5)
    m = 4 * 2 * 5
    np.testing.assert_allclose(lay.blobs[0].numpy(), 0.9 * np.array([1, 2, 3]) + mean, rtol=1e-5)
    np.testing.assert_allclose(lay.blobs[1].numpy(), 0.9 * np.array([4, 5, 6]) + var * m / (m - 1),
                               rtol=1e-5)
    np.testing.assert_allclose(lay.blobs[2].numpy(), [0.9 * 2 + 1], rtol=1e-6)


def test_batchnorm_global_stats_divide_by_the_scale_factor_and_zero_means_none():
    x = rng(1).randn(5, 2).astype(np.float32)
    lay = layer('type: "BatchNorm" batch_norm_param { eps: 0.01 }', [x.shape], caffe_pb2.TEST)
    set_blobs(lay, [2.0, -4.0], [8.0, 2.0], [4.0])
    want = (x - np.array([0.5, -1.0])) / np.sqrt(np.array([2.0, 0.5]) + 0.01)
    np.testing.assert_allclose(lay(tensor(x))[0].numpy(), want, rtol=1e-5)
    set_blobs(lay, [2.0, -4.0], [8.0, 2.0], [0.0])
    np.testing.assert_allclose(lay(tensor(x))[0].numpy(), x / np.sqrt(0.01), rtol=1e-5)


def test_batchnorm_single_value_per_channel_and_1d_input():
    lay = layer('type: "BatchNorm"', [(1, 3)], caffe_pb2.TRAIN)      # m == 1: factor 1, y == 0
    y = lay(tensor([[1.0, 2.0, 3.0]]))[0]
    assert torch.all(y == 0)
    np.testing.assert_allclose(lay.blobs[1].numpy(), 0)
    lay = layer('type: "BatchNorm"', [(6,)], caffe_pb2.TRAIN)         # one channel
    x = np.arange(6, dtype=np.float32)
    y = lay(tensor(x))[0].numpy()
    np.testing.assert_allclose(y, (x - x.mean()) / np.sqrt(x.var() + 1e-5), rtol=1e-5)


def test_batchnorm_rejects_learned_statistics():
    with pytest.raises(NetDefinitionError, match="lr_mult"):
        layer('type: "BatchNorm" param { lr_mult: 1 }', [(2, 3)])


@pytest.mark.parametrize("text,bshape", [
    ('scale_param { axis: 1 num_axes: 1 bias_term: true }', (3,)),
    ('scale_param { axis: 1 num_axes: 2 }', (3, 4)),
    ('scale_param { axis: -1 }', (5,)),
    ('scale_param { num_axes: 0 }', ()),
    ('scale_param { axis: 2 num_axes: -1 bias_term: true }', (4, 5)),
])
def test_scale_with_a_learned_blob(text, bshape):
    x = rng(2).randn(2, 3, 4, 5).astype(np.float32)
    lay = layer(f'type: "Scale" {text}', [x.shape])
    assert tuple(lay.blobs[0].shape) == bshape
    assert torch.all(lay.blobs[0] == 1)               # Scale's default filler is constant 1
    s = np.asarray(rng(3).randn(*bshape), np.float32)
    b = np.asarray(rng(4).randn(*bshape), np.float32)
    set_blobs(lay, s, b)
    axis = {(3,): 1, (3, 4): 1, (5,): 3, (): 0, (4, 5): 2}[bshape]
    view = (1,) * axis + bshape + (1,) * (4 - axis - len(bshape))
    want = x * s.reshape(view) + (b.reshape(view) if len(lay.blobs) == 2 else 0)
    np.testing.assert_allclose(lay(tensor(x))[0].detach().numpy(), want, rtol=1e-6)


def test_scale_two_bottoms_and_bias_layer():
    x = rng(5).randn(2, 3, 4).astype(np.float32)
    s = rng(6).randn(2, 3).astype(np.float32)
    lay = layer('type: "Scale" scale_param { axis: 0 bias_term: true }', [x.shape, s.shape])
    assert len(lay.blobs) == 1 and tuple(lay.blobs[0].shape) == (2, 3)   # only the bias is learned
    set_blobs(lay, np.full((2, 3), 0.5))
    xt, st = tensor(x, grad=True), tensor(s, grad=True)
    y = lay(xt, st)[0]
    np.testing.assert_allclose(y.detach().numpy(), x * s[:, :, None] + 0.5, rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(st.grad.numpy(), x.sum(axis=2), rtol=1e-5)
    bias = layer('type: "Bias" bias_param { axis: 1 }', [x.shape, (3, 4)])
    b = rng(7).randn(3, 4).astype(np.float32)
    np.testing.assert_allclose(bias(tensor(x), tensor(b))[0].numpy(), x + b[None], rtol=1e-6)
    with pytest.raises(ShapeError, match="does not match"):
        layer('type: "Bias" bias_param { axis: 1 }', [x.shape, (4, 4)])


def ref_mvn(x, groups, eps, variance=True):
    x2 = x.reshape(groups, -1).astype(np.float64)
    y = x2 - x2.mean(axis=1, keepdims=True)
    std = np.sqrt((y ** 2).mean(axis=1, keepdims=True)) + eps
    return (y / std if variance else y).reshape(x.shape), std


@pytest.mark.parametrize("text,groups,eps,variance", [
    ('', 6, 1e-9, True), ('mvn_param { across_channels: true }', 2, 1e-9, True),
    ('mvn_param { normalize_variance: false }', 6, 1e-9, False),
    ('mvn_param { eps: 0.5 }', 6, 0.5, True),
])
def test_mvn_forward_and_caffes_backward(text, groups, eps, variance):
    x = rng(8).randn(2, 3, 4, 3).astype(np.float32)
    lay = layer(f'type: "MVN" {text}', [x.shape])
    xt = tensor(x, grad=True)
    y = lay(xt)[0]
    want, std = ref_mvn(x, groups, eps, variance)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-5, atol=1e-6)
    g = rng(9).randn(*x.shape).astype(np.float32)
    y.backward(torch.from_numpy(g))
    g2, y2 = g.reshape(groups, -1).astype(np.float64), want.reshape(groups, -1)
    # Caffe: dx = (dy - mean(dy) - y*mean(y*dy)) / (std + eps) (std + eps, not the exact std).
    dx = g2 - g2.mean(axis=1, keepdims=True)
    if variance:
        dx = (dx - y2 * (y2 * g2).mean(axis=1, keepdims=True)) / std
    np.testing.assert_allclose(xt.grad.numpy(), dx.reshape(x.shape), rtol=1e-4, atol=1e-6)
