"""Softmax, losses and Accuracy against the Caffe oracle and independent NumPy formulas."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ORACLE
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net, write_blobproto
from hovcaffe.errors import DataSourceError, HovcaffeError, NetDefinitionError, ShapeError
from hovcaffe.layers import get_builder, list_layers
from layer_driver import check_backward, check_forward

FLT_MIN = np.finfo(np.float32).tiny
ORACLE_CASES = ["softmax_axis", "softmaxwithloss_ignore_normalization", "sigmoid_cross_entropy_loss",
                "euclidean_loss", "hinge_loss", "accuracy_topk"]


@pytest.mark.parametrize("case", ORACLE_CASES)
def test_oracle_forward(case):
    check_forward(ORACLE / "forward" / case)


@pytest.mark.parametrize("case", [c for c in ORACLE_CASES
                                  if (ORACLE / "forward" / c / "grads.npz").exists()])
def test_oracle_gradients(case):
    check_backward(ORACLE / "forward" / case)


def test_every_loss_family_type_is_registered():
    assert set(list_layers("loss")) == {
        "Softmax", "SoftmaxWithLoss", "SigmoidCrossEntropyLoss", "EuclideanLoss", "HingeLoss",
        "InfogainLoss", "ContrastiveLoss", "MultinomialLogisticLoss", "Accuracy"}


def make(text: str, bottom_shapes, phase=caffe_pb2.TRAIN):
    lp = parse_net(text).layer[0]
    return get_builder(lp.type, lp.name)(lp, [tuple(s) for s in bottom_shapes], phase)


def t(a, grad=False, dtype=np.float32):
    return torch.tensor(np.asarray(a, dtype=dtype), requires_grad=grad)


def np_softmax(x: np.ndarray, axis: int) -> np.ndarray:
    e = np.exp(x - x.max(axis=axis, keepdims=True))
    return e / e.sum(axis=axis, keepdims=True)


# ----------------------------------------------------------------------------- SoftmaxWithLoss

def test_softmax_loss_flt_min_clamp_keeps_caffes_gradient():
    layer = make('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" }',
                 [(3, 4), (3,)])
    x = np.array([[0, 200, 0, 0], [1, 2, 3, 4], [-150, 0, 1, 0]], np.float32)
    y = np.array([0, 3, 0], np.float32)  # rows 0 and 2: true-class prob underflows
    p = np_softmax(x.astype(np.float64), 1)
    nll = -np.log(np.maximum(p[np.arange(3), y.astype(int)], FLT_MIN))
    tx = t(x, True)
    (loss,) = layer(tx, t(y))
    assert loss.item() == pytest.approx(nll.sum() / 3, rel=1e-6)
    assert nll[0] == pytest.approx(87.3365, abs=1e-3)
    loss.backward()
    onehot = np.eye(4)[y.astype(int)]
    np.testing.assert_allclose(tx.grad.numpy(), (p - onehot) / 3, atol=1e-7)


def test_softmax_loss_all_ignored_gives_zero_not_nan():
    layer = make('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" '
                 'loss_param { ignore_label: -1 } }', [(2, 3), (2,)])
    tx = t(np.random.RandomState(0).randn(2, 3), True)
    (loss,) = layer(tx, t([-1, -1]))
    loss.backward()
    assert loss.item() == 0.0
    np.testing.assert_array_equal(tx.grad.numpy(), np.zeros((2, 3)))


def test_softmax_loss_truncates_float_labels_and_reports_bad_ones():
    layer = make('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" }',
                 [(2, 3), (2,)])
    x = np.random.RandomState(1).randn(2, 3).astype(np.float32)
    p = np_softmax(x.astype(np.float64), 1)
    (loss,) = layer(t(x), t([2.9, -0.7]))  # -> labels 2 and 0
    assert loss.item() == pytest.approx(-(np.log(p[0, 2]) + np.log(p[1, 0])) / 2, rel=1e-6)
    with pytest.raises(HovcaffeError, match=r"label 3 is outside \[0, 3\)"):
        layer(t(x), t([3, 0]))


def test_softmax_loss_two_tops_need_two_weights_and_prob_has_no_gradient():
    text = ('layer {{ name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" top: "prob" '
            '{} softmax_param {{ axis: 2 }} }}')
    with pytest.raises(NetDefinitionError, match="two loss_weight"):
        make(text.format("loss_weight: 1"), [(2, 2, 3), (2, 2)])
    layer = make(text.format("loss_weight: 1 loss_weight: 1"), [(2, 2, 3), (2, 2)])
    assert layer.output_shapes([(2, 2, 3), (2, 2)]) == [(), (2, 2, 3)]
    x = np.random.RandomState(2).randn(2, 2, 3).astype(np.float32)
    tx = t(x, True)
    loss, prob = layer(tx, t([[0, 1], [2, 0]]))
    np.testing.assert_allclose(prob.detach().numpy(), np_softmax(x, 2), rtol=1e-6)
    assert not prob.requires_grad  # Caffe's backward reads only the loss top's diff


def test_softmax_loss_shape_errors_name_the_layer_and_shapes():
    with pytest.raises(ShapeError, match=r"'l'.*label count 10 \(2, 5\).*outer\*inner = 6"):
        make('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" }',
             [(2, 4, 3), (2, 5)])
    with pytest.raises(ShapeError, match=r"same first dim"):
        make('layer { name: "l" type: "SoftmaxWithLoss" bottom: "x" bottom: "y" top: "loss" }',
             [(2, 4, 3), (6,)])
    with pytest.raises(ShapeError, match="axis 3 is out of range"):
        make('layer { name: "s" type: "Softmax" bottom: "x" top: "p" softmax_param { axis: 3 } }',
             [(2, 4, 3)])


# ----------------------------------------------------------------------------- SigmoidCrossEntropyLoss

@pytest.mark.parametrize("loss_param, divisor", [
    ("", "batch"), ("normalize: true", "valid"), ("normalize: false", "batch"),
    ("normalization: FULL", "full"), ("normalization: NONE", "none")])
def test_sigmoid_cross_entropy_normalisation_and_gradient(loss_param, divisor):
    layer = make('layer {{ name: "l" type: "SigmoidCrossEntropyLoss" bottom: "x" bottom: "t" top: "loss" '
                 'loss_param {{ ignore_label: -1 {} }} }}'.format(loss_param), [(2, 3), (2, 3)])
    x = np.array([[0, 2, -3], [30, -30, 0.5]], np.float32)
    tgt = np.array([[1, 0.25, -1], [0, 1, 1]], np.float32)
    valid = tgt.astype(np.int64) != -1
    x64 = x.astype(np.float64)
    ell = np.maximum(x64, 0) - x64 * tgt + np.log1p(np.exp(-np.abs(x64)))
    z = {"batch": 2, "valid": valid.sum(), "full": 6, "none": 1}[divisor]
    tx = t(x, True)
    (loss,) = layer(tx, t(tgt))
    assert loss.item() == pytest.approx((ell * valid).sum() / z, rel=1e-6)
    loss.backward()
    sig = 1 / (1 + np.exp(-x64))
    np.testing.assert_allclose(tx.grad.numpy(), (sig - tgt) * valid / z, atol=1e-7)  # incl. x == 0


# ----------------------------------------------------------------------------- InfogainLoss

def infogain_reference(x, labels, h, axis, ignore, normalization):
    """Caffe's loop, float64: loss and (p * rowsum(H)[label] - H[label]) / Z."""
    xm = np.moveaxis(x.astype(np.float64), axis, -1)  # (..., K)
    p = np_softmax(xm, -1)
    lab = labels.reshape(xm.shape[:-1]).astype(np.int64)
    valid = lab != ignore if ignore is not None else np.ones_like(lab, bool)
    loss, grad = 0.0, np.zeros_like(p)
    for idx in np.ndindex(lab.shape):
        if not valid[idx]:
            continue
        row = h[lab[idx]]
        loss -= (row * np.log(np.maximum(p[idx], 1e-20))).sum()
        grad[idx] = p[idx] * row.sum() - row
    outer = int(np.prod(x.shape[:axis]))
    z = {"VALID": valid.sum(), "FULL": lab.size, "BATCH_SIZE": outer, "NONE": 1}[normalization]
    z = max(1, z)
    return loss / z, np.moveaxis(grad / z, -1, axis)


@pytest.mark.parametrize("from_file", [True, False])
def test_infogain_loss_matches_formula(tmp_path, from_file):
    rng = np.random.RandomState(4)
    k = 4
    x = rng.randn(2, 3, k).astype(np.float32)  # classes on axis 2
    x[0, 0, 1] = -80.0  # a probability below 1e-20 exercises the clamp
    labels = np.array([[1, 0, 3], [2, 255, 1]], np.float32)
    h = rng.rand(k, k).astype(np.float32)
    source = ""
    if from_file:
        write_blobproto(h.reshape(1, 1, k, k), tmp_path / "H.binaryproto")
        source = f'source: "{tmp_path / "H.binaryproto"}"'
    text = ('layer {{ name: "ig" type: "InfogainLoss" bottom: "x" bottom: "y" {} top: "loss" '
            'infogain_loss_param {{ axis: 2 {} }} loss_param {{ ignore_label: 255 normalization: {} }} }}')
    bottoms = ['bottom: "H"', ""][from_file]
    shapes = [x.shape, labels.shape] + ([] if from_file else [(k, k)])
    for norm in ("VALID", "FULL", "BATCH_SIZE", "NONE"):
        layer = make(text.format(bottoms, source, norm), shapes)
        tx = t(x, True)
        (loss,) = layer(tx, t(labels), *([] if from_file else [t(h)]))
        want_loss, want_grad = infogain_reference(x, labels, h.astype(np.float64), 2, 255, norm)
        assert loss.item() == pytest.approx(want_loss, rel=1e-5)
        loss.backward()
        np.testing.assert_allclose(tx.grad.numpy(), want_grad, atol=1e-6)


def test_infogain_loss_errors(tmp_path):
    with pytest.raises(NetDefinitionError, match="normalize"):
        make('layer { name: "ig" type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "H" top: "l" '
             'loss_param { normalize: true } }', [(2, 3), (2,), (3, 3)])
    with pytest.raises(ShapeError, match=r"H has 4 values; 3 classes"):
        make('layer { name: "ig" type: "InfogainLoss" bottom: "x" bottom: "y" bottom: "H" top: "l" }',
             [(2, 3), (2,), (2, 2)])
    missing = tmp_path / "nope.binaryproto"
    with pytest.raises(DataSourceError, match="nope.binaryproto"):
        make(f'layer {{ name: "ig" type: "InfogainLoss" bottom: "x" bottom: "y" top: "l" '
             f'infogain_loss_param {{ source: "{missing}" }} }}', [(2, 3), (2,)])


# ----------------------------------------------------------------------------- ContrastiveLoss

def contrastive_reference(a, b, y, margin, legacy):
    """Caffe's forward and its backward (which uses dist + 1e-4 for dissimilar pairs)."""
    a, b = a.reshape(len(a), -1).astype(np.float64), b.reshape(len(b), -1).astype(np.float64)
    n = len(a)
    loss, ga = 0.0, np.zeros_like(a)
    for i in range(n):
        diff = a[i] - b[i]
        d2 = diff @ diff
        if int(y[i]):
            loss += d2
            ga[i] = diff / n
            continue
        if legacy:
            mdist = margin - d2
            loss += max(mdist, 0.0)
            beta = -1.0 / n
        else:
            dist = np.sqrt(d2)
            mdist = margin - dist
            loss += max(mdist, 0.0) ** 2
            beta = -mdist / (dist + 1e-4) / n
        ga[i] = beta * diff if mdist > 0 else 0.0
    return loss / n / 2, ga


@pytest.mark.parametrize("legacy", [False, True])
def test_contrastive_loss_matches_caffe_forward_and_backward(legacy):
    rng = np.random.RandomState(5)
    a = (0.3 * rng.randn(6, 3, 1, 1)).astype(np.float32)
    b = (0.3 * rng.randn(6, 3, 1, 1)).astype(np.float32)
    b[5] = a[5] + 2.0  # a dissimilar pair beyond the margin: no gradient
    y = np.array([1, 0, 0.7, 0, 1, 0], np.float32)  # 0.7 truncates to 0: dissimilar
    layer = make('layer {{ name: "c" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "l" '
                 'contrastive_loss_param {{ margin: 1.5 legacy_version: {} }} }}'.format(str(legacy).lower()),
                 [a.shape, b.shape, (6, 1, 1, 1)])
    ta, tb = t(a, True), t(b, True)
    (loss,) = layer(ta, tb, t(y.reshape(6, 1, 1, 1)))
    want_loss, want_ga = contrastive_reference(a, b, y, 1.5, legacy)
    assert loss.item() == pytest.approx(want_loss, rel=1e-5)
    (2.0 * loss).backward()
    np.testing.assert_allclose(ta.grad.numpy().reshape(6, 3), 2 * want_ga, atol=1e-6)
    np.testing.assert_allclose(tb.grad.numpy().reshape(6, 3), -2 * want_ga, atol=1e-6)


def test_contrastive_loss_requires_singleton_spatial_dims():
    with pytest.raises(ShapeError, match=r"\(N, C, 1, 1\)"):
        make('layer { name: "c" type: "ContrastiveLoss" bottom: "a" bottom: "b" bottom: "y" top: "l" }',
             [(2, 3, 2, 1), (2, 3, 2, 1), (2, 1, 1, 1)])


# ----------------------------------------------------------------------------- MultinomialLogisticLoss

def test_multinomial_logistic_loss_with_clamped_probability():
    layer = make('layer { name: "m" type: "MultinomialLogisticLoss" bottom: "p" bottom: "y" top: "l" }',
                 [(3, 4, 1, 1), (3, 1, 1, 1)])
    p = np.array([[0.1, 0.2, 0.3, 0.4], [0.25, 0.25, 0.5, 0.0], [0.5, 0.5, 0, 0]], np.float32)
    y = np.array([3, 3, 0], np.float32)  # row 1 picks p = 0: clamped to 1e-20
    picked = np.maximum(p[np.arange(3), y.astype(int)].astype(np.float64), 1e-20)
    tp = t(p.reshape(3, 4, 1, 1), True)
    (loss,) = layer(tp, t(y.reshape(3, 1, 1, 1)))
    assert loss.item() == pytest.approx(-np.log(picked).sum() / 3, rel=1e-6)
    loss.backward()
    want = np.zeros((3, 4))
    want[np.arange(3), y.astype(int)] = -1.0 / (3 * picked)
    np.testing.assert_allclose(tp.grad.numpy().reshape(3, 4), want, rtol=1e-6)


# ----------------------------------------------------------------------------- EuclideanLoss / Hinge

def test_euclidean_loss_gradients_to_both_bottoms():
    layer = make('layer { name: "e" type: "EuclideanLoss" bottom: "a" bottom: "b" top: "l" }',
                 [(2, 3), (2, 3)])
    a, b = np.array([[1, 2, 3], [0, 0, 1]], np.float32), np.array([[0, 2, 1], [1, 1, 1]], np.float32)
    ta, tb = t(a, True), t(b, True)
    (loss,) = layer(ta, tb)
    assert loss.item() == pytest.approx(((a - b) ** 2).sum() / 4)
    loss.backward()
    np.testing.assert_allclose(ta.grad.numpy(), (a - b) / 2)
    np.testing.assert_allclose(tb.grad.numpy(), -(a - b) / 2)


# ----------------------------------------------------------------------------- Accuracy

def accuracy_reference(x, labels, top_k, ignore, axis=1):
    """Caffe's loop: correct iff fewer than top_k *other* classes score >= the true class."""
    xm = np.moveaxis(x, axis, -1)
    lab = labels.reshape(xm.shape[:-1]).astype(np.int64)
    k = xm.shape[-1]
    hits, seen = np.zeros(k), np.zeros(k)
    for idx in np.ndindex(lab.shape):
        c = lab[idx]
        if ignore is not None and c == ignore:
            continue
        seen[c] += 1
        better = sum(xm[idx][j] >= xm[idx][c] for j in range(k)) - 1
        hits[c] += better < top_k
    acc = hits.sum() / seen.sum() if seen.sum() else 0.0
    return acc, np.where(seen > 0, hits / np.maximum(seen, 1), 0.0)


@pytest.mark.parametrize("top_k, ignore", [(1, None), (2, None), (1, 0), (3, 2)])
def test_accuracy_ties_count_against_and_per_class(top_k, ignore):
    x = np.array([[1, 1, 0, 0], [0, 2, 2, 1], [3, 3, 3, 3], [0, 1, 2, 3], [5, 0, 0, 0]], np.float32)
    y = np.array([0, 2, 3, 3, 0], np.float32)
    ign = f"ignore_label: {ignore}" if ignore is not None else ""
    layer = make(f'layer {{ name: "a" type: "Accuracy" bottom: "x" bottom: "y" top: "acc" top: "pc" '
                 f'accuracy_param {{ top_k: {top_k} {ign} }} }}', [x.shape, y.shape], caffe_pb2.TEST)
    acc, per_class = layer(t(x, True), t(y))
    want_acc, want_pc = accuracy_reference(x, y, top_k, ignore)
    assert acc.shape == () and per_class.shape == (4,)
    assert acc.item() == pytest.approx(want_acc)
    np.testing.assert_allclose(per_class.numpy(), want_pc, rtol=1e-6)
    assert not acc.requires_grad


def test_accuracy_with_nothing_valid_is_zero():
    layer = make('layer { name: "a" type: "Accuracy" bottom: "x" bottom: "y" top: "acc" '
                 'accuracy_param { ignore_label: 1 } }', [(2, 3), (2,)], caffe_pb2.TEST)
    (acc,) = layer(t(np.zeros((2, 3))), t([1, 1]))
    assert acc.item() == 0.0
    with pytest.raises(ShapeError, match="top_k 4 exceeds the 3 classes"):
        make('layer { name: "a" type: "Accuracy" bottom: "x" bottom: "y" top: "acc" '
             'accuracy_param { top_k: 4 } }', [(2, 3), (2,)])
