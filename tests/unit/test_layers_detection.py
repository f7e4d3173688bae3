"""SSD's PriorBox and DetectionOutput: hand-worked priors, decoding and NMS, and OpenCV's dnn."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hovcaffe.errors import NetDefinitionError, UserInputError
from hovcaffe.layers import boxes
from hovcaffe.layers.detection import detect
from tests.unit.fork_helpers import build, max_rel, run_hovcaffe, run_opencv
from tests.unit.layer_helpers import layer

S2 = math.sqrt(2.0)


def prior_layer(params: str, feature=(1, 8, 1, 1), image=(1, 3, 100, 100)):
    return layer(f'type: "PriorBox" prior_box_param {{ {params} }}', [feature, image])


def run_prior(params: str, feature=(1, 8, 1, 1), image=(1, 3, 100, 100)) -> np.ndarray:
    lay = prior_layer(params, feature, image)
    (top,) = lay(torch.zeros(feature), torch.zeros(image))
    assert tuple(top.shape) == tuple(lay.output_shapes([feature, image])[0])
    return top.numpy()[0]


# ---------------------------------------------------------------- PriorBox by hand

def test_prior_box_order_sizes_and_variances_by_hand():
    top = run_prior("min_size: 20 max_size: 40 aspect_ratio: 2 flip: true "
                    "variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2")
    r = math.sqrt(800) / 2          # the sqrt(min * max) box
    a, b = 10 * S2, 5 * S2          # the ratio-2 box: 20*sqrt(2) x 20/sqrt(2), halves
    want = np.array([[40, 40, 60, 60],                     # min_size square
                     [50 - r, 50 - r, 50 + r, 50 + r],     # sqrt(min * max) square
                     [50 - a, 50 - b, 50 + a, 50 + b],     # ratio 2
                     [50 - b, 50 - a, 50 + b, 50 + a]]) / 100  # ratio 1/2 (flip)
    np.testing.assert_allclose(top[0].reshape(-1, 4), want, rtol=1e-6)
    np.testing.assert_allclose(top[1].reshape(-1, 4), [[0.1, 0.1, 0.2, 0.2]] * 4, rtol=1e-7)


def test_prior_box_defaults_are_ssds():
    # SSD: clip false, variance 0.1 (OpenCV's dnn defaults to clip true and needs a variance).
    top = run_prior("min_size: 150")
    np.testing.assert_allclose(top[0], [-0.25, -0.25, 1.25, 1.25], rtol=1e-6)
    np.testing.assert_allclose(top[1], 0.1, rtol=1e-7)


def test_prior_box_locations_row_major_and_clip():
    top = run_prior("min_size: 60 clip: true variance: 0.1", feature=(1, 8, 2, 2))
    # Cells are 50 px; centres at 25 and 75; the 60 px box reaches past the image and is clipped.
    want = np.array([[0, 0, 55, 55], [45, 0, 100, 55], [0, 45, 55, 100], [45, 45, 100, 100]]) / 100
    np.testing.assert_allclose(top[0].reshape(-1, 4), want, rtol=1e-6)
    np.testing.assert_allclose(top[1], 0.1, rtol=1e-7)


def test_prior_box_explicit_image_size_step_and_offset():
    top = run_prior("min_size: 10 img_h: 200 img_w: 100 step_h: 40 step_w: 20 offset: 0",
                    feature=(1, 8, 1, 2), image=(1, 3, 7, 7))
    # Centres (0, 0) and (20, 0); divided by the stated 100 x 200 image, not the 7 x 7 bottom.
    want = [[-5 / 100, -5 / 200, 5 / 100, 5 / 200], [15 / 100, -5 / 200, 25 / 100, 5 / 200]]
    np.testing.assert_allclose(top[0].reshape(-1, 4), want, rtol=1e-6)


def test_prior_box_repeated_ratio_is_skipped_and_count():
    assert boxes.expand_aspect_ratios([2, 2.0000001, 1, 3], flip=True) == pytest.approx(
        [1, 2, 0.5, 3, 1 / 3])
    lay = prior_layer("min_size: 30 max_size: 60 min_size: 45 max_size: 80 aspect_ratio: 2 "
                      "aspect_ratio: 3 flip: true", feature=(1, 8, 5, 7))
    assert lay.num_priors == 2 * 5 + 2
    assert lay.output_shapes([(1, 8, 5, 7), (1, 3, 300, 300)]) == [(1, 2, 5 * 7 * 12 * 4)]


@pytest.mark.parametrize("params, message", [
    ("max_size: 10", "min_size"),
    ("min_size: 20 max_size: 10", "greater than min_size"),
    ("min_size: 20 variance: 0.1 variance: 0.2", "variance"),
    ("min_size: 20 img_size: 10 img_h: 3", "not both"),
])
def test_prior_box_bad_params(params, message):
    with pytest.raises(NetDefinitionError, match=message):
        prior_layer(params)


# ---------------------------------------------------------------- decoding by hand

PRIOR = torch.tensor([[0.1, 0.2, 0.5, 0.6]])
VAR = torch.tensor([[0.1, 0.1, 0.2, 0.2]])
LOC = torch.tensor([[1.0, -2.0, 0.0, 5 * math.log(2)]])


@pytest.mark.parametrize("code, encoded, want", [
    # centre (0.3, 0.4) + (0.1 * 1 * 0.4, 0.1 * -2 * 0.4); size 0.4 x 0.4 * exp(0.2 * 5 ln 2) = 0.8
    (boxes.CENTER_SIZE, False, [0.14, -0.08, 0.54, 0.72]),
    # corners + variance * loc
    (boxes.CORNER, False, [0.2, 0.0, 0.5, 0.6 + math.log(2)]),
    # corners + variance * loc * prior size
    (boxes.CORNER_SIZE, False, [0.14, 0.12, 0.5, 0.6 + 0.4 * math.log(2)]),
    # variances ignored: centre (0.3 + 0.4, 0.4 - 0.8), height 0.4 * 32
    (boxes.CENTER_SIZE, True, [0.5, -6.8, 0.9, 6.0]),
])
def test_decode_by_hand(code, encoded, want):
    got = boxes.decode_boxes(LOC, PRIOR, VAR, code, encoded)
    np.testing.assert_allclose(got.numpy()[0], want, rtol=1e-6, atol=1e-7)


# ---------------------------------------------------------------- NMS by hand

NMS_BOXES = np.array([[0, 0, 1, 1], [0, 0, 1, 0.5], [0, 0.5, 1, 1], [2, 2, 3, 3]], np.float32)


@pytest.mark.parametrize("threshold, eta, kept", [
    (0.45, 1.0, [0, 3]),        # B and C overlap A by exactly 0.5
    (0.5, 1.0, [0, 1, 2, 3]),   # overlap <= threshold is kept
    (0.6, 0.8, [0, 3]),         # adaptive: 0.6 -> 0.48 after A, then B and C go
    (0.6, 1.0, [0, 1, 2, 3]),
])
def test_greedy_nms_by_hand(threshold, eta, kept):
    assert boxes.overlaps(NMS_BOXES[0], NMS_BOXES[1:]).tolist() == [0.5, 0.5, 0.0]
    assert boxes.greedy_nms(NMS_BOXES, np.arange(4), threshold, eta=eta) == kept


def test_overlap_of_inverted_and_pixel_boxes():
    inverted = np.array([[0.6, 0, 0.4, 1]], np.float32)
    assert boxes.overlaps(np.float32([0.3, 0, 0.7, 1]), inverted).tolist() == [0.0]
    # pixel boxes: [0, 0, 9, 9] is 100 px, [5, 0, 14, 9] shares 5 x 10 = 50 -> 50 / 150
    got = boxes.overlaps(np.float32([0, 0, 9, 9]), np.float32([[5, 0, 14, 9]]), pixel=True)
    np.testing.assert_allclose(got, [1 / 3], rtol=1e-6)


def test_top_scores_threshold_order_and_top_k():
    scores = np.float32([0.2, 0.9, 0.5, 0.9, 0.1])
    assert boxes.top_scores(scores, 0.15, -1).tolist() == [1, 3, 2, 0]
    assert boxes.top_scores(scores, 0.15, 2).tolist() == [1, 3]
    assert boxes.top_scores(scores, 0.2, -1).tolist() == [1, 3, 2]   # strictly greater


# ---------------------------------------------------------------- DetectionOutput

def det_layer(params: str, loc_shape, conf_shape, prior_shape):
    return layer(f'type: "DetectionOutput" detection_output_param {{ {params} }}',
                 [loc_shape, conf_shape, prior_shape])


def corner_inputs():
    """Two images, the four NMS boxes as priors, zero offsets (CORNER decodes to the priors)."""
    prior = np.stack([NMS_BOXES.reshape(-1), np.full(16, 0.1, np.float32)])[None]
    loc = np.zeros((2, 16), np.float32)
    conf = np.array([[[0.1, 0.9, 0.2], [0.1, 0.8, 0.7], [0.1, 0.7, 0.1], [0.1, 0.6, 0.3]],
                     [[0.9, 0.0, 0.0]] * 4], np.float32).reshape(2, 12)
    return [torch.from_numpy(a) for a in (loc, conf, prior)]


def test_detection_output_rows_by_hand():
    lay = det_layer("num_classes: 3 code_type: CORNER confidence_threshold: 0.25 "
                    "nms_param { nms_threshold: 0.45 }", (2, 16), (2, 12), (1, 2, 16))
    (top,) = lay(*corner_inputs())
    want = [[0, 1, 0.9, 0, 0, 1, 1], [0, 1, 0.6, 2, 2, 3, 3],       # class 1: A, D
            [0, 2, 0.7, 0, 0, 1, 0.5], [0, 2, 0.3, 2, 2, 3, 3]]     # class 2: B (A is 0.2), D
    np.testing.assert_allclose(top.numpy()[0, 0], want, rtol=1e-6)


def test_detection_output_keep_top_k_keeps_label_order():
    lay = det_layer("num_classes: 3 code_type: CORNER keep_top_k: 2 confidence_threshold: 0.25 "
                    "nms_param { nms_threshold: 0.45 }", (2, 16), (2, 12), (1, 2, 16))
    (top,) = lay(*corner_inputs())
    # The best two over all classes are 0.9 (class 1) and 0.7 (class 2); rows stay by label.
    np.testing.assert_allclose(top.numpy()[0, 0, :, :3], [[0, 1, 0.9], [0, 2, 0.7]], rtol=1e-6)


def test_detection_output_nothing_found_is_ssds_placeholder():
    lay = det_layer("num_classes: 3 code_type: CORNER confidence_threshold: 0.95",
                    (2, 16), (2, 12), (1, 2, 16))
    (top,) = lay(*corner_inputs())
    assert top.numpy().tolist() == [[[[0, -1, -1, -1, -1, -1, -1], [1, -1, -1, -1, -1, -1, -1]]]]


def test_detection_output_per_class_locations():
    # share_location false: locations (P, classes, 4); class 2's boxes are shifted by +1 in x.
    loc = torch.zeros(1, 4, 3, 4)
    loc[0, :, 2, 0] = loc[0, :, 2, 2] = 10.0    # variance 0.1 * 10 = +1
    prior = torch.from_numpy(np.stack([NMS_BOXES.reshape(-1), np.full(16, 0.1, np.float32)])[None])
    conf = torch.tensor([[[0.0, 0.0, 0.9], [0.0, 0.0, 0.1], [0.0, 0.0, 0.1], [0.0, 0.0, 0.1]]])
    top = detect(loc.reshape(1, -1), conf.reshape(1, -1), prior, num_classes=3,
                 share_location=False, code_type=boxes.CORNER, confidence_threshold=0.5)
    np.testing.assert_allclose(top.numpy()[0, 0], [[0, 2, 0.9, 1, 0, 2, 1]], rtol=1e-6)


def test_detection_output_refuses_export_with_advice():
    lay = det_layer("num_classes: 3", (2, 16), (2, 12), (1, 2, 16))
    with pytest.raises(UserInputError, match="export the net's heads"):
        torch.jit.trace(lambda a, b, c: lay(a, b, c)[0], tuple(corner_inputs()))


def test_detection_output_shape_errors():
    with pytest.raises(NetDefinitionError, match="location values"):
        det_layer("num_classes: 3", (2, 12), (2, 12), (1, 2, 16))
    with pytest.raises(NetDefinitionError, match="num_classes"):
        det_layer("share_location: true", (2, 16), (2, 12), (1, 2, 16))


# ---------------------------------------------------------------- against OpenCV

PRIOR_NET = """
input: "f" input_shape { dim: 1 dim: 2 dim: 5 dim: 7 }
input: "img" input_shape { dim: 1 dim: 3 dim: 300 dim: 310 }
layer { name: "p" type: "PriorBox" bottom: "f" bottom: "img" top: "p"
  prior_box_param { %s } }
"""


# OpenCV's own defaults differ from SSD's (clip true, no variance), so every case states them.
@pytest.mark.parametrize("params", [
    "min_size: 30.0 max_size: 60.0 min_size: 45 max_size: 80 aspect_ratio: 2 aspect_ratio: 3 "
    "flip: true clip: false variance: 0.1 variance: 0.1 variance: 0.2 variance: 0.2",
    "min_size: 162 max_size: 213 aspect_ratio: 2 flip: true clip: true variance: 0.1 step: 64",
    "min_size: 20 aspect_ratio: 3 flip: false clip: false offset: 0.25 variance: 0.2",
])
def test_prior_box_matches_opencv(params, tmp_path):
    text = PRIOR_NET % params
    net = build(text)
    rng = np.random.RandomState(0)
    inputs = {"f": rng.rand(1, 2, 5, 7).astype(np.float32),
              "img": rng.rand(1, 3, 300, 310).astype(np.float32)}
    (ours,) = run_hovcaffe(net, inputs, ["p"])
    (ref,) = run_opencv(text, net, inputs, ["p"], tmp_path)
    assert max_rel(ours, ref.reshape(ours.shape)) < 1e-5


DET_NET = """
input: "loc" input_shape {{ dim: {n} dim: {loc} }}
input: "conf" input_shape {{ dim: {n} dim: {conf} }}
input: "prior" input_shape {{ dim: 1 dim: 2 dim: {prior} dim: 1 }}
layer {{ name: "d" type: "DetectionOutput" bottom: "loc" bottom: "conf" bottom: "prior" top: "d"
  detection_output_param {{ num_classes: {classes} share_location: {share} background_label_id: 0
    nms_param {{ nms_threshold: 0.45 top_k: 30 }} code_type: {code} keep_top_k: {keep}
    confidence_threshold: 0.3 }} }}
"""


def random_detection_inputs(rng, n: int, priors: int, classes: int, loc_classes: int = 1):
    cx, cy = rng.rand(priors), rng.rand(priors)
    w, h = rng.uniform(0.05, 0.4, priors), rng.uniform(0.05, 0.4, priors)
    corners = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1).reshape(-1)
    prior = np.stack([corners, np.tile([0.1, 0.1, 0.2, 0.2], priors)]).astype(np.float32)
    loc = (rng.randn(n, priors * loc_classes * 4) * 0.5).astype(np.float32)
    # distinct scores: no ties for the sorts to order differently
    conf = rng.permutation(n * priors * classes).reshape(n, -1).astype(np.float32)
    conf /= conf.max()
    return {"loc": loc, "conf": conf, "prior": prior[None, :, :, None]}


# keep_top_k -1 crashes OpenCV 4.x; 200 keeps every row here as -1 would.
@pytest.mark.parametrize("code, keep, share", [("CENTER_SIZE", 20, True), ("CORNER", 200, True),
                                               ("CENTER_SIZE", 200, True), ("CENTER_SIZE", 30, False)])
def test_detection_output_matches_opencv(code, keep, share, tmp_path):
    n, priors, classes = 2, 60, 4
    loc_classes = 1 if share else classes
    text = DET_NET.format(n=n, loc=priors * loc_classes * 4, conf=priors * classes,
                          prior=priors * 4, classes=classes, code=code, keep=keep,
                          share=str(share).lower())
    net = build(text)
    inputs = random_detection_inputs(np.random.RandomState(1), n, priors, classes, loc_classes)
    (ours,) = run_hovcaffe(net, inputs, ["d"])
    (ref,) = run_opencv(text, net, inputs, ["d"], tmp_path)
    # OpenCV pads each image to keep_top_k rows of score 0 and lists rows by score where SSD
    # lists them by label: compare the real rows as sets.
    ref = ref.reshape(-1, 7)
    ref = ref[ref[:, 2] > 0]
    assert ours.shape[2] > 20 and ours.shape[2] == len(ref)

    def by_key(a):
        rows = a.reshape(-1, 7)
        return rows[np.lexsort((-rows[:, 2], rows[:, 1], rows[:, 0]))]
    assert max_rel(by_key(ours), by_key(ref)) < 1e-5


def test_nms_overlap_matrix_and_one_by_one_agree(monkeypatch):
    rng = np.random.RandomState(3)
    centre, size = rng.rand(600, 2), rng.uniform(0.05, 0.3, (600, 2))
    bxs = np.concatenate([centre - size / 2, centre + size / 2], 1).astype(np.float32)
    order = np.argsort(-rng.rand(600))
    by_matrix = boxes.greedy_nms(bxs, order, 0.45)
    monkeypatch.setattr(boxes, "MATRIX_NMS_LIMIT", 0)
    one_by_one = boxes.greedy_nms(bxs, order, 0.45)
    assert 50 < len(by_matrix) < 600 and by_matrix == one_by_one
