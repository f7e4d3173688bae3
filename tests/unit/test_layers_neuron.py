"""Neuron layers against NumPy formulas, including Caffe's in-place backward quirks."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import NetDefinitionError
from layer_helpers import layer, rng, tensor

X = np.array([-40.0, -3.0, -0.5, 0.0, 0.2, 1.5, 40.0, 95.0], np.float32).reshape(2, 4)


def run(text, x, *, in_place=False, phase=caffe_pb2.TEST, upstream=None):
    """(y, dx) of a one-bottom layer, the gradient taken for `upstream` (default ones)."""
    extra = ' bottom: "x" top: "x"' if in_place else ""
    lay = layer(text + extra, [x.shape], phase)
    xt = tensor(x, grad=True)
    y = lay(xt)[0]
    g = np.ones_like(x) if upstream is None else upstream
    if y.requires_grad:
        y.backward(torch.from_numpy(g.astype(np.float32)))
    dx = xt.grad.numpy() if xt.grad is not None else np.zeros_like(x)
    return y.detach().numpy(), dx


def sigmoid(x):
    return 1 / (1 + np.exp(-x.astype(np.float64)))


@pytest.mark.parametrize("text,fwd,grad", [
    ('type: "ReLU"', lambda x: np.maximum(x, 0), lambda x: (x > 0) * 1.0),
    ('type: "ReLU" relu_param { negative_slope: 0.1 }', lambda x: np.where(x > 0, x, 0.1 * x),
     lambda x: np.where(x > 0, 1.0, 0.1)),
    ('type: "ELU" elu_param { alpha: 0.7 }', lambda x: np.where(x > 0, x, 0.7 * np.expm1(np.minimum(x, 0))),
     lambda x: np.where(x > 0, 1.0, 0.7 * np.exp(np.minimum(x, 0)))),
    ('type: "Sigmoid"', sigmoid, lambda x: sigmoid(x) * (1 - sigmoid(x))),
    ('type: "TanH"', np.tanh, lambda x: 1 - np.tanh(x) ** 2),
    ('type: "AbsVal"', np.abs, np.sign),
    ('type: "BNLL"', lambda x: np.where(x > 0, x + np.log1p(np.exp(-x)), np.log1p(np.exp(x))),
     lambda x: sigmoid(np.minimum(x, 50))),
    ('type: "Swish" swish_param { beta: 1.5 }', lambda x: x * sigmoid(1.5 * x),
     lambda x: sigmoid(1.5 * x) + 1.5 * x * sigmoid(1.5 * x) * (1 - sigmoid(1.5 * x))),
    ('type: "Clip" clip_param { min: -0.5 max: 1.5 }', lambda x: np.clip(x, -0.5, 1.5),
     lambda x: ((x >= -0.5) & (x <= 1.5)) * 1.0),
    ('type: "Exp" exp_param { base: 2 scale: 0.1 shift: 1 }', lambda x: 2.0 ** (1 + 0.1 * x),
     lambda x: np.log(2) * 0.1 * 2.0 ** (1 + 0.1 * x)),
])
def test_elementwise_forward_and_backward(text, fwd, grad):
    y, dx = run(text, X)
    with np.errstate(over="ignore"):
        np.testing.assert_allclose(y, fwd(X.astype(np.float64)), rtol=2e-6, atol=1e-7)
        np.testing.assert_allclose(dx, grad(X.astype(np.float64)), rtol=2e-6, atol=1e-7)


def test_log_and_power_general_forms():
    x = np.abs(X) + 0.5
    y, dx = run('type: "Log" log_param { base: 10 scale: 2 shift: 0.5 }', x)
    np.testing.assert_allclose(y, np.log10(0.5 + 2 * x), rtol=2e-6)
    np.testing.assert_allclose(dx, 2 / ((0.5 + 2 * x) * np.log(10)), rtol=2e-6)
    y, dx = run('type: "Power" power_param { power: 1.5 scale: 0.5 shift: 1 }', x)
    np.testing.assert_allclose(y, (1 + 0.5 * x) ** 1.5, rtol=2e-6)
    np.testing.assert_allclose(dx, 1.5 * 0.5 * (1 + 0.5 * x) ** 0.5, rtol=2e-6)


def test_power_special_cases():
    # power * scale == 0: the constant shift^power (1 when power == 0) and zero gradient.
    y, dx = run('type: "Power" power_param { power: 2 scale: 0 shift: 3 }', X)
    assert np.all(y == 9.0) and np.all(dx == 0)
    y, dx = run('type: "Power" power_param { power: 0 shift: 3 }', X)
    assert np.all(y == 1.0) and np.all(dx == 0)
    # power 2: 2*scale*(shift + scale*x); shift 0: power*y/x (0/0 = NaN at x = 0, as in Caffe).
    y, dx = run('type: "Power" power_param { power: 2 scale: 3 shift: -1 }', X)
    np.testing.assert_allclose(dx, 2 * 3 * (-1 + 3 * X.astype(np.float64)), rtol=1e-6)
    x = np.array([[-3.0, -0.5, 0.0], [1.5, 4.0, 0.0]], np.float32)
    y, dx = run('type: "Power" power_param { power: 3 scale: 0.5 }', x)
    assert np.isnan(dx[:, 2]).all()           # x == 0 column
    ok = x != 0
    np.testing.assert_allclose(dx[ok], 3 * 0.5 * (0.5 * x[ok]) ** 2, rtol=1e-5)


def test_in_place_layers_reproduce_caffes_backward_that_reads_the_top():
    x = rng().randn(3, 5).astype(np.float32)
    # ReLU with a negative slope: in place, Caffe tests y > 0, so x < 0 gets the full gradient.
    _, dx = run('type: "ReLU" relu_param { negative_slope: -0.3 }', x, in_place=True)
    np.testing.assert_array_equal(dx, np.where(x != 0, 1.0, -0.3))
    _, dx = run('type: "ReLU" relu_param { negative_slope: -0.3 }', x)
    np.testing.assert_allclose(dx, np.where(x > 0, 1.0, -0.3))
    # Clip in place: the clipped top is always inside [min, max], so everything passes.
    _, dx = run('type: "Clip" clip_param { min: -0.5 max: 0.5 }', x, in_place=True)
    assert np.all(dx == 1.0)
    # BNLL in place: sigmoid of the top instead of the bottom.
    y, dx = run('type: "BNLL"', x, in_place=True)
    np.testing.assert_allclose(dx, sigmoid(y), rtol=1e-6)
    # Log in place: scale * base_scale / (shift + scale * y).
    xp = np.abs(x) + 1
    y, dx = run('type: "Log" log_param { scale: 2 shift: 1 }', xp, in_place=True)
    np.testing.assert_allclose(dx, 2 / (1 + 2 * y), rtol=1e-6)
    # Power in place: diff_scale * y / (shift + scale * y).
    y, dx = run('type: "Power" power_param { power: 0.5 scale: 2 shift: 1 }', xp, in_place=True)
    np.testing.assert_allclose(dx, 1.0 * y / (1 + 2 * y), rtol=1e-6)


def test_abs_val_refuses_in_place():
    with pytest.raises(NetDefinitionError, match="in-place"):
        layer('type: "AbsVal" bottom: "x" top: "x"', [(2, 3)])


def test_threshold_is_strict_and_has_no_gradient():
    x = np.array([[0.2, 0.2000001, 0.1999999, -1.0]], np.float32)
    y, dx = run('type: "Threshold" threshold_param { threshold: 0.2 }', x)
    np.testing.assert_array_equal(y, [[0, 1, 0, 0]])
    assert np.all(dx == 0)


def test_prelu_blob_shapes_default_filler_and_gradient():
    x = rng(1).randn(2, 3, 2, 2).astype(np.float32)
    lay = layer('type: "PReLU"', [x.shape])
    assert tuple(lay.blobs[0].shape) == (3,) and torch.all(lay.blobs[0] == 0.25)
    shared = layer('type: "PReLU" prelu_param { channel_shared: true filler { type: "constant" '
                   'value: -0.5 } }', [x.shape])
    assert tuple(shared.blobs[0].shape) == ()       # Caffe's 0-axis scalar blob
    xt = tensor(x, grad=True)
    y = shared(xt)[0]
    np.testing.assert_allclose(y.detach().numpy(), np.where(x > 0, x, -0.5 * x), rtol=1e-6)
    y.sum().backward()
    np.testing.assert_allclose(shared.blobs[0].grad.numpy(), np.minimum(x, 0).sum(), rtol=1e-5)
    np.testing.assert_allclose(xt.grad.numpy(), np.where(x > 0, 1.0, -0.5))


def test_dropout_follows_the_layer_phase_with_train_time_scaling():
    torch.manual_seed(0)
    x = np.ones((200, 100), np.float32)
    lay = layer('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', [x.shape], caffe_pb2.TRAIN)
    lay.eval()                         # module mode is irrelevant: the Caffe phase decides
    y = lay(tensor(x))[0].numpy()
    assert set(np.unique(y)) <= {0.0, np.float32(1 / 0.6)}
    assert abs((y == 0).mean() - 0.4) < 0.02
    test = layer('type: "Dropout" dropout_param { dropout_ratio: 0.4 }', [x.shape], caffe_pb2.TEST)
    test.train()
    np.testing.assert_array_equal(test(tensor(x))[0].numpy(), x)
