"""Faster R-CNN proposals: anchors and filters by hand, OpenCV's Proposal, the Python-layer table."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.check import check_net
from hovcaffe.caffe.io import parse_net
from hovcaffe.errors import NetDefinitionError, UnsupportedLayerError
from hovcaffe.layers import boxes
from hovcaffe.layers.proposal import ProposalSettings, parse_param_str, proposals
from hovcaffe.layers.registry import check_layer_type
from hovcaffe.net import CaffeNet
from tests.unit.fork_helpers import build, max_rel, run_hovcaffe, run_opencv


def test_anchors_are_py_faster_rcnns():
    # generate_anchors() of py-faster-rcnn, worked by hand: ratio 0.5 gives a 23 x 12 base
    # (sqrt(512) = 22.6 -> 23, 11.5 -> 12 rounding half to even), centred on 7.5.
    want = [[-84, -40, 99, 55], [-176, -88, 191, 103], [-360, -184, 375, 199],
            [-56, -56, 71, 71], [-120, -120, 135, 135], [-248, -248, 263, 263],
            [-36, -80, 51, 95], [-80, -168, 95, 183], [-168, -344, 183, 359]]
    assert boxes.anchors(16, (0.5, 1, 2), (8, 16, 32)).tolist() == want


@pytest.mark.parametrize("text, want", [
    ("'feat_stride': 16", {"feat_stride": 16}),
    ("{'feat_stride': 16, 'scales': [4, 8]}", {"feat_stride": 16, "scales": [4, 8]}),
    ("feat_stride: 8\nscales: [2]", {"feat_stride": 8, "scales": [2]}),
    ("", {}),
])
def test_param_str_is_parsed_as_data(text, want):
    assert parse_param_str(text) == want


def test_param_str_never_runs_code():
    with pytest.raises(ValueError, match="not a YAML mapping"):
        parse_param_str("!!python/object/apply:os.system ['echo owned']")
    with pytest.raises(ValueError):
        parse_param_str("__import__('os').system('echo owned')")


def one_anchor_inputs(scale: float):
    """Two cells, one 16 x 16 anchor each; the second cell's box is shrunk to 9 x 9 pixels."""
    prob = torch.tensor([[0.7, 0.1], [0.3, 0.9]]).view(1, 2, 1, 2)
    deltas = torch.zeros(1, 4, 1, 2)
    deltas[0, 2:, 0, 1] = math.log(0.5)                   # width, height x 0.5 -> 8 (+1 = 9 px)
    info = torch.tensor([[100.0, 100.0, scale]])
    return prob, deltas, info


def test_min_size_filter_scales_with_the_image():
    s = ProposalSettings(ratios=(1.0,), scales=(1.0,))
    props, scores = proposals(*one_anchor_inputs(1.0), s)
    # bbox_transform_inv puts x2 at centre + width / 2: the 0..15 anchor decodes to 0..16.
    assert props.tolist() == [[0, 0, 16, 16]] and scores.tolist() == pytest.approx([0.3])
    # Scaled by 0.5 the minimum is 8 pixels: the 9-pixel box stays, first by its score.
    props, scores = proposals(*one_anchor_inputs(0.5), s)
    assert props.tolist() == [[20, 4, 28, 12], [0, 0, 16, 16]]
    assert scores.tolist() == pytest.approx([0.9, 0.3])


def test_boxes_are_clipped_to_the_image():
    prob, deltas, _ = one_anchor_inputs(1.0)
    deltas[0, 0, 0, 0] = -2.0                              # moves box 0 left by 32 px
    props, _ = proposals(prob, deltas, torch.tensor([[10.0, 12.0, 1.0]]),
                         ProposalSettings(ratios=(1.0,), scales=(1.0,), min_size=0))
    assert props.tolist() == [[11, 4, 11, 9], [0, 0, 0, 9]]


def test_nms_with_pixel_overlaps_and_top_n():
    s = ProposalSettings(ratios=(1.0,), scales=(1.0,), feat_stride=2, min_size=0,
                         nms_thresh=0.7)
    prob = torch.tensor([[0.0, 0.0], [0.6, 0.9]]).view(1, 2, 1, 2)
    # Boxes 0..16 and 2..18 (17 px wide, +1 rule) share 15 x 17: 255 / (2 * 289 - 255) = 0.79
    # > 0.7, so only the better one survives NMS.
    props, scores = proposals(prob, torch.zeros(1, 4, 1, 2), torch.tensor([[100.0, 100, 1]]), s)
    assert props.tolist() == [[2, 0, 18, 16]] and scores.tolist() == pytest.approx([0.9])
    assert boxes.overlaps(np.float32([0, 0, 16, 16]), np.float32([[2, 0, 18, 16]]),
                          pixel=True).tolist() == pytest.approx([255 / 323])


CV_PROPOSAL = """
input: "prob" input_shape {{ dim: 1 dim: 18 dim: {h} dim: {w} }}
input: "deltas" input_shape {{ dim: 1 dim: 36 dim: {h} dim: {w} }}
input: "info" input_shape {{ dim: 1 dim: 3 }}
layer {{ name: "p" type: "Proposal" bottom: "prob" bottom: "deltas" bottom: "info" top: "rois"
  proposal_param {{ feat_stride: 16 base_size: 16 min_size: 0 ratio: 0.5 ratio: 1 ratio: 2
    scale: 8 scale: 16 scale: 32 pre_nms_topn: 6000 post_nms_topn: 300 nms_thresh: 0.7 }} }}
"""


def test_opencv_spelling_matches_opencv(tmp_path):
    # A prototxt with OpenCV's `type: "Proposal"` and proposal_param, run by both. OpenCV's
    # Proposal has no minimum-size filter, so the prototxt sets min_size 0.
    h, w = 14, 19
    text = CV_PROPOSAL.format(h=h, w=w)
    rng = np.random.RandomState(0)
    inputs = {"prob": rng.rand(1, 18, h, w).astype(np.float32),
              "deltas": (rng.randn(1, 36, h, w) * 0.3).astype(np.float32),
              "info": np.array([[h * 16, w * 16, 1.0]], np.float32)}
    net = build(text)
    settings = net.layer("p").settings
    assert settings == ProposalSettings(min_size=0, nms_thresh=settings.nms_thresh)
    assert settings.nms_thresh == pytest.approx(0.7)   # a float field: 0.699999988
    (ours,) = run_hovcaffe(net, inputs, ["rois"])
    (ref,) = run_opencv(text, net, inputs, ["p"], tmp_path)
    assert ref.shape == ours.shape == (300, 5) and np.all(ours[:, 0] == 0)
    assert max_rel(ours, ref) < 1e-5


def test_proposal_param_settings():
    text = CV_PROPOSAL.format(h=4, w=5).replace("min_size: 0", "min_size: 8").replace(
        "post_nms_topn: 300", "post_nms_topn: 50").replace("ratio: 0.5 ratio: 1 ratio: 2", "ratio: 1")
    text = text.replace("dim: 18", "dim: 6").replace("dim: 36", "dim: 12")
    net = build(text)
    settings = net.layer("p").settings
    assert settings == ProposalSettings(ratios=(1.0,), min_size=8, post_nms_top_n=50,
                                        nms_thresh=settings.nms_thresh)
    assert net.blob_shapes["rois"] == (50, 5)


FASTER_RCNN_TAIL = """
name: "rpn"
input: "rpn_cls_prob_reshape" input_shape { dim: 1 dim: 18 dim: 6 dim: 8 }
input: "rpn_bbox_pred" input_shape { dim: 1 dim: 36 dim: 6 dim: 8 }
input: "im_info" input_shape { dim: 1 dim: 3 }
layer {
  name: 'proposal'
  type: 'Python'
  bottom: 'rpn_cls_prob_reshape'
  bottom: 'rpn_bbox_pred'
  bottom: 'im_info'
  top: 'rois'
  python_param { module: 'rpn.proposal_layer' layer: 'ProposalLayer' param_str: "'feat_stride': 16" }
}
"""


def test_py_faster_rcnn_proposal_layer_is_built_in():
    net_param = parse_net(FASTER_RCNN_TAIL, "test.prototxt")
    check_net(net_param, "test.prototxt", check_type=check_layer_type)   # no allow flag needed
    test_net = CaffeNet(net_param, "TEST")
    train_net = CaffeNet(net_param, "TRAIN")
    assert test_net.blob_shapes["rois"] == (300, 5)         # cfg.TEST.RPN_POST_NMS_TOP_N
    assert train_net.blob_shapes["rois"] == (2000, 5)       # cfg.TRAIN.RPN_POST_NMS_TOP_N
    rng = np.random.RandomState(3)
    blobs = test_net(rpn_cls_prob_reshape=torch.from_numpy(rng.rand(1, 18, 6, 8).astype(np.float32)),
                     rpn_bbox_pred=torch.zeros(1, 36, 6, 8),
                     im_info=torch.tensor([[96.0, 128.0, 1.0]]))
    rois = blobs["rois"].numpy()
    assert 0 < len(rois) <= 300 and np.all(rois[:, 0] == 0)
    assert rois[:, 3].max() <= 127 and rois[:, 4].max() <= 95 and rois[:, 1:].min() >= 0


@pytest.mark.parametrize("module, layer_name, hint", [
    ("rpn.anchor_target_layer", "AnchorTargetLayer", "RPN training targets"),
    ("my.own", "Layer", "built in without importing them: rpn.proposal_layer.ProposalLayer"),
])
def test_other_python_layers_stay_refused(module, layer_name, hint):
    text = FASTER_RCNN_TAIL.replace("rpn.proposal_layer", module).replace("ProposalLayer", layer_name)
    with pytest.raises(UnsupportedLayerError, match=hint):
        check_net(parse_net(text, "train.prototxt"), "train.prototxt", check_type=check_layer_type)


def test_bad_param_str_names_the_layer():
    text = FASTER_RCNN_TAIL.replace("'feat_stride': 16", "'feat_stride': 16, 'ratio': [1]")
    with pytest.raises(NetDefinitionError, match="'proposal'.*ratio"):
        CaffeNet(parse_net(text, "test.prototxt"), caffe_pb2.TEST)
