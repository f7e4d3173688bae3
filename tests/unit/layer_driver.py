"""A minimal layer-by-layer runner for oracle cases made only of Input + single layers.

It checks the layer families in isolation from the net builder: each layer is built from the
registry with the bottom shapes its Caffe Reshape would see, run in file order on the oracle's
inputs, and the objective is Caffe's `sum(loss_weight * top.sum())` (loss layers default to 1).
It does not handle in-place tops, phase filtering or parameter loading - the cases it runs need
none of them (the whole-net path is tested by the net's own oracle test).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from conftest import load_npz
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import read_net
from hovcaffe.layers import get_builder


def input_shapes(lp) -> dict[str, tuple[int, ...]]:
    shapes = [tuple(int(d) for d in s.dim) for s in lp.input_param.shape]
    return {top: shapes[0 if len(shapes) == 1 else i] for i, top in enumerate(lp.top)}


def build(prototxt: Path, phase: int):
    """[(LayerParameter, layer)] for every non-Input layer, and the inferred blob shapes."""
    net = read_net(prototxt)
    shapes: dict[str, tuple[int, ...]] = {}
    layers = []
    for lp in net.layer:
        if lp.type == "Input":
            shapes.update(input_shapes(lp))
            continue
        assert not any(t in lp.bottom for t in lp.top), "the driver does not do in-place layers"
        bottoms = [shapes[b] for b in lp.bottom]
        layer = get_builder(lp.type, lp.name)(lp, bottoms, phase)
        shapes.update(zip(lp.top, layer.output_shapes(bottoms)))
        layers.append((lp, layer))
    return layers, shapes


def run(layers, inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    blobs = dict(inputs)
    for lp, layer in layers:
        tops = layer(*[blobs[b] for b in lp.bottom])
        assert len(tops) == len(lp.top), lp.name
        blobs.update(zip(lp.top, tops))
    return blobs


def objective(layers, blobs) -> torch.Tensor:
    total = torch.zeros(())
    for lp, layer in layers:
        weights = list(lp.loss_weight) or ([1.0] if layer.is_loss else [])
        for top, w in zip(lp.top, weights):
            if w:
                total = total + w * blobs[top].sum()
    return total


def tensors(arrays: dict[str, np.ndarray], grad: bool = False) -> dict[str, torch.Tensor]:
    return {k: torch.tensor(v, requires_grad=grad) for k, v in arrays.items()}


def assert_close(got: torch.Tensor | np.ndarray, want: np.ndarray, *, rtol: float, atol_rel: float,
                 what: str) -> None:
    got = got.detach().numpy() if isinstance(got, torch.Tensor) else np.asarray(got)
    assert got.shape == want.shape, f"{what}: shape {got.shape} != oracle {want.shape}"
    scale = float(np.abs(want).max()) if want.size else 0.0
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol_rel * max(scale, 1e-30), err_msg=what)


def check_forward(case: Path, *, rtol: float = 1e-5, atol_rel: float = 1e-6) -> None:
    """TEST-phase forward of `case`/net.prototxt reproduces every blob of blobs.npz."""
    layers, _ = build(case / "net.prototxt", caffe_pb2.TEST)
    blobs = run(layers, tensors(load_npz(case / "input.npz")))
    for name, want in load_npz(case / "blobs.npz").items():
        assert_close(blobs[name], want, rtol=rtol, atol_rel=atol_rel, what=f"{case.name} blob {name}")


def check_backward(case: Path, *, rtol: float = 1e-4, atol_rel: float = 1e-5) -> None:
    """TRAIN-phase forward of net_train.prototxt (train_blobs.npz) and its gradients (grads.npz)."""
    layers, _ = build(case / "net_train.prototxt", caffe_pb2.TRAIN)
    arrays = load_npz(case / "input.npz")
    if (case / "train_input.npz").exists():
        arrays.update(load_npz(case / "train_input.npz"))
    blobs = run(layers, tensors(arrays, grad=True))
    for t in blobs.values():
        if t.requires_grad and not t.is_leaf:
            t.retain_grad()
    for name, want in load_npz(case / "train_blobs.npz").items():
        assert_close(blobs[name], want, rtol=1e-5, atol_rel=1e-6, what=f"{case.name} train blob {name}")
    objective(layers, blobs).backward()
    grads = load_npz(case / "grads.npz")
    assert grads, case
    for key, want in grads.items():
        kind, name = key.split("/", 1)
        assert kind == "blob_diff", f"{case.name}: unexpected param gradient {key}"
        got = blobs[name].grad
        got = torch.zeros(want.shape) if got is None else got
        assert_close(got, want, rtol=rtol, atol_rel=atol_rel, what=f"{case.name} diff of {name}")
