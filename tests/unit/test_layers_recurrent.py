"""RNN / LSTM / LSTMUnit against NumPy re-implementations of Caffe's unrolled nets.

The rules: docs/caffe-semantics.md#recurrent-layers.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net
from hovcaffe.errors import NetDefinitionError, ShapeError
from hovcaffe.layers import get_builder, list_layers

FILL = ('weight_filler { type: "uniform" min: -0.5 max: 0.5 } '
        'bias_filler { type: "uniform" min: -0.5 max: 0.5 }')


def make(kind: str, bottoms: list[str], tops: list[str], shapes, extra: str = ""):
    text = (f'layer {{ name: "r" type: "{kind}" '
            + " ".join(f'bottom: "{b}"' for b in bottoms) + " "
            + " ".join(f'top: "{t}"' for t in tops)
            + f" recurrent_param {{ num_output: 3 {FILL} {extra} }} }}")
    lp = parse_net(text).layer[0]
    return get_builder(lp.type, lp.name)(lp, [tuple(s) for s in shapes], caffe_pb2.TRAIN)


def sig(v):
    return 1 / (1 + np.exp(-v))


def np_lstm(blobs, x, cont, h0, c0, xs=None):
    """Caffe's LSTM: gates i, f, o, g; f and the previous h are multiplied by cont."""
    w_xc, b_c = blobs[0], blobs[1]
    w_static = blobs[2] if xs is not None else None
    w_hc = blobs[-1]
    t_steps, n = x.shape[:2]
    hid = w_hc.shape[1]
    xp = x.reshape(t_steps, n, -1) @ w_xc.T + b_c
    sp = xs.reshape(n, -1) @ w_static.T if xs is not None else 0.0
    h, c, out = h0, c0, []
    for t in range(t_steps):
        k = cont[t][:, None]
        g = (k * h) @ w_hc.T + xp[t] + sp
        i, f = sig(g[:, :hid]), k * sig(g[:, hid:2 * hid])
        o, gg = sig(g[:, 2 * hid:3 * hid]), np.tanh(g[:, 3 * hid:])
        c = f * c + i * gg
        h = o * np.tanh(c)
        out.append(h)
    return np.stack(out), h, c


def np_rnn(blobs, x, cont, h0, xs=None):
    """Caffe's RNN: h_t = tanh(W_hh (cont h) + W_xh x + b_h [+ W_s xs]); o_t = tanh(W_ho h_t + b_o)."""
    w_xh, b_h = blobs[0], blobs[1]
    w_static = blobs[2] if xs is not None else None
    w_hh, w_ho, b_o = blobs[-3:]
    t_steps, n = x.shape[:2]
    xp = x.reshape(t_steps, n, -1) @ w_xh.T + b_h
    sp = xs.reshape(n, -1) @ w_static.T if xs is not None else 0.0
    h, out = h0, []
    for t in range(t_steps):
        h = np.tanh((cont[t][:, None] * h) @ w_hh.T + xp[t] + sp)
        out.append(np.tanh(h @ w_ho.T + b_o))
    return np.stack(out), h


def blobs_np(layer):
    return [b.detach().double().numpy() for b in layer.blobs]


RNG = np.random.RandomState(7)
X = RNG.randn(4, 2, 2, 2)                    # T=4, N=2, D=2*2 (flattened from axis 2)
CONT = np.array([[0, 0], [1, 1], [1, 0], [1, 1]], np.float64)  # stream 1 restarts at t=2
XS = RNG.randn(2, 5)


def test_registered():
    assert set(list_layers("recurrent")) == {"RNN", "LSTM", "LSTMUnit"}


@pytest.mark.parametrize("static", [False, True])
def test_lstm_blob_order_forward_and_reset(static):
    shapes = [X.shape, CONT.shape] + ([XS.shape] if static else [])
    layer = make("LSTM", ["x", "cont"] + (["xs"] if static else []), ["h"], shapes)
    want_shapes = [(12, 4), (12,)] + ([(12, 5)] if static else []) + [(12, 3)]
    assert [tuple(b.shape) for b in layer.blobs] == want_shapes
    assert layer.output_shapes(shapes) == [(4, 2, 3)]
    layer.double()
    args = [torch.tensor(X), torch.tensor(CONT)] + ([torch.tensor(XS)] if static else [])
    (h,) = layer(*args)
    zeros = np.zeros((2, 3))
    want, _, _ = np_lstm(blobs_np(layer), X, CONT, zeros, zeros, XS if static else None)
    np.testing.assert_allclose(h.detach().numpy(), want, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("static", [False, True])
def test_rnn_blob_order_and_forward(static):
    shapes = [X.shape, CONT.shape] + ([XS.shape] if static else [])
    layer = make("RNN", ["x", "cont"] + (["xs"] if static else []), ["o"], shapes)
    want_shapes = [(3, 4), (3,)] + ([(3, 5)] if static else []) + [(3, 3), (3, 3), (3,)]
    assert [tuple(b.shape) for b in layer.blobs] == want_shapes
    layer.double()
    args = [torch.tensor(X), torch.tensor(CONT)] + ([torch.tensor(XS)] if static else [])
    (o,) = layer(*args)
    want, _ = np_rnn(blobs_np(layer), X, CONT, np.zeros((2, 3)), XS if static else None)
    np.testing.assert_allclose(o.detach().numpy(), want, rtol=1e-10, atol=1e-12)


def finite_difference(f, arrays, eps=1e-6):
    grads = []
    for a in arrays:
        g = np.zeros_like(a)
        for idx in np.ndindex(a.shape):
            old = a[idx]
            a[idx] = old + eps
            up = f()
            a[idx] = old - eps
            down = f()
            a[idx] = old
            g[idx] = (up - down) / (2 * eps)
        grads.append(g)
    return grads


@pytest.mark.parametrize("kind", ["LSTM", "RNN"])
def test_gradients_match_finite_differences_of_the_reference(kind):
    layer = make(kind, ["x", "cont", "xs"], ["y"], [X.shape, CONT.shape, XS.shape]).double()
    weights = RNG.randn(4, 2, 3)
    x, xs = torch.tensor(X, requires_grad=True), torch.tensor(XS, requires_grad=True)
    (y,) = layer(x, torch.tensor(CONT), xs)
    (y * torch.tensor(weights)).sum().backward()
    blobs = blobs_np(layer)
    xa, xsa = X.copy(), XS.copy()
    zeros = np.zeros((2, 3))

    def objective():
        out = (np_lstm(blobs, xa, CONT, zeros, zeros, xsa)[0] if kind == "LSTM"
               else np_rnn(blobs, xa, CONT, zeros, xsa)[0])
        return float((out * weights).sum())

    numeric = finite_difference(objective, blobs + [xa, xsa])
    got = [b.grad.numpy() for b in layer.blobs] + [x.grad.numpy(), xs.grad.numpy()]
    for g, n in zip(got, numeric):
        np.testing.assert_allclose(g, n, rtol=1e-5, atol=1e-8)


def test_state_is_carried_across_forwards_without_expose_hidden():
    shapes = [(2, 2, 4), (2, 2)]
    layer = make("LSTM", ["x", "cont"], ["h"], shapes).double()
    whole = make("LSTM", ["x", "cont"], ["h"], [(4, 2, 4), (4, 2)]).double()
    whole.load_state_dict(layer.state_dict())
    x = torch.tensor(X.reshape(4, 2, 4), requires_grad=True)
    cont = torch.tensor(CONT)
    (first,) = layer(x[:2], cont[:2])
    (second,) = layer(x[2:], cont[2:])  # starts from the first call's final h and c
    (ref,) = whole(x, cont)
    np.testing.assert_allclose(torch.cat([first, second]).detach().numpy(), ref.detach().numpy(),
                               rtol=1e-12)
    # The carried state is detached: the second call's gradient stops at the batch boundary.
    second.sum().backward()
    assert float(x.grad[2:].abs().sum()) > 0
    np.testing.assert_array_equal(x.grad[:2].numpy(), np.zeros((2, 2, 4)))
    x = x.detach()
    # cont = 0 at t = 0 restarts every stream from zero, whatever was carried.
    fresh = make("LSTM", ["x", "cont"], ["h"], shapes).double()
    fresh.load_state_dict(layer.state_dict())
    restart = torch.zeros(2, 2, dtype=torch.float64)
    restart[1] = 1
    np.testing.assert_allclose(layer(x[2:], restart)[0].detach().numpy(),
                               fresh(x[2:], restart)[0].detach().numpy(), rtol=1e-12)


def test_expose_hidden_takes_and_returns_states_with_gradients():
    shapes = [(2, 2, 4), (2, 2), (1, 2, 3), (1, 2, 3)]
    layer = make("LSTM", ["x", "cont", "h0", "c0"], ["h", "hT", "cT"], shapes,
                 "expose_hidden: true").double()
    assert layer.output_shapes(shapes) == [(2, 2, 3), (1, 2, 3), (1, 2, 3)]
    x = torch.tensor(X.reshape(4, 2, 4))
    ones = torch.ones(2, 2, dtype=torch.float64)
    h0 = torch.tensor(RNG.randn(1, 2, 3), requires_grad=True)
    c0 = torch.tensor(RNG.randn(1, 2, 3), requires_grad=True)
    h, h_t, c_t = layer(x[:2], ones, h0, c0)
    want, wh, wc = np_lstm(blobs_np(layer), X.reshape(4, 2, 4)[:2], np.ones((2, 2)), h0.detach().numpy()[0],
                           c0.detach().numpy()[0])
    np.testing.assert_allclose(h.detach().numpy(), want, rtol=1e-10)
    np.testing.assert_allclose(h_t.detach().numpy()[0], wh, rtol=1e-10)
    np.testing.assert_allclose(c_t.detach().numpy()[0], wc, rtol=1e-10)
    h.sum().backward()
    assert h0.grad is not None and float(h0.grad.abs().sum()) > 0
    assert float(c0.grad.abs().sum()) > 0


def test_single_step_lstm_equals_lstm_unit():
    lstm = make("LSTM", ["x", "cont"], ["h"], [(1, 2, 4), (1, 2)]).double()
    unit_lp = parse_net('layer { name: "u" type: "LSTMUnit" bottom: "c0" bottom: "g" bottom: "k" '
                        'top: "c" top: "h" }').layer[0]
    unit = get_builder("LSTMUnit")(unit_lp, [(1, 2, 3), (1, 2, 12), (1, 2)], caffe_pb2.TRAIN)
    assert unit.output_shapes([(1, 2, 3), (1, 2, 12), (1, 2)]) == [(1, 2, 3), (1, 2, 3)]
    x = torch.tensor(X[:1].reshape(1, 2, 4))
    cont = torch.tensor([[1.0, 0.0]], dtype=torch.float64)
    (h,) = lstm(x, cont)
    gates = torch.nn.functional.linear(x, lstm.blobs[0], lstm.blobs[1])  # h_0 = 0 adds nothing
    c_u, h_u = unit(torch.zeros(1, 2, 3, dtype=torch.float64), gates, cont)
    np.testing.assert_allclose(h.detach().numpy(), h_u.detach().numpy(), rtol=1e-12)


def test_lstm_unit_cont_zero_forgets_the_previous_cell():
    unit_lp = parse_net('layer { name: "u" type: "LSTMUnit" bottom: "c0" bottom: "g" bottom: "k" '
                        'top: "c" top: "h" }').layer[0]
    unit = get_builder("LSTMUnit")(unit_lp, [(1, 2, 1), (1, 2, 4), (1, 2)], caffe_pb2.TRAIN)
    g = np.array([[[0.3, 2.0, -1.0, 0.5], [0.3, 2.0, -1.0, 0.5]]])
    c_prev = torch.tensor([[[5.0], [5.0]]], requires_grad=True)
    c, h = unit(c_prev, torch.tensor(g), torch.tensor([[1.0, 0.0]], dtype=torch.float64))
    i, f, o, gg = sig(0.3), sig(2.0), sig(-1.0), np.tanh(0.5)
    np.testing.assert_allclose(c.detach().numpy().ravel(), [f * 5 + i * gg, i * gg])
    np.testing.assert_allclose(h.detach().numpy().ravel(), o * np.tanh(c.detach().numpy().ravel()))
    c.sum().backward()
    np.testing.assert_allclose(c_prev.grad.numpy().ravel(), [f, 0.0])


def test_shape_and_parameter_errors():
    with pytest.raises(ShapeError, match=r"cont \(3, 2\) must be \(T, N\)"):
        make("LSTM", ["x", "cont"], ["h"], [(4, 2, 3), (3, 2)])
    with pytest.raises(NetDefinitionError, match="num_output"):
        lp = parse_net('layer { name: "r" type: "RNN" bottom: "x" bottom: "c" top: "y" }').layer[0]
        get_builder("RNN")(lp, [(2, 1, 3), (2, 1)], caffe_pb2.TRAIN)
    with pytest.raises(NetDefinitionError, match="initial state"):
        make("LSTM", ["x", "cont", "h0"], ["h", "hT", "cT"], [(4, 2, 3), (4, 2), (1, 2, 3)],
             "expose_hidden: true")
