"""Fork layers: float64 gradcheck of every backward, and hand-derived values where OpenCV
cannot serve as the reference (BN, Upsample, SmoothL1Loss, Interp's crop/shrink, Normalize
across space, a partial Permute order)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch.func import functional_call

from hovcaffe.caffe import caffe_pb2
from layer_helpers import layer

TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def gradcheck_layer(lay, inputs, *, top: int = 0, check_blobs: bool = True) -> None:
    """gradcheck of top `top` w.r.t. the float inputs that require grad and every blob."""
    lay = lay.double()
    blobs = [b.detach().clone().double().requires_grad_(check_blobs) for b in lay.blobs]
    names = [f"blobs.{i}" for i in range(len(blobs))]

    def run(*args):
        ins, bs = args[:len(inputs)], args[len(inputs):]
        return functional_call(lay, dict(zip(names, bs)), tuple(ins))[top]

    assert torch.autograd.gradcheck(run, tuple(inputs) + tuple(blobs), eps=1e-6, atol=1e-5)


def rand(*shape, seed=0, grad=True) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g, dtype=torch.float64).requires_grad_(grad)


def away_from(x: torch.Tensor, kinks, margin=0.05) -> torch.Tensor:
    """x with entries moved off the kinks (numeric gradients are wrong at a kink)."""
    with torch.no_grad():
        for k in kinks:
            near = (x - k).abs() < margin
            x[near] = k + 2 * margin
    return x


# ---------------------------------------------------------------- gradcheck

def test_gradcheck_convolution_depthwise():
    lay = layer('type: "ConvolutionDepthwise" convolution_param { num_output: 3 kernel_size: 3 '
                'stride: 2 pad: 1 weight_filler { type: "gaussian" } bias_filler { type: "gaussian" } }',
                [(2, 3, 5, 5)])
    gradcheck_layer(lay, [rand(2, 3, 5, 5)])


def test_gradcheck_shuffle_channel_permute_axpy():
    gradcheck_layer(layer('type: "ShuffleChannel" shuffle_channel_param { group: 2 }', [(2, 6, 3, 2)]),
                    [rand(2, 6, 3, 2)])
    gradcheck_layer(layer('type: "Permute" permute_param { order: 0 order: 3 order: 1 order: 2 }',
                          [(2, 3, 4, 2)]), [rand(2, 3, 4, 2)])
    gradcheck_layer(layer('type: "Axpy"', [(2, 3, 1, 1), (2, 3, 4, 2), (2, 3, 4, 2)]),
                    [rand(2, 3, 1, 1, seed=1), rand(2, 3, 4, 2, seed=2), rand(2, 3, 4, 2, seed=3)])


def test_gradcheck_relu6_away_from_its_kinks():
    x = away_from(rand(3, 4, 5, grad=False) * 5, (0.0, 6.0)).requires_grad_(True)
    gradcheck_layer(layer('type: "ReLU6"', [(3, 4, 5)]), [x])


@pytest.mark.parametrize("mode", ["LEARN", "INFERENCE"])
def test_gradcheck_bn(mode):
    lay = layer(f'type: "BN" bn_param {{ bn_mode: {mode} scale_filler {{ type: "gaussian" }} '
                'shift_filler { type: "gaussian" } }', [(3, 2, 3, 2)], TRAIN)
    gradcheck_layer(lay, [rand(3, 2, 3, 2)])


def test_gradcheck_upsample_with_mask_and_nearest():
    mask = torch.tensor([[[[0., 3.], [9., 14.]]]], dtype=torch.float64).repeat(2, 3, 1, 1)
    lay = layer('type: "Upsample" upsample_param { scale: 2 }', [(2, 3, 2, 2), (2, 3, 2, 2)])
    gradcheck_layer(lay, [rand(2, 3, 2, 2), mask])
    gradcheck_layer(layer('type: "Upsample" upsample_param { scale: 3 }', [(1, 2, 2, 3)]),
                    [rand(1, 2, 2, 3)])


@pytest.mark.parametrize("param", ["zoom_factor: 3", "height: 7 width: 4", "shrink_factor: 2",
                                   "zoom_factor: 2 pad_beg: -1 pad_end: -1"])
def test_gradcheck_interp(param):
    gradcheck_layer(layer(f'type: "Interp" interp_param {{ {param} }}', [(1, 2, 5, 6)]),
                    [rand(1, 2, 5, 6)])


@pytest.mark.parametrize("across,shared", [(True, True), (False, False), (True, False)])
def test_gradcheck_normalize(across, shared):
    lay = layer(f'type: "Normalize" norm_param {{ across_spatial: {str(across).lower()} '
                f'channel_shared: {str(shared).lower()} scale_filler {{ type: "gaussian" }} }}',
                [(2, 3, 2, 2)])
    gradcheck_layer(lay, [rand(2, 3, 2, 2)])


def test_gradcheck_smooth_l1_loss_away_from_its_kinks():
    sigma2 = 9.0   # sigma 3: kinks at |d| = 1/9
    pred = rand(2, 4, 3, 1, seed=1, grad=False)
    target = rand(2, 4, 3, 1, seed=2, grad=False)
    w_in = torch.rand(2, 4, 3, 1, dtype=torch.float64) + 0.5
    w_out = torch.rand(2, 4, 3, 1, dtype=torch.float64) + 0.5
    d = w_in * (pred - target)
    away_from(d, (-1 / sigma2, 1 / sigma2), margin=0.02)
    pred = (target + d / w_in).requires_grad_(True)
    target.requires_grad_(True)
    lay = layer('type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 3 }', [(2, 4, 3, 1)] * 4)
    gradcheck_layer(lay, [pred, target, w_in, w_out])


# ---------------------------------------------------------------- hand-derived values

def test_bn_learn_by_hand():
    """x = 1, 3 | 5, 7 in one channel: mean 4, biased variance 5 (E[x^2] 21 - 16)."""
    lay = layer('type: "BN" bn_param { bn_mode: LEARN }', [(2, 1, 1, 2)], TEST).double()
    with torch.no_grad():
        lay.blobs[0].fill_(2.0)
        lay.blobs[1].fill_(1.0)
    x = torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]], dtype=torch.float64, requires_grad=True)
    y = lay(x)[0]
    s = math.sqrt(5 + 1e-9)
    want = [2 * (v - 4) / s + 1 for v in (1, 3, 5, 7)]
    np.testing.assert_allclose(y.detach().reshape(-1).numpy(), want, rtol=1e-12)
    # d/dx of sum(w * y): scale / s * (w - mean(w) - xhat * mean(w * xhat)).
    w = torch.tensor([1.0, -2.0, 0.5, 3.0], dtype=torch.float64)
    (y.reshape(-1) * w).sum().backward()
    xhat = np.array([-3, -1, 1, 3]) / s
    wn = w.numpy()
    want_dx = 2 / s * (wn - wn.mean() - xhat * (wn * xhat).mean())
    np.testing.assert_allclose(x.grad.reshape(-1).numpy(), want_dx, rtol=1e-9)
    np.testing.assert_allclose(lay.blobs[1].grad.reshape(-1).numpy(), [wn.sum()])
    np.testing.assert_allclose(lay.blobs[0].grad.reshape(-1).numpy(), [(wn * xhat).sum()], rtol=1e-9)


def test_bn_learn_mean_and_variance_tops():
    lay = layer('type: "BN" top: "y" top: "m" top: "v"', [(2, 1, 1, 2)])
    y, m, v = lay(torch.tensor([[[[1.0, 3.0]]], [[[5.0, 7.0]]]]))
    assert m.shape == (1, 1, 1, 1) and float(m) == 4.0 and float(v) == pytest.approx(5.0)


def test_bn_inference_is_scale_and_shift_only():
    lay = layer('type: "BN" bn_param { bn_mode: INFERENCE }', [(1, 2, 1, 2)])
    with torch.no_grad():
        lay.blobs[0].copy_(torch.tensor([2.0, -1.0]).reshape(1, 2, 1, 1))
        lay.blobs[1].copy_(torch.tensor([0.5, 3.0]).reshape(1, 2, 1, 1))
    y = lay(torch.tensor([[[[1.0, 2.0]], [[4.0, 8.0]]]]))[0]
    assert y.reshape(-1).tolist() == [2.5, 4.5, -1.0, -5.0]


def test_bn_blobs_are_scale_then_shift_from_their_fillers():
    lay = layer('type: "BN" bn_param { scale_filler { type: "constant" value: 1 } '
                'shift_filler { type: "constant" value: 0.001 } }', [(1, 3, 2, 2)])
    assert [tuple(b.shape) for b in lay.blobs] == [(1, 3, 1, 1), (1, 3, 1, 1)]
    assert lay.blobs[0].flatten().tolist() == [1.0] * 3
    assert lay.blobs[1].flatten().tolist() == pytest.approx([0.001] * 3)


def test_upsample_scatters_at_the_mask_and_gathers_back():
    x = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    mask = torch.tensor([[[[1.0, 2.0], [8.0, 15.0]]]])
    y = layer('type: "Upsample" upsample_param { scale: 2 }', [(1, 1, 2, 2)] * 2)(x, mask)[0]
    want = torch.zeros(16)
    want[[1, 2, 8, 15]] = torch.tensor([1.0, 2.0, 3.0, 4.0])
    assert torch.equal(y.reshape(-1), want)
    g = torch.arange(16.0).reshape(1, 1, 4, 4)
    (y * g).sum().backward()
    assert x.grad.reshape(-1).tolist() == [1.0, 2.0, 8.0, 15.0]


def test_pooling_mask_then_upsample_puts_each_maximum_back():
    """Our Pooling's mask top uses Caffe's index convention (h * W + w of its input)."""
    from hovcaffe.caffe.io import parse_net
    from hovcaffe.net import CaffeNet
    net = CaffeNet(parse_net('''
        input: "data" input_shape { dim: 2 dim: 3 dim: 6 dim: 4 }
        layer { name: "pool" type: "Pooling" bottom: "data" top: "pool" top: "mask"
                pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
        layer { name: "up" type: "Upsample" bottom: "pool" bottom: "mask" top: "up"
                upsample_param { scale: 2 } }'''), "TEST")
    x = torch.randn(2, 3, 6, 4, generator=torch.Generator().manual_seed(0))
    up = net(data=x)["up"]
    window_max = torch.nn.functional.max_pool2d(x, 2)
    is_max = x == torch.nn.functional.interpolate(window_max, scale_factor=2, mode="nearest")
    assert torch.equal(up, torch.where(is_max, x, torch.zeros_like(x)))


def test_upsample_sizes_and_errors():
    assert layer('type: "Upsample" upsample_param { scale: 2 pad_out_h: true }',
                 [(1, 1, 3, 3)] * 2).output_shapes([(1, 1, 3, 3)] * 2) == [(1, 1, 5, 6)]
    assert layer('type: "Upsample" upsample_param { upsample_h: 7 upsample_w: 9 }',
                 [(1, 1, 3, 4)] * 2).output_shapes([(1, 1, 3, 4)] * 2) == [(1, 1, 7, 9)]
    lay = layer('type: "Upsample" upsample_param { scale: 2 }', [(1, 1, 1, 2)] * 2)
    with pytest.raises(Exception, match="mask index 9 is outside the 2x4 top"):
        lay(torch.ones(1, 1, 1, 2), torch.tensor([[[[0.0, 9.0]]]]))


def test_nearest_upsample_repeats_each_pixel():
    y = layer('type: "Upsample" upsample_param { scale: 2 }', [(1, 1, 1, 2)])(
        torch.tensor([[[[1.0, 2.0]]]]))[0]
    assert y.reshape(2, 4).tolist() == [[1, 1, 2, 2], [1, 1, 2, 2]]


def test_smooth_l1_loss_by_hand():
    pred = torch.tensor([[0.5, -2.0], [0.1, 4.0]], requires_grad=True)
    target = torch.zeros(2, 2)
    lay = layer('type: "SmoothL1Loss"', [(2, 2), (2, 2)])
    loss = lay(pred, target)[0]
    # f: 0.5 d^2 below 1, |d| - 0.5 above; divided by N = 2.
    assert float(loss.detach()) == pytest.approx((0.125 + 1.5 + 0.005 + 3.5) / 2)
    loss.backward()
    assert pred.grad.reshape(-1).tolist() == pytest.approx([0.25, -0.5, 0.05, 0.5])
    w_in = torch.tensor([[2.0, 1.0], [1.0, 0.0]])
    w_out = torch.tensor([[1.0, 3.0], [0.0, 1.0]])
    lay4 = layer('type: "SmoothL1Loss" smooth_l1_loss_param { sigma: 2 }', [(2, 2)] * 4)
    # sigma 2: kink at 1/4; d = 1, -2, 0.1, 0 -> f = 0.875, 1.875, 0.02, 0.
    got = lay4(pred.detach(), target, w_in, w_out)[0]
    assert float(got) == pytest.approx((0.875 + 3 * 1.875 + 0 + 0) / 2)


def test_interp_crop_and_shrink_by_hand():
    x = torch.arange(25.0).reshape(1, 1, 5, 5)
    # Crop one pixel each side -> 3x3 (6..18), zoom 2 -> 5x5 of the linear ramp 6 + 2.5 i + 0.5 j.
    y = layer('type: "Interp" interp_param { zoom_factor: 2 pad_beg: -1 pad_end: -1 }',
              [(1, 1, 5, 5)])(x)[0]
    i, j = torch.meshgrid(torch.arange(5.0), torch.arange(5.0), indexing="ij")
    assert torch.allclose(y[0, 0], 6 + 2.5 * i + 0.5 * j)
    # Shrink 2: (5 - 1) / 2 + 1 = 3 samples at rows/cols 0, 2, 4 (corners aligned).
    z = layer('type: "Interp" interp_param { shrink_factor: 2 }', [(1, 1, 5, 5)])(x)[0]
    assert z[0, 0].tolist() == [[0, 2, 4], [10, 12, 14], [20, 22, 24]]


def test_normalize_across_space_with_shared_scale_by_hand():
    lay = layer('type: "Normalize" norm_param { across_spatial: true channel_shared: true '
                'eps: 0 scale_filler { type: "constant" value: 20 } }', [(1, 2, 1, 2)])
    assert tuple(lay.blobs[0].shape) == ()    # SSD's 0-axis scale blob
    y = lay(torch.tensor([[[[1.0, 2.0]], [[2.0, 4.0]]]]))[0]   # norm 5
    assert y.reshape(-1).tolist() == pytest.approx([4.0, 8.0, 8.0, 16.0])


def test_permute_partial_order_keeps_the_rest_in_order():
    lay = layer('type: "Permute" permute_param { order: 2 }', [(2, 3, 4, 5)])
    assert lay.output_shapes([(2, 3, 4, 5)]) == [(4, 2, 3, 5)]


def test_convolution_depthwise_ignores_num_output_as_the_port_does(caplog):
    lay = layer('type: "ConvolutionDepthwise" convolution_param { num_output: 8 kernel_size: 1 }',
                [(1, 4, 2, 2)])
    assert lay.output_shapes([(1, 4, 2, 2)]) == [(1, 4, 2, 2)]
    assert "num_output 8 is ignored" in caplog.text


def test_dropout_scale_train_false_scales_at_test_time():
    """py-faster-rcnn: TRAIN keeps x * mask, TEST gives x * (1 - ratio)."""
    x = torch.full((1000,), 2.0)
    test = layer('type: "Dropout" dropout_param { dropout_ratio: 0.25 scale_train: false }',
                 [(1000,)], TEST)
    assert test(x)[0].unique().tolist() == [1.5]
    train = layer('type: "Dropout" dropout_param { dropout_ratio: 0.25 scale_train: false }',
                  [(1000,)], TRAIN)
    assert set(train(x)[0].unique().tolist()) == {0.0, 2.0}
    plain = layer('type: "Dropout" dropout_param { dropout_ratio: 0.25 }', [(1000,)], TRAIN)
    assert plain(x)[0].unique().tolist() == pytest.approx([0.0, 2 / 0.75])


def test_smooth_l1_loss_is_a_caffe_loss_layer():
    """Loss weight 1 by default and an anonymous top when the prototxt names none."""
    from hovcaffe.caffe.io import parse_net
    from hovcaffe.net import CaffeNet
    net = CaffeNet(parse_net('input: "p" input_shape { dim: 2 dim: 4 }\n'
                             'input: "t" input_shape { dim: 2 dim: 4 }\n'
                             'layer { name: "bbox_loss" type: "SmoothL1Loss" bottom: "p" '
                             'bottom: "t" }\n'), "TRAIN")
    assert net.loss_weights == {"(bbox_loss top 0)": 1.0}
    blobs = net(p=torch.full((2, 4), 3.0), t=torch.zeros(2, 4))
    assert float(net.objective(blobs)) == pytest.approx(4 * 2.5)   # (|3| - 0.5) * 8 / N=2


def test_segnet_class_weighting_by_hand():
    """SegNet: -sum w[label] log p / count of valid positions (ignore_label skipped)."""
    x = torch.tensor([[[[0.0, 1.0, 2.0]], [[1.0, 0.0, 0.0]]]], requires_grad=True)  # (1, 2, 1, 3)
    label = torch.tensor([[[[0.0, 1.0, 5.0]]]])
    lay = layer('type: "SoftmaxWithLoss" loss_param { weight_by_label_freqs: true '
                'class_weighting: 0.5 class_weighting: 4 ignore_label: 5 }', [(1, 2, 1, 3), (1, 1, 1, 3)])
    loss = lay(x, label)[0]
    p0 = math.exp(0) / (math.exp(0) + math.exp(1))      # position 0, class 0
    p1 = math.exp(0) / (math.exp(1) + math.exp(0))      # position 1, class 1
    assert float(loss.detach()) == pytest.approx(-(0.5 * math.log(p0) + 4 * math.log(p1)) / 2)
    loss.backward()
    # d/dx[c, j] = w[label_j] * (p_c - onehot) / count
    assert x.grad[0, :, 0, 0].tolist() == pytest.approx([0.5 * (p0 - 1) / 2, 0.5 * (1 - p0) / 2])
    assert x.grad[0, :, 0, 2].tolist() == [0.0, 0.0]
    with pytest.raises(Exception, match="one class_weighting per class"):
        layer('type: "SoftmaxWithLoss" loss_param { weight_by_label_freqs: true '
              'class_weighting: 1 }', [(1, 2, 1, 3), (1, 1, 1, 3)])
