"""Every oracle forward case through CaffeNet, compared with real Caffe's numbers.

For each case under tests/oracle/forward (and caffenet/googlenet from ../shared/oracle when it
exists): build `net.prototxt` in TEST, load `weights.caffemodel`, feed `input.npz` and compare
every blob of `blobs.npz` (and `layer_outputs.npz`, the values right after in-place producers).
Cases with gradients also build `net_train.prototxt` in TRAIN, feed `input.npz` +
`train_input.npz`, backpropagate Caffe's objective and compare `train_blobs.npz` and `grads.npz`.
Tolerances are the oracle README's: single layers rtol 1e-5, atol 1e-6*max|blob|; whole nets
rtol 1e-4, atol 1e-5*max|blob|; gradients rtol 1e-4, atol 1e-5*max|diff|.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ORACLE, forward_case_dir, forward_cases, load_json, load_npz
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import read_net
from hovcaffe.diffs import run_pass
from hovcaffe.net import CaffeNet
from hovcaffe.weights import load_caffemodel

# The oracle README: "Grads exist for every case except threshold, dropout_test, argmax_topk,
# accuracy_topk, cifar10_full, caffenet, googlenet and squeezenet_style" (Threshold, ArgMax and
# Accuracy have no backward in Caffe; Dropout's TRAIN phase is random; the big nets were only
# run forward).
NO_GRAD_CASES = {"threshold", "dropout_test", "argmax_topk", "accuracy_topk", "cifar10_full",
                 "caffenet", "googlenet", "squeezenet_style"}
GRAD_CASES = [c for c in forward_cases(include_big=False) if c not in NO_GRAD_CASES]


def _tolerances(case_dir) -> tuple[float, float]:
    kind = load_json(case_dir / "meta.json").get("kind", "layer")
    return (1e-4, 1e-5) if kind == "net" else (1e-5, 1e-6)


def _assert_close(got: torch.Tensor, want: np.ndarray, rtol: float, atol_factor: float, what: str):
    got = got.detach().cpu().numpy()
    assert got.shape == want.shape, f"{what}: shape {got.shape}, Caffe {want.shape}"
    scale = float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_factor * scale, equal_nan=True,
                               err_msg=what)


def _net(case_dir, prototxt: str, phase: int) -> CaffeNet:
    path = case_dir / prototxt
    net = CaffeNet(read_net(path), phase, source=str(path))
    load_caffemodel(net, case_dir / "weights.caffemodel", strict=True)
    return net


@pytest.mark.parametrize("case", forward_cases())
def test_oracle_forward_test_phase(case):
    d = forward_case_dir(case)
    rtol, atol = _tolerances(d)
    net = _net(d, "net.prototxt", caffe_pb2.TEST)
    res = run_pass(net, {k: torch.from_numpy(v) for k, v in load_npz(d / "input.npz").items()})
    want = load_npz(d / "blobs.npz")
    assert want, case
    for name, value in want.items():
        _assert_close(res.blobs[name], value, rtol, atol, f"{case}: blob {name!r}")
    if (d / "layer_outputs.npz").exists():
        for key, value in load_npz(d / "layer_outputs.npz").items():
            _assert_close(res.layer_outputs[key], value, rtol, atol, f"{case}: {key}")


@pytest.mark.parametrize("case", GRAD_CASES)
def test_oracle_train_phase_and_gradients(case):
    d = forward_case_dir(case)
    rtol, atol = _tolerances(d)
    net = _net(d, "net_train.prototxt", caffe_pb2.TRAIN)
    inputs = load_npz(d / "input.npz")
    if (d / "train_input.npz").exists():
        inputs.update(load_npz(d / "train_input.npz"))
    train_blobs = load_npz(d / "train_blobs.npz")
    for name, value in train_blobs.items():   # BatchNorm's running blobs as loaded
        if name.startswith("params_before_forward/"):
            layer, i = name.split("/", 1)[1].rsplit("/", 1)
            _assert_close(net.layers[layer].blobs[int(i)], value, rtol, atol, f"{case}: {name}")
    res = run_pass(net, {k: torch.from_numpy(v) for k, v in inputs.items()}, backward=True)
    for name, value in train_blobs.items():
        if name.startswith("params_before_forward/"):
            continue
        if name.startswith("params_after_forward/"):
            layer, i = name.split("/", 1)[1].rsplit("/", 1)
            got = net.layers[layer].blobs[int(i)]
        else:
            got = res.blobs[name]
        _assert_close(got, value, rtol, atol, f"{case}: TRAIN blob {name!r}")
    grads = load_npz(d / "grads.npz")
    assert grads, case
    for key, value in grads.items():
        _assert_close(res.grads[key], value, 1e-4, 1e-5, f"{case}: {key}")


def test_grad_case_list_matches_the_oracle():
    """Every small case either has grads.npz or is one the README lists as having none."""
    for case in forward_cases(include_big=False):
        has = (ORACLE / "forward" / case / "grads.npz").exists()
        assert has == (case not in NO_GRAD_CASES), case
