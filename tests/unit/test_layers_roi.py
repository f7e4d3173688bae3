"""ROIPooling (caffe-fast-rcnn) and PSROIPooling (R-FCN): by hand, against OpenCV, gradcheck."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from hovcaffe.errors import NetDefinitionError, UserInputError
from hovcaffe.export import export_net, to_onnx_bytes
from hovcaffe.layers.roi import c_round, psroi_avg_pool, roi_max_pool
from tests.unit.fork_helpers import build, max_rel, run_hovcaffe, run_opencv
from tests.unit.layer_helpers import layer


def random_rois(rng, n_images: int, count: int) -> np.ndarray:
    """Regions in image pixels, some reaching outside a 16x-downscaled 12 x 15 map."""
    x1, y1 = rng.uniform(-10, 150, count), rng.uniform(-10, 120, count)
    rois = np.stack([rng.randint(0, n_images, count), x1, y1,
                     x1 + rng.uniform(0, 90, count), y1 + rng.uniform(0, 70, count)], 1)
    return rois.astype(np.float32)


def test_c_round_halves_away_from_zero():
    assert c_round(np.array([0.5, 1.5, 2.5, -0.5, -2.5, 2.4])).tolist() == [1, 2, 3, -1, -3, 2]


def test_roi_pooling_by_hand():
    x = torch.arange(36, dtype=torch.float32).view(1, 1, 6, 6)
    # Region (1, 1)-(4, 3) at scale 1: 4 columns x 3 rows; 2 x 2 bins of 2 columns and rows
    # floor/ceil(1.5): rows 1..2 and 2..3, columns 1..2 and 3..4; each bin's maximum.
    rois = torch.tensor([[0, 1.4, 0.6, 4.4, 3.2]])          # rounds to 1, 1, 4, 3
    out = roi_max_pool(x, rois, (2, 2), 1.0)
    assert out.view(-1).tolist() == [14, 16, 20, 22]
    # A region entirely outside the map: empty bins are 0.
    far = roi_max_pool(x, torch.tensor([[0, 50, 50, 60, 60]]), (2, 2), 1.0)
    assert far.view(-1).tolist() == [0, 0, 0, 0]


def test_roi_pooling_gradient_goes_to_first_maximum():
    x = torch.zeros(1, 1, 4, 4, requires_grad=True)        # all ties, like a ReLU's zeros
    out = roi_max_pool(x, torch.tensor([[0, 0, 0, 3, 3]]), (2, 2), 1.0)
    out.sum().backward()
    want = torch.zeros(4, 4)
    want[0, 0] = want[0, 2] = want[2, 0] = want[2, 2] = 1   # first cell of each 2 x 2 bin
    assert torch.equal(x.grad[0, 0], want)


def test_psroi_pooling_by_hand():
    # group 2, output_dim 1: bin (ph, pw) reads channel ph * 2 + pw; channel k is constant k + 1
    # except one cell, so each bin average is checked.
    x = torch.stack([torch.full((4, 4), float(k + 1)) for k in range(4)])[None]
    x[0, 3, 3, 3] = 9.0
    # Region 0..3 at scale 1 ends at (3 + 1) * 1 = 4: bins of 2 x 2 cells.
    out = psroi_avg_pool(x, torch.tensor([[0.0, 0, 0, 3, 3]]), 1, 2, 1.0)
    assert out.view(-1).tolist() == [1.0, 2.0, 3.0, (3 * 4 + 9) / 4]


def test_gradcheck_roi_pooling():
    rng = np.random.RandomState(0)
    # distinct values: no ties for the maximum to hop between under the finite differences
    x = torch.from_numpy(rng.permutation(2 * 2 * 6 * 7).reshape(2, 2, 6, 7) / 100.0)
    rois = torch.tensor([[0, 4, 6, 40, 50], [1, -5, 10, 200, 30], [1, 30, 30, 31, 31],
                         [0, 100, 100, 150, 150]], dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: roi_max_pool(t, rois, (3, 2), 0.125),
                                    (x.requires_grad_(),), eps=1e-6, atol=1e-8)


def test_gradcheck_psroi_pooling():
    rng = np.random.RandomState(1)
    x = torch.from_numpy(rng.rand(2, 2 * 9, 8, 9)).requires_grad_()
    rois = torch.tensor([[0, 4, 6, 60, 50], [1, -5, 10, 200, 30], [1, 30, 30, 31, 31]],
                        dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda t: psroi_avg_pool(t, rois, 2, 3, 0.125), (x,),
                                    eps=1e-6, atol=1e-8)


ROI_NET = """
input: "x" input_shape {{ dim: 2 dim: {c} dim: 12 dim: 15 }}
input: "rois" input_shape {{ dim: 20 dim: 5 }}
layer {{ name: "p" type: "{type}" bottom: "x" bottom: "rois" top: "p" {params} }}
"""


@pytest.mark.parametrize("kind, channels, params", [
    ("ROIPooling", 3, "roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.0625 }"),
    ("ROIPooling", 5, "roi_pooling_param { pooled_h: 7 pooled_w: 7 spatial_scale: 0.125 }"),
    ("PSROIPooling", 2 * 9,
     "psroi_pooling_param { spatial_scale: 0.0625 output_dim: 2 group_size: 3 }"),
    ("PSROIPooling", 3 * 49,
     "psroi_pooling_param { spatial_scale: 0.125 output_dim: 3 group_size: 7 }"),
])
def test_region_pooling_matches_opencv(kind, channels, params, tmp_path):
    text = ROI_NET.format(c=channels, type=kind, params=params)
    net = build(text)
    rng = np.random.RandomState(2)
    inputs = {"x": rng.rand(2, channels, 12, 15).astype(np.float32),
              "rois": random_rois(rng, 2, 20)}
    (ours,) = run_hovcaffe(net, inputs, ["p"])
    (ref,) = run_opencv(text, net, inputs, ["p"], tmp_path)
    assert np.count_nonzero(ours) > ours.size // 4
    assert max_rel(ours, ref) < 1e-5


def test_region_pooling_in_a_net_trains_the_features_only():
    text = ROI_NET.format(c=3, type="ROIPooling",
                          params="roi_pooling_param { pooled_h: 2 pooled_w: 2 spatial_scale: 0.0625 }")
    net = build(text)
    assert net.layer("p").no_grad_bottoms == (1,)
    assert net.blob_shapes["p"] == (20, 3, 2, 2)


def test_region_pooling_bad_params_and_shapes():
    with pytest.raises(NetDefinitionError, match="pooled_h"):
        layer('type: "ROIPooling" roi_pooling_param { pooled_w: 2 }', [(1, 3, 5, 5), (4, 5)])
    with pytest.raises(NetDefinitionError, match="5 values"):
        layer('type: "ROIPooling" roi_pooling_param { pooled_h: 2 pooled_w: 2 }',
              [(1, 3, 5, 5), (4, 4)])
    with pytest.raises(NetDefinitionError, match="needs 18"):
        layer('type: "PSROIPooling" psroi_pooling_param { spatial_scale: 1 output_dim: 2 '
              'group_size: 3 }', [(1, 17, 5, 5), (4, 5)])


def test_roi_pooling_exports_to_onnx_max_roi_pool(tmp_path):
    import onnxruntime as ort
    text = ROI_NET.format(c=3, type="ROIPooling",
                          params="roi_pooling_param { pooled_h: 3 pooled_w: 4 spatial_scale: 0.0625 }")
    net = build(text)
    rng = np.random.RandomState(2)
    x, rois = rng.rand(2, 3, 12, 15).astype(np.float32), random_rois(rng, 2, 20)
    (ours,) = run_hovcaffe(net, {"x": x, "rois": rois}, ["p"])
    session = ort.InferenceSession(to_onnx_bytes(net, outputs=["p"]), providers=["CPUExecutionProvider"])
    # Different regions than the ones traced: the graph holds MaxRoiPool, not frozen bins.
    other = random_rois(np.random.RandomState(9), 2, 20)
    (got,) = session.run(["p"], {"x": x, "rois": rois})
    (got_other,) = session.run(["p"], {"x": x, "rois": other})
    assert np.count_nonzero(ours) > ours.size // 4 and np.array_equal(got, ours)
    assert np.array_equal(got_other, run_hovcaffe(net, {"x": x, "rois": other}, ["p"])[0])
    with pytest.raises(UserInputError, match="cannot be exported"):
        export_net(net, "torchscript", tmp_path / "roi.pt")
