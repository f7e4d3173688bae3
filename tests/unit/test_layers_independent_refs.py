"""Forward of layers the Caffe oracle does not cover, against implementations that are not ours.

* OpenCV's Caffe importer (cv2.dnn, its own parser and layer code) on prototxt + caffemodel
  written by hovcaffe: Swish, Dropout (TEST) and SPP - the last as the Pooling/Flatten/Concat
  net that Caffe's SPPLayer builds inside itself (kernel = ceil(H / bins), pad = (kernel * bins
  - H + 1) / 2, stride = kernel), which OpenCV can run.
* PyTorch's own recurrent cells (ATen's fused LSTM/RNN/LSTMCell, not the code path our layers
  take): LSTM and RNN with a sequence restarting in the middle (cont = 0), LSTMUnit.

OpenCV 4.14 refuses RNN, Clip, Im2col, BatchReindex, Filter and the Contrastive, Infogain and
MultinomialLogistic losses ("Can't create layer") and has no forward for STOCHASTIC pooling.
Its LSTM reads the blobs as (W_h, W_x, b[, h0, c0]) and its forward crashes (SIGSEGV) with three
blobs and answers "Requested blob not found" with five. Those layers stay with hand formulas,
torch's cells and test_layers_gradcheck.py.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch

from fork_helpers import build, dims, max_rel, one_layer, run_hovcaffe, run_opencv
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net
from hovcaffe.layers import get_builder

cv2 = pytest.importorskip("cv2", reason="OpenCV's dnn module is the independent reference")

TOL = 1e-5


OPENCV_CASES = {
    "Swish": ("Swish", "", (2, 3, 4, 5)),
    "Dropout TEST": ("Dropout", "dropout_param { dropout_ratio: 0.3 }", (2, 3, 4, 5)),
}


@pytest.mark.parametrize("case", list(OPENCV_CASES))
def test_forward_matches_opencv(case, tmp_path: Path):
    type_, param, shape = OPENCV_CASES[case]
    text = one_layer(type_, param, shape)
    net = build(text)
    x = {"data": (np.random.RandomState(0).randn(*shape) * 4).astype(np.float32)}
    ours = run_hovcaffe(net, x, ["l"])[0]
    theirs = run_opencv(text, net, x, ["l"], tmp_path)[0]
    assert max_rel(ours, theirs) < TOL


def spp_as_pooling_net(shape, height: int, method: str) -> str:
    """Caffe's SPPLayer unrolled: one Pooling per level, each flattened, concatenated on axis 1."""
    h, w = shape[2:]
    layers, tops = [], []
    for level in range(height):
        bins = 2 ** level
        kh, kw = math.ceil(h / bins), math.ceil(w / bins)
        ph, pw = (kh * bins - h + 1) // 2, (kw * bins - w + 1) // 2
        layers.append(f'layer {{ name: "pool{level}" type: "Pooling" bottom: "data" top: "pool{level}" '
                      f'pooling_param {{ pool: {method} kernel_h: {kh} kernel_w: {kw} stride_h: {kh} '
                      f'stride_w: {kw} pad_h: {ph} pad_w: {pw} }} }}')
        layers.append(f'layer {{ name: "flat{level}" type: "Flatten" bottom: "pool{level}" '
                      f'top: "flat{level}" }}')
        tops.append(f'bottom: "flat{level}"')
    layers.append(f'layer {{ name: "l" type: "Concat" {" ".join(tops)} top: "l" }}')
    return f'input: "data" input_shape {{ {dims(shape)} }}\n' + "\n".join(layers) + "\n"


@pytest.mark.parametrize("shape,height,method", [((2, 3, 9, 7), 3, "MAX"),
                                                 ((1, 2, 5, 11), 2, "AVE"),
                                                 ((1, 2, 13, 9), 3, "MAX")])
def test_spp_matches_opencv_pooling_net(shape, height, method, tmp_path: Path):
    x = {"data": np.random.RandomState(1).randn(*shape).astype(np.float32)}
    ours = run_hovcaffe(build(one_layer(
        "SPP", f"spp_param {{ pyramid_height: {height} pool: {method} }}", shape)), x, ["l"])[0]
    text = spp_as_pooling_net(shape, height, method)
    theirs = run_opencv(text, build(text), x, ["l"], tmp_path)[0]
    assert ours.shape == theirs.shape == (shape[0], shape[1] * sum(4 ** i for i in range(height)))
    assert max_rel(ours, theirs) < TOL


# ------------------------------------------------------------------ recurrent vs torch's cells

def recurrent(kind: str, shapes, bottoms=("x", "cont"), tops=("o",)):
    text = (f'layer {{ name: "r" type: "{kind}" ' + " ".join(f'bottom: "{b}"' for b in bottoms)
            + " " + " ".join(f'top: "{t}"' for t in tops)
            + ' recurrent_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } '
              'bias_filler { type: "gaussian" std: 0.5 } } }')
    lp = parse_net(text).layer[0]
    return get_builder(lp.type, lp.name)(lp, [tuple(s) for s in shapes], caffe_pb2.TEST).double()


# item 0 restarts at t = 3 (cont 0), item 1 runs through
CONT = torch.tensor([[0, 0], [1, 1], [1, 1], [0, 1], [1, 1]], dtype=torch.float64)
X = torch.tensor(np.random.RandomState(2).randn(5, 2, 4))


def segments(item: int):
    """[start, stop) time ranges of item's sequences (a new one starts wherever cont is 0)."""
    starts = [t for t in range(CONT.shape[0]) if CONT[t, item] == 0] + [CONT.shape[0]]
    return list(zip(starts[:-1], starts[1:]))


def caffe_to_torch_gates(w: torch.Tensor) -> torch.Tensor:
    i, f, o, g = w.chunk(4, dim=0)  # Caffe: i, f, o, g; torch: i, f, g, o
    return torch.cat([i, f, g, o])


def test_lstm_with_a_restart_matches_torch_lstm():
    lay = recurrent("LSTM", [X.shape, CONT.shape])
    w_xc, b_c, w_hc = (b.detach() for b in lay.blobs)
    ref = torch.nn.LSTM(4, 3).double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(caffe_to_torch_gates(w_xc))
        ref.weight_hh_l0.copy_(caffe_to_torch_gates(w_hc))
        ref.bias_ih_l0.copy_(caffe_to_torch_gates(b_c))
        ref.bias_hh_l0.zero_()
    (ours,) = lay(X, CONT)
    for item in range(2):
        for start, stop in segments(item):
            want, _ = ref(X[start:stop, item:item + 1])
            np.testing.assert_allclose(ours[start:stop, item].detach().numpy(),
                                       want[:, 0].detach().numpy(), rtol=1e-10, atol=1e-12)


def test_rnn_with_a_restart_matches_torch_rnn():
    lay = recurrent("RNN", [X.shape, CONT.shape])
    w_xh, b_h, w_hh, w_ho, b_o = (b.detach() for b in lay.blobs)
    assert w_xh.shape == (3, 4) and w_hh.shape == (3, 3) and w_ho.shape == (3, 3)
    ref = torch.nn.RNN(4, 3, nonlinearity="tanh").double()
    with torch.no_grad():
        ref.weight_ih_l0.copy_(w_xh)
        ref.weight_hh_l0.copy_(w_hh)
        ref.bias_ih_l0.copy_(b_h)
        ref.bias_hh_l0.zero_()
    (ours,) = lay(X, CONT)
    for item in range(2):
        for start, stop in segments(item):
            hidden, _ = ref(X[start:stop, item:item + 1])
            want = torch.tanh(hidden[:, 0] @ w_ho.T + b_o)
            np.testing.assert_allclose(ours[start:stop, item].detach().numpy(),
                                       want.detach().numpy(), rtol=1e-10, atol=1e-12)


def test_lstm_unit_matches_torch_lstm_cell():
    """LSTMUnit(c_prev, gates, cont) is an LSTMCell whose input is the gates themselves:
    identity input weights (reordered to torch's gate order), no recurrent weights, c = cont*c."""
    lp = parse_net('layer { name: "u" type: "LSTMUnit" bottom: "c" bottom: "g" bottom: "k" '
                   'top: "c1" top: "h1" }').layer[0]
    unit = get_builder("LSTMUnit")(lp, [(1, 3, 2), (1, 3, 8), (1, 3)], caffe_pb2.TEST)
    rs = np.random.RandomState(3)
    c_prev = torch.tensor(rs.randn(1, 3, 2))
    gates = torch.tensor(rs.randn(1, 3, 8) * 2)
    cont = torch.tensor([[1.0, 0.0, 1.0]], dtype=torch.float64)
    c1, h1 = unit(c_prev, gates, cont)
    cell = torch.nn.LSTMCell(8, 2).double()
    with torch.no_grad():
        cell.weight_ih.copy_(caffe_to_torch_gates(torch.eye(8, dtype=torch.float64)))
        cell.weight_hh.zero_()
        cell.bias_ih.zero_()
        cell.bias_hh.zero_()
    h_want, c_want = cell(gates[0], (torch.zeros(3, 2, dtype=torch.float64),
                                     c_prev[0] * cont[0, :, None]))
    np.testing.assert_allclose(c1[0].detach().numpy(), c_want.detach().numpy(), rtol=1e-12)
    np.testing.assert_allclose(h1[0].detach().numpy(), h_want.detach().numpy(), rtol=1e-12)
