"""Convolution, Deconvolution, Im2col, Pooling, SPP and LRN against independent NumPy formulas
(the oracle covers the common cases; these cover the rest of Caffe's rules)."""
from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.errors import NetDefinitionError, ShapeError
from layer_helpers import layer, rng, tensor

FLT_MAX = np.finfo(np.float32).max


# ----------------------------------------------------------------------------- pooling reference

def ref_out(size, k, s, p, ceil_mode, clip):
    """docs/caffe-semantics.md#pooling-and-spp, written with real division and math.ceil/floor."""
    out = (math.ceil if ceil_mode else math.floor)((size + 2 * p - k) / s) + 1
    if clip and (out - 1) * s >= size + p:
        out -= 1
    return out


def ref_pool(x, method, k, s, p, ceil_mode=True):
    """Caffe's CPU pooling loops (MAX with argmax mask, AVE) on a (N, C, H, W) array."""
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    n, c, h, w = x.shape
    clip = ph > 0 or pw > 0
    oh, ow = ref_out(h, kh, sh, ph, ceil_mode, clip), ref_out(w, kw, sw, pw, ceil_mode, clip)
    y = np.zeros((n, c, oh, ow), np.float64)
    mask = np.full((n, c, oh, ow), -1.0)
    for i, j in itertools.product(range(oh), range(ow)):
        hs, ws = i * sh - ph, j * sw - pw
        if method == "MAX":
            he, we = min(hs + kh, h), min(ws + kw, w)
            hs, ws = max(hs, 0), max(ws, 0)
            for a, b in itertools.product(range(n), range(c)):
                best, arg = -FLT_MAX, -1
                for hh, ww in itertools.product(range(hs, he), range(ws, we)):
                    if x[a, b, hh, ww] > best:
                        best, arg = x[a, b, hh, ww], hh * w + ww
                y[a, b, i, j], mask[a, b, i, j] = best, arg
        else:
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            size = (he - hs) * (we - ws)
            hs, ws, he, we = max(hs, 0), max(ws, 0), min(he, h), min(we, w)
            total = x[:, :, hs:he, ws:we].astype(np.float64).sum(axis=(2, 3))
            with np.errstate(invalid="ignore", divide="ignore"):
                y[:, :, i, j] = total / size
    return y, mask


def pool_text(method, k, s, p, round_mode="CEIL"):
    return (f'type: "Pooling" pooling_param {{ pool: {method} kernel_h: {k[0]} kernel_w: {k[1]} '
            f'stride_h: {s[0]} stride_w: {s[1]} pad_h: {p[0]} pad_w: {p[1]} '
            f'round_mode: {round_mode} }}')


def test_pooling_output_shape_grid_matches_the_formula():
    # H 3-12, k 1-4, s 1-4, 0 <= p < k, CEIL and FLOOR; includes pad=0 with stride > kernel
    # (where torch's own rule gives one window fewer) and pad > k/2 (which torch refuses).
    seen_pad0_stride_gt_kernel = False
    for h, k, s, ceil_mode in itertools.product(range(3, 13), range(1, 5), range(1, 5),
                                                (True, False)):
        for p in range(k):
            if k > h + 2 * p:
                continue
            lay = layer(pool_text("MAX", (k, k), (s, s), (p, p), "CEIL" if ceil_mode else "FLOOR"),
                        [(1, 1, h, h + 1)])
            want = (ref_out(h, k, s, p, ceil_mode, p > 0), ref_out(h + 1, k, s, p, ceil_mode, p > 0))
            assert lay.output_shapes([(1, 1, h, h + 1)])[0][2:] == want, (h, k, s, p, ceil_mode)
            seen_pad0_stride_gt_kernel |= p == 0 and s > k and ceil_mode
    assert seen_pad0_stride_gt_kernel


def test_caffe_keeps_the_window_torch_drops_for_pad0_stride_gt_kernel():
    # H=56, k=1, s=2: Caffe 29 windows (the last starts beyond the image), torch 28.
    lay = layer(pool_text("MAX", (1, 1), (2, 2), (0, 0)), [(1, 2, 56, 56)])
    assert lay.output_shapes([(1, 2, 56, 56)]) == [(1, 2, 29, 29)]
    y = lay(tensor(rng().randn(1, 2, 56, 56)))[0]
    assert y.shape == (1, 2, 29, 29)
    assert torch.all(y[..., -1, :] == -FLT_MAX)   # Caffe's initial value, nothing in the window


@pytest.mark.parametrize("method", ["MAX", "AVE"])
@pytest.mark.parametrize("h,w,k,s,p,mode", [
    (8, 8, (3, 3), (2, 2), (1, 1), "CEIL"),    # torch-compatible
    (5, 5, (2, 2), (2, 2), (1, 1), "CEIL"),    # the clipped last window
    (7, 9, (3, 2), (2, 3), (2, 1), "CEIL"),    # pad > k/2: torch refuses it
    (9, 7, (4, 3), (3, 2), (3, 0), "FLOOR"),
    (10, 6, (3, 3), (1, 1), (2, 2), "CEIL"),
    (7, 7, (2, 2), (3, 3), (0, 0), "CEIL"),    # stride > kernel, no pad
])
def test_pooling_values_and_gradients_match_caffes_loops(method, h, w, k, s, p, mode):
    x = rng(h * w).randn(2, 3, h, w).astype(np.float32)
    lay = layer(pool_text(method, k, s, p, mode), [x.shape])
    xt = tensor(x, grad=True)
    y = lay(xt)[0]
    want, mask = ref_pool(x, method, k, s, p, mode == "CEIL")
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-6, atol=1e-6)
    # Backward: MAX routes to the argmax, AVE spreads 1/pool_size over the clipped window.
    g = rng(1).randn(*y.shape).astype(np.float32)
    y.backward(torch.from_numpy(g))
    gx = np.zeros_like(x, dtype=np.float64)
    (kh, kw), (sh, sw), (ph, pw) = k, s, p
    for a, b, i, j in itertools.product(range(2), range(3), range(y.shape[2]), range(y.shape[3])):
        if method == "MAX":
            if mask[a, b, i, j] >= 0:
                hh, ww = divmod(int(mask[a, b, i, j]), w)
                gx[a, b, hh, ww] += g[a, b, i, j]
        else:
            hs, ws = i * sh - ph, j * sw - pw
            he, we = min(hs + kh, h + ph), min(ws + kw, w + pw)
            size = (he - hs) * (we - ws)
            gx[a, b, max(hs, 0):min(he, h), max(ws, 0):min(we, w)] += g[a, b, i, j] / size
    np.testing.assert_allclose(xt.grad.numpy(), gx, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("p", [(1, 1), (2, 1), (0, 0)])
def test_max_pooling_mask_top_is_caffes_argmax_index(p):
    x = rng(3).randn(2, 2, 7, 6).astype(np.float32)
    x[0, 0, :3, :3] = 1.5       # ties: the first in row-major order wins
    lay = layer(pool_text("MAX", (3, 3), (2, 2), p) + ' top: "t" top: "mask"', [x.shape])
    y, mask = lay(tensor(x))
    want, want_mask = ref_pool(x, "MAX", (3, 3), (2, 2), p)
    np.testing.assert_array_equal(mask.numpy(), want_mask)
    np.testing.assert_allclose(y.numpy(), want, rtol=1e-6)


def test_global_pooling_uses_the_runtime_size_and_ignores_round_mode():
    lay = layer('type: "Pooling" pooling_param { pool: AVE global_pooling: true round_mode: FLOOR }',
                [(2, 3, 5, 7)])
    x = rng().randn(4, 3, 6, 4).astype(np.float32)
    y = lay(tensor(x))[0]
    np.testing.assert_allclose(y.numpy(), x.mean(axis=(2, 3), keepdims=True), rtol=1e-5)
    lay = layer('type: "Pooling" pooling_param { pool: MAX global_pooling: true }', [(2, 3, 5, 7)])
    np.testing.assert_allclose(lay(tensor(x))[0].numpy(), x.max(axis=(2, 3), keepdims=True))


@pytest.mark.parametrize("text,match", [
    ('pool: MAX kernel_size: 3 pad: 3', "smaller than the kernel"),
    ('pool: STOCHASTIC kernel_size: 3 pad: 1', "only for MAX and AVE"),
    ('pool: MAX global_pooling: true kernel_size: 2', "no kernel size"),
    ('pool: MAX kernel_h: 2', "kernel_h and kernel_w"),
    ('pool: MAX kernel_size: 2 pad: 1 pad_h: 1 pad_w: 1', "not both"),
])
def test_pooling_parameter_errors(text, match):
    with pytest.raises(NetDefinitionError, match=match):
        layer(f'type: "Pooling" pooling_param {{ {text} }}', [(1, 1, 8, 8)])


def test_pooling_needs_4d_and_mask_only_for_max():
    with pytest.raises(ShapeError, match="4-D"):
        layer('type: "Pooling" pooling_param { kernel_size: 2 }', [(1, 8, 8)])
    with pytest.raises(NetDefinitionError, match="tops"):
        layer('type: "Pooling" top: "a" top: "b" pooling_param { pool: AVE kernel_size: 2 }',
              [(1, 1, 8, 8)])


# ----------------------------------------------------------------------------- stochastic

def ref_stochastic_test(x, k, s):
    """Caffe's GPU StoPoolForwardTest: sum(x^2)/sum(x) over windows clipped at H, W; pad ignored."""
    n, c, h, w = x.shape
    oh, ow = ref_out(h, k, s, 0, True, False), ref_out(w, k, s, 0, True, False)
    y = np.zeros((n, c, oh, ow))
    for i, j in itertools.product(range(oh), range(ow)):
        win = x[:, :, i * s:min(i * s + k, h), j * s:min(j * s + k, w)].astype(np.float64)
        s1, s2 = win.sum(axis=(2, 3)), (win ** 2).sum(axis=(2, 3))
        y[:, :, i, j] = np.where(s1 > 0, s2 / np.where(s1 > 0, s1, 1), 0)
    return y


def test_stochastic_pooling_test_phase_is_the_probability_weighted_average():
    x = np.abs(rng(5).randn(2, 3, 7, 6)).astype(np.float32)
    x[0, 0, :3, :3] = 0.0                 # sum 0 -> 0
    x[1, 1] = -np.abs(x[1, 1])            # negative sums -> 0 as well
    lay = layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 3 stride: 2 }',
                [x.shape], caffe_pb2.TEST)
    y = lay(tensor(x))[0]
    np.testing.assert_allclose(y.numpy(), ref_stochastic_test(x, 3, 2), rtol=1e-5, atol=1e-7)


def test_stochastic_pooling_train_samples_in_proportion_to_the_activations():
    # One 2x2 window with values 1, 2, 3, 4: Caffe picks position i with probability x_i / 10
    # and outputs that activation; the gradient goes to the picked position only.
    torch.manual_seed(0)
    x = torch.tensor([[1.0, 2.0], [3.0, 4.0]]).reshape(1, 1, 2, 2).expand(4000, 1, 2, 2)
    x = x.contiguous().requires_grad_(True)
    lay = layer('type: "Pooling" pooling_param { pool: STOCHASTIC kernel_size: 2 stride: 2 }',
                [tuple(x.shape)], caffe_pb2.TRAIN)
    y = lay(x)[0]
    assert y.shape == (4000, 1, 1, 1)
    values = y.detach().flatten()
    freq = torch.stack([(values == v).float().mean() for v in (1.0, 2.0, 3.0, 4.0)])
    np.testing.assert_allclose(freq.numpy(), [0.1, 0.2, 0.3, 0.4], atol=0.03)
    y.sum().backward()
    picked = x.grad.reshape(4000, 4)
    assert torch.all(picked.sum(dim=1) == 1) and torch.all((picked == 0) | (picked == 1))
    np.testing.assert_array_equal(picked.argmax(dim=1).numpy() + 1.0, values.numpy())


# ----------------------------------------------------------------------------- SPP

def test_spp_levels_follow_caffes_kernel_and_pad_rules():
    x = rng(7).randn(2, 3, 13, 11).astype(np.float32)
    lay = layer('type: "SPP" spp_param { pyramid_height: 3 pool: MAX }', [x.shape])
    parts = []
    for level in range(3):
        bins = 2 ** level
        kh, kw = math.ceil(13 / bins), math.ceil(11 / bins)
        ph, pw = (kh * bins - 13 + 1) // 2, (kw * bins - 11 + 1) // 2
        parts.append(ref_pool(x, "MAX", (kh, kw), (kh, kw), (ph, pw))[0].reshape(2, -1))
    want = np.concatenate(parts, axis=1)
    assert lay.output_shapes([x.shape]) == [want.shape]
    np.testing.assert_allclose(lay(tensor(x))[0].numpy(), want, rtol=1e-6)


def test_spp_with_one_level_keeps_the_4d_pooling_output():
    x = rng(8).randn(2, 3, 6, 5).astype(np.float32)
    lay = layer('type: "SPP" spp_param { pyramid_height: 1 pool: AVE }', [x.shape])
    y = lay(tensor(x))[0]
    assert y.shape == (2, 3, 1, 1)
    np.testing.assert_allclose(y.numpy(), x.mean(axis=(2, 3), keepdims=True), rtol=1e-5)


# ----------------------------------------------------------------------------- convolution

def ref_conv(x, w, b, stride, pad, dil, group):
    """Caffe's convolution over any number of spatial axes, one output element at a time."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, o, nd = x.shape[0], w.shape[0], x.ndim - 2
    cg, kernel = w.shape[1], w.shape[2:]
    xp = np.pad(x, [(0, 0), (0, 0)] + [(p, p) for p in pad])
    out = [(x.shape[2 + a] + 2 * pad[a] - (dil[a] * (kernel[a] - 1) + 1)) // stride[a] + 1
           for a in range(nd)]
    y = np.zeros((n, o, *out))
    og = o // group
    for oc in range(o):
        g = oc // og
        for pos in itertools.product(*map(range, out)):
            window = tuple(slice(pos[a] * stride[a], pos[a] * stride[a] + dil[a] * (kernel[a] - 1) + 1,
                                 dil[a]) for a in range(nd))
            patch = xp[(slice(None), slice(g * cg, (g + 1) * cg)) + window]
            y[(slice(None), oc) + pos] = ((patch * w[oc]).sum(axis=tuple(range(1, nd + 2)))
                                          + (b[oc] if b is not None else 0))
    return y


def ref_deconv2d(x, w, b, stride, pad, group):
    """Caffe's deconvolution: every input element adds its kernel-weighted copy to the output
    canvas at (i*stride + ki, j*stride + kj); the canvas loses `pad` on each side."""
    x, w = np.asarray(x, np.float64), np.asarray(w, np.float64)
    n, c, h, wd = x.shape
    og, k = w.shape[1], w.shape[2]
    cin_g = c // group
    canvas = np.zeros((n, og * group, (h - 1) * stride + k, (wd - 1) * stride + k))
    for ci, i, j, ki, kj in itertools.product(range(c), range(h), range(wd), range(k), range(k)):
        g = ci // cin_g
        canvas[:, g * og:(g + 1) * og, i * stride + ki, j * stride + kj] += (
            x[:, ci, i, j][:, None] * w[ci, :, ki, kj][None, :])
    y = canvas[:, :, pad:canvas.shape[2] - pad, pad:canvas.shape[3] - pad]
    return y + np.asarray(b, np.float64)[None, :, None, None]


def test_convolution_separate_hw_group_dilation_against_numpy():
    x = rng(1).randn(2, 4, 9, 8).astype(np.float32)
    lay = layer('type: "Convolution" convolution_param { num_output: 6 kernel_h: 3 kernel_w: 2 '
                'stride_h: 2 stride_w: 1 pad_h: 2 pad_w: 0 dilation: 2 group: 2 '
                'weight_filler { type: "gaussian" } bias_filler { type: "uniform" } }', [x.shape])
    w, b = lay.blobs[0].detach().numpy(), lay.blobs[1].detach().numpy()
    assert w.shape == (6, 2, 3, 2)
    want = ref_conv(x, w, b, (2, 1), (2, 0), (2, 2), 2)
    assert lay.output_shapes([x.shape]) == [want.shape]
    np.testing.assert_allclose(lay(tensor(x))[0].detach().numpy(), want, rtol=1e-4, atol=1e-5)


def test_convolution_defaults_to_zero_fillers_and_multiple_bottoms_share_weights():
    lay = layer('type: "Convolution" bottom: "a" bottom: "b" top: "ta" top: "tb" '
                'convolution_param { num_output: 3 kernel_size: 1 }', [(1, 2, 4, 4)] * 2)
    assert torch.all(lay.blobs[0] == 0) and torch.all(lay.blobs[1] == 0)
    with torch.no_grad():
        lay.blobs[0].normal_()
    a, b = tensor(rng(2).randn(1, 2, 4, 4)), tensor(rng(3).randn(1, 2, 4, 4))
    ya, yb = lay(a, b)
    w = lay.blobs[0].detach().numpy()
    for top, bottom in ((ya, a), (yb, b)):
        np.testing.assert_allclose(top.detach().numpy(),
                                   ref_conv(bottom.numpy(), w, None, (1, 1), (0, 0), (1, 1), 1),
                                   rtol=1e-5, atol=1e-6)
    with pytest.raises(ShapeError, match="same shape"):
        layer('type: "Convolution" bottom: "a" bottom: "b" top: "ta" top: "tb" '
              'convolution_param { num_output: 3 kernel_size: 1 }', [(1, 2, 4, 4), (1, 2, 5, 4)])


def test_convolution_nd_and_axis():
    # 3-D convolution (N, C, D, H, W) and a 1-D one with channel axis 2 (leading dims batched).
    x3 = rng(4).randn(1, 2, 5, 6, 4).astype(np.float32)
    lay = layer('type: "Convolution" convolution_param { num_output: 3 kernel_size: 3 '
                'kernel_size: 2 kernel_size: 1 pad: 1 weight_filler { type: "xavier" } }', [x3.shape])
    assert tuple(lay.blobs[0].shape) == (3, 2, 3, 2, 1)
    y = lay(tensor(x3))[0]
    np.testing.assert_allclose(
        y.detach().numpy(), ref_conv(x3, lay.blobs[0].detach().numpy(), lay.blobs[1].detach().numpy(),
                                     (1, 1, 1), (1, 1, 1), (1, 1, 1), 1), rtol=1e-5, atol=1e-6)
    assert lay.output_shapes([x3.shape]) == [tuple(y.shape)] == [(1, 3, 5, 7, 6)]
    x1 = rng(5).randn(2, 3, 4, 7).astype(np.float32)  # axis 2: batch (2*3), C=4, length 7
    lay = layer('type: "Convolution" convolution_param { num_output: 5 kernel_size: 3 axis: 2 '
                'weight_filler { type: "gaussian" } }', [x1.shape])
    y = lay(tensor(x1))[0]
    want = ref_conv(x1.reshape(6, 4, 7), lay.blobs[0].detach().numpy(),
                    lay.blobs[1].detach().numpy(), (1,), (0,), (1,), 1).reshape(2, 3, 5, 5)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-5, atol=1e-6)


def test_convolution_parameter_errors():
    with pytest.raises(ShapeError, match="group"):
        layer('type: "Convolution" convolution_param { num_output: 3 kernel_size: 1 group: 2 }',
              [(1, 4, 4, 4)])
    with pytest.raises(NetDefinitionError, match="not both"):
        layer('type: "Convolution" convolution_param { num_output: 2 kernel_size: 1 kernel_h: 1 '
              'kernel_w: 1 }', [(1, 4, 4, 4)])
    with pytest.raises(NetDefinitionError, match="2-D"):
        layer('type: "Convolution" convolution_param { num_output: 2 kernel_h: 1 kernel_w: 1 }',
              [(1, 4, 4, 4, 4)])


def test_deconvolution_weight_layout_and_output_size():
    x = rng(6).randn(1, 4, 5, 3).astype(np.float32)
    lay = layer('type: "Deconvolution" convolution_param { num_output: 6 kernel_size: 4 stride: 2 '
                'pad: 1 group: 2 weight_filler { type: "bilinear" } }', [x.shape])
    assert tuple(lay.blobs[0].shape) == (4, 3, 4, 4)        # (C_in, num_output/group, k, k)
    assert lay.output_shapes([x.shape]) == [(1, 6, 2 * 4 + 4 - 2, 2 * 2 + 4 - 2)]
    with torch.no_grad():  # bilinear weights are equal for every channel pair: use random ones
        lay.blobs[0].normal_()
        lay.blobs[1].normal_()
    y = lay(tensor(x))[0]
    want = ref_deconv2d(x, lay.blobs[0].detach().numpy(), lay.blobs[1].detach().numpy(),
                        stride=2, pad=1, group=2)
    np.testing.assert_allclose(y.detach().numpy(), want, rtol=1e-5, atol=1e-6)


def test_im2col_is_channel_major_patches():
    x = rng(9).randn(2, 3, 6, 5).astype(np.float32)
    lay = layer('type: "Im2col" convolution_param { kernel_size: 3 stride: 2 pad: 1 }', [x.shape])
    y = lay(tensor(x))[0].numpy()
    assert lay.output_shapes([x.shape]) == [y.shape] == [(2, 27, 3, 3)]
    xp = np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)))
    for c, ki, kj, i, j in itertools.product(range(3), range(3), range(3), range(3), range(3)):
        np.testing.assert_array_equal(y[:, (c * 3 + ki) * 3 + kj, i, j],
                                      xp[:, c, i * 2 + ki, j * 2 + kj])


# ----------------------------------------------------------------------------- LRN

def test_lrn_within_channel_ignores_k_and_divides_alpha_by_n_squared():
    x = rng(10).randn(2, 3, 6, 5).astype(np.float32)
    lay = layer('type: "LRN" lrn_param { norm_region: WITHIN_CHANNEL local_size: 3 alpha: 2.0 '
                'beta: 0.6 k: 7.0 }', [x.shape])
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (0, 0), (1, 1), (1, 1)))
    win = sum(sq[:, :, i:i + 6, j:j + 5] for i in range(3) for j in range(3))
    want = x * (1 + 2.0 / 9 * win) ** -0.6
    np.testing.assert_allclose(lay(tensor(x))[0].numpy(), want, rtol=1e-5)


def test_lrn_across_channels_uses_k_and_alpha_over_n():
    x = rng(11).randn(2, 7, 3, 3).astype(np.float32)
    lay = layer('type: "LRN" lrn_param { local_size: 5 alpha: 0.5 beta: 0.75 k: 2.0 }', [x.shape])
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (2, 2), (0, 0), (0, 0)))
    scale = 2.0 + 0.5 / 5 * sum(sq[:, i:i + 7] for i in range(5))
    np.testing.assert_allclose(lay(tensor(x))[0].numpy(), x * scale ** -0.75, rtol=1e-5)
    with pytest.raises(NetDefinitionError, match="odd"):
        layer('type: "LRN" lrn_param { local_size: 4 }', [x.shape])
