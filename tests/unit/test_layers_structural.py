"""Structural layers against the Caffe oracle and independent NumPy re-implementations."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ORACLE
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net
from hovcaffe.errors import NetDefinitionError, ShapeError
from hovcaffe.layers import get_builder, list_layers
from layer_driver import check_backward, check_forward

TEST = caffe_pb2.TEST

ORACLE_CASES = ["concat_axis1", "concat_axis2", "slice_points", "flatten", "reshape_0_minus1",
                "crop_offsets", "tile", "reduction", "argmax_topk", "eltwise_sum_coeff",
                "eltwise_prod", "eltwise_max"]


@pytest.mark.parametrize("case", ORACLE_CASES)
def test_oracle_forward(case):
    check_forward(ORACLE / "forward" / case)


@pytest.mark.parametrize("case", [c for c in ORACLE_CASES
                                  if (ORACLE / "forward" / c / "grads.npz").exists()])
def test_oracle_gradients(case):
    check_backward(ORACLE / "forward" / case)


def test_every_structural_type_is_registered():
    assert set(list_layers("structural")) == {
        "Eltwise", "Concat", "Slice", "Split", "Flatten", "Reshape", "Tile", "Reduction", "ArgMax",
        "Filter", "BatchReindex", "Crop"}


def make(text: str, bottom_shapes, phase=TEST):
    """Build the single layer described by a `layer { ... }` prototxt snippet."""
    lp = parse_net(text).layer[0]
    return get_builder(lp.type, lp.name)(lp, [tuple(s) for s in bottom_shapes], phase)


def t(a, grad=False):
    return torch.tensor(np.asarray(a, dtype=np.float32), requires_grad=grad)


# ----------------------------------------------------------------------------- Eltwise

def test_eltwise_max_ties_follow_caffe_and_gradient_goes_to_winner():
    layer = make('layer { name: "m" type: "Eltwise" bottom: "a" bottom: "b" bottom: "c" top: "y" '
                 'eltwise_param { operation: MAX } }', [(6,)] * 3)
    a = np.array([1, 2, 3, 0, 5, 4], np.float32)
    b = np.array([1, 2, 1, 0, 5, 7], np.float32)
    c = np.array([0, 2, 3, 1, 5, 7], np.float32)
    # Caffe's loop: a vs b, b wins ties; then c replaces only when strictly greater.
    winner = np.where(a > b, 0, 1)
    best = np.where(a > b, a, b)
    winner = np.where(c > best, 2, winner)
    ta, tb, tc = t(a, True), t(b, True), t(c, True)
    (y,) = layer(ta, tb, tc)
    np.testing.assert_array_equal(y.detach().numpy(), np.maximum(np.maximum(a, b), c))
    dy = np.arange(1, 7, dtype=np.float32)
    y.backward(t(dy))
    for i, g in enumerate((ta.grad, tb.grad, tc.grad)):
        np.testing.assert_array_equal(g.numpy(), np.where(winner == i, dy, 0))


def test_eltwise_sum_coeff_count_and_shape_errors():
    with pytest.raises(NetDefinitionError, match="one coeff per bottom"):
        make('layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "y" '
             'eltwise_param { coeff: 1 } }', [(2, 3), (2, 3)])
    with pytest.raises(ShapeError, match=r"'s'.*\(2, 4\).*\(2, 3\)"):
        make('layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "y" }', [(2, 3), (2, 4)])
    layer = make('layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "y" }', [(2, 3), (2, 3)])
    with pytest.raises(ShapeError, match="identical shapes"):  # torch alone would broadcast
        layer(torch.zeros(2, 3), torch.zeros(1, 3))
    with pytest.raises(NetDefinitionError, match="only allowed with operation SUM"):
        make('layer { name: "s" type: "Eltwise" bottom: "a" bottom: "b" top: "y" '
             'eltwise_param { operation: PROD coeff: 1 coeff: 2 } }', [(2, 3), (2, 3)])


# ----------------------------------------------------------------------------- Concat / Slice

def test_concat_legacy_concat_dim_and_conflict():
    layer = make('layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" '
                 'concat_param { concat_dim: 0 } }', [(2, 3), (4, 3)])
    assert layer.output_shapes([(2, 3), (4, 3)]) == [(6, 3)]
    a, b = np.ones((2, 3)), np.zeros((4, 3))
    np.testing.assert_array_equal(layer(t(a), t(b))[0].numpy(), np.concatenate([a, b], 0))
    with pytest.raises(NetDefinitionError, match="not both"):
        make('layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" '
             'concat_param { concat_dim: 0 axis: 1 } }', [(2, 3), (2, 3)])
    with pytest.raises(ShapeError, match="all dims except axis 1"):
        make('layer { name: "c" type: "Concat" bottom: "a" bottom: "b" top: "y" }', [(2, 3), (3, 3)])


def test_slice_legacy_slice_dim_equal_split_and_errors():
    layer = make('layer { name: "s" type: "Slice" bottom: "a" top: "x" top: "y" top: "z" '
                 'slice_param { slice_dim: 0 } }', [(6, 2)])
    assert layer.output_shapes([(6, 2)]) == [(2, 2)] * 3
    a = np.arange(12, dtype=np.float32).reshape(6, 2)
    for got, want in zip(layer(t(a)), np.split(a, 3, axis=0)):
        np.testing.assert_array_equal(got.numpy(), want)
    with pytest.raises(ShapeError, match="3 equal parts"):
        make('layer { name: "s" type: "Slice" bottom: "a" top: "x" top: "y" top: "z" }', [(2, 4)])
    with pytest.raises(NetDefinitionError, match="slice_point"):
        make('layer { name: "s" type: "Slice" bottom: "a" top: "x" top: "y" '
             'slice_param { slice_point: 1 slice_point: 2 } }', [(2, 4)])
    with pytest.raises(NetDefinitionError, match="strictly increasing"):
        make('layer { name: "s" type: "Slice" bottom: "a" top: "x" top: "y" top: "z" '
             'slice_param { slice_point: 2 slice_point: 2 } }', [(2, 4)])


def test_split_copies_and_sums_gradients():
    layer = make('layer { name: "s" type: "Split" bottom: "a" top: "x" top: "y" }', [(3,)])
    a = t([1, 2, 3], True)
    x, y = layer(a)
    (2 * x.sum() + 3 * y.sum()).backward()
    np.testing.assert_array_equal(a.grad.numpy(), [5, 5, 5])


# ----------------------------------------------------------------------------- Reshape

@pytest.mark.parametrize("spec, bottom, want", [
    ("shape { dim: 0 dim: -1 }", (2, 3, 4), (2, 12)),
    ("axis: -1 shape { dim: 1 dim: 1 }", (2, 3), (2, 3, 1, 1)),            # -1 = after the last axis
    ("axis: 1 num_axes: 0 shape { dim: 1 }", (2, 3), (2, 1, 3)),            # insert an axis
    ("axis: 1 num_axes: 2 shape { dim: -1 }", (2, 3, 4, 5), (2, 12, 5)),
    ("axis: -2 shape { dim: 0 dim: -1 }", (2, 3, 4), (2, 3, 4, 1)),         # start = 3-2+1; 0 copies axis 2
])
def test_reshape_axis_rules(spec, bottom, want):
    layer = make(f'layer {{ name: "r" type: "Reshape" bottom: "a" top: "y" reshape_param {{ {spec} }} }}',
                 [bottom])
    assert layer.output_shapes([bottom]) == [want]
    x = np.arange(np.prod(bottom), dtype=np.float32).reshape(bottom)
    np.testing.assert_array_equal(layer(t(x))[0].numpy(), x.reshape(want))


def test_reshape_runs_on_another_batch_size_and_rejects_bad_specs():
    layer = make('layer { name: "r" type: "Reshape" bottom: "a" top: "y" '
                 'reshape_param { shape { dim: 0 dim: -1 } } }', [(2, 3, 4)])
    assert tuple(layer(torch.zeros(5, 3, 4))[0].shape) == (5, 12)
    with pytest.raises(NetDefinitionError, match="more than one -1"):
        make('layer { name: "r" type: "Reshape" bottom: "a" top: "y" '
             'reshape_param { shape { dim: -1 dim: -1 } } }', [(2, 3)])
    with pytest.raises(ShapeError, match="no axis 2 to copy"):
        make('layer { name: "r" type: "Reshape" bottom: "a" top: "y" '
             'reshape_param { shape { dim: 0 dim: 0 dim: 0 } } }', [(2, 3)])
    with pytest.raises(ShapeError, match="not divisible"):
        make('layer { name: "r" type: "Reshape" bottom: "a" top: "y" '
             'reshape_param { shape { dim: 4 dim: -1 } } }', [(2, 3)])


# ----------------------------------------------------------------------------- ArgMax

def argmax_reference(x: np.ndarray, top_k: int, out_max_val: bool, axis: int | None) -> np.ndarray:
    """Caffe's loop: partial_sort of (value, index) pairs with std::greater."""
    if axis is None:
        flat = x.reshape(x.shape[0], -1)
        out = np.zeros((x.shape[0], 2 if out_max_val else 1, top_k), np.float32)
        for n in range(flat.shape[0]):
            pairs = sorted(((float(v), j) for j, v in enumerate(flat[n])), reverse=True)[:top_k]
            out[n, 0] = [j for _, j in pairs]
            if out_max_val:
                out[n, 1] = [v for v, _ in pairs]
        return out.reshape((x.shape[0], out.shape[1], top_k) + (1,) * max(0, x.ndim - 3))
    moved = np.moveaxis(x, axis, -1)
    out = np.zeros(moved.shape[:-1] + (top_k,), np.float32)
    for idx in np.ndindex(moved.shape[:-1]):
        pairs = sorted(((float(v), j) for j, v in enumerate(moved[idx])), reverse=True)[:top_k]
        out[idx] = [v for v, _ in pairs] if out_max_val else [j for _, j in pairs]
    return np.moveaxis(out, -1, axis)


@pytest.mark.parametrize("params, axis", [
    ("top_k: 3", None), ("top_k: 4 out_max_val: true", None),
    ("top_k: 2 axis: 1", 1), ("top_k: 3 axis: -1 out_max_val: true", 2), ("axis: 0", 0)])
def test_argmax_ties_rank_the_larger_index_first(params, axis):
    rng = np.random.RandomState(3)
    x = rng.randint(0, 3, size=(2, 4, 5)).astype(np.float32)  # many ties
    layer = make(f'layer {{ name: "am" type: "ArgMax" bottom: "a" top: "y" argmax_param {{ {params} }} }}',
                 [x.shape])
    p = layer.param.argmax_param
    want = argmax_reference(x, p.top_k, p.out_max_val, axis)
    (y,) = layer(t(x))
    assert layer.output_shapes([x.shape]) == [want.shape]
    np.testing.assert_array_equal(y.numpy(), want)


def test_argmax_on_2d_input_has_three_axes():
    layer = make('layer { name: "am" type: "ArgMax" bottom: "a" top: "y" }', [(2, 5)])
    x = np.array([[0, 9, 9, 1, 2], [5, 5, 5, 5, 5]], np.float32)
    (y,) = layer(t(x))
    np.testing.assert_array_equal(y.numpy(), [[[2]], [[4]]])


# ----------------------------------------------------------------------------- Filter / BatchReindex

def test_filter_keeps_selected_items_and_scatters_gradients():
    layer = make('layer { name: "f" type: "Filter" bottom: "a" bottom: "b" bottom: "sel" '
                 'top: "fa" top: "fb" }', [(4, 3), (4,), (4, 1)])
    assert layer.output_shapes([(4, 3), (4,), (4, 1)]) == [(4, 3), (4,)]  # Caffe's first Reshape
    a = np.arange(12, dtype=np.float32).reshape(4, 3)
    b = np.array([10, 11, 12, 13], np.float32)
    sel = np.array([[0.0], [0.5], [0.0], [-2.0]], np.float32)  # any non-zero float selects
    keep = np.flatnonzero(sel[:, 0] != 0)
    ta, tb = t(a, True), t(b, True)
    fa, fb = layer(ta, tb, t(sel))
    np.testing.assert_array_equal(fa.detach().numpy(), a[keep])
    np.testing.assert_array_equal(fb.detach().numpy(), b[keep])
    g = np.arange(1, 1 + fa.numel(), dtype=np.float32).reshape(fa.shape)
    fa.backward(t(g))
    want = np.zeros_like(a)
    want[keep] = g
    np.testing.assert_array_equal(ta.grad.numpy(), want)


def test_batch_reindex_gathers_and_accumulates_gradients():
    layer = make('layer { name: "r" type: "BatchReindex" bottom: "a" bottom: "p" top: "y" }',
                 [(3, 2), (5,)])
    assert layer.output_shapes([(3, 2), (5,)]) == [(5, 2)]
    a = np.arange(6, dtype=np.float32).reshape(3, 2)
    perm = np.array([2, 0, 2, 1.9, 2], np.float32)  # 1.9 truncates to 1
    idx = perm.astype(np.int64)
    ta = t(a, True)
    (y,) = layer(ta, t(perm))
    np.testing.assert_array_equal(y.detach().numpy(), a[idx])
    g = np.arange(10, dtype=np.float32).reshape(5, 2)
    y.backward(t(g))
    want = np.zeros_like(a)
    np.add.at(want, idx, g)
    np.testing.assert_array_equal(ta.grad.numpy(), want)
    with pytest.raises(ShapeError, match=r"\[0, 3\)"):
        layer(ta, t([0, 3, 0, 0, 0]))


# ----------------------------------------------------------------------------- Crop / Tile / Reduction

def test_crop_gradient_only_to_the_data_bottom_and_bounds_error():
    layer = make('layer { name: "c" type: "Crop" bottom: "a" bottom: "r" top: "y" '
                 'crop_param { axis: 1 offset: 1 } }', [(2, 3, 4), (2, 2, 2)])
    a, r = t(np.ones((2, 3, 4)), True), t(np.ones((2, 2, 2)), True)
    (y,) = layer(a, r)
    y.sum().backward()
    want = np.zeros((2, 3, 4))
    want[:, 1:3, 1:3] = 1
    np.testing.assert_array_equal(a.grad.numpy(), want)
    assert r.grad is None
    with pytest.raises(ShapeError, match="out|does not fit"):
        make('layer { name: "c" type: "Crop" bottom: "a" bottom: "r" top: "y" '
             'crop_param { offset: 3 } }', [(2, 3, 4, 4), (2, 3, 2, 2)])


def test_tile_requires_tiles_and_reduction_axis0_is_0d():
    with pytest.raises(NetDefinitionError, match="tiles"):
        make('layer { name: "t" type: "Tile" bottom: "a" top: "y" }', [(2, 3)])
    red = make('layer { name: "r" type: "Reduction" bottom: "a" top: "y" '
               'reduction_param { operation: ASUM coeff: 2 } }', [(2, 3)])
    x = np.array([[1, -2, 0], [3, -4, 5]], np.float32)
    tx = t(x, True)
    (y,) = red(tx)
    assert red.output_shapes([(2, 3)]) == [()] and y.shape == ()
    assert y.item() == pytest.approx(2 * np.abs(x).sum())
    y.backward()
    np.testing.assert_array_equal(tx.grad.numpy(), 2 * np.sign(x))  # sign(0) = 0
