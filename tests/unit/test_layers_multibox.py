"""SSD's MultiBoxLoss: matching, encoding and mining by hand; the loss by hand; gradcheck."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hovcaffe.errors import HovcaffeError, NetDefinitionError
from hovcaffe.layers import box_matching as bm
from hovcaffe.layers import boxes
from tests.unit.layer_helpers import layer

LN2 = math.log(2.0)
# Four priors: three image quarters and a centred box of the same size.
PRIORS = np.array([[0, 0, .5, .5], [.5, 0, 1, .5], [0, .5, .5, 1], [.25, .25, .75, .75]],
                  dtype=np.float32)
G0 = [0, 0, .4, .5]      # overlaps prior 0 by 0.2 / 0.25 = 0.8, prior 3 by 0.0375 / 0.4125
G1 = [.5, .5, 1, 1]      # overlaps only prior 3 (0.0625 / 0.4375 = 1/7); edges touch 1 and 2


def prior_blob(priors=PRIORS, variance=(0.1, 0.1, 0.1, 0.1)) -> torch.Tensor:
    var = np.tile(np.asarray(variance, np.float32), (len(priors), 1))
    return torch.from_numpy(np.stack([priors.reshape(-1), var.reshape(-1)]))[None]


def gt_blob(rows) -> torch.Tensor:
    """rows of (item, label, xmin, ymin, xmax, ymax[, difficult]) -> the (1, 1, G, 8) blob."""
    full = [[r[0], r[1], 0, *r[2:6], r[6] if len(r) > 6 else 0] for r in rows]
    return torch.tensor(full, dtype=torch.float32).view(1, 1, len(rows), 8)


def loss_layer(params: str, n: int = 1, num_priors: int = 4, classes: int = 2, gts: int = 1,
               loss_param: str = ""):
    text = (f'type: "MultiBoxLoss" multibox_loss_param {{ num_classes: {classes} {params} }} '
            f'{loss_param}')
    return layer(text, [(n, num_priors * 4), (n, num_priors * classes), (1, 2, num_priors * 4),
                        (1, 1, gts, 8)])


# ------------------------------------------------------------------------ matching by hand

def test_overlaps_by_hand():
    ov = bm.overlap_matrix(PRIORS, np.array([G0, G1], np.float32))
    np.testing.assert_allclose(ov, [[0.8, 0], [0, 0], [0, 0], [0.0375 / 0.4125, 1 / 7]],
                               rtol=1e-6)


def test_bipartite_gives_each_gt_its_best_free_prior():
    match, overlap = bm.match_priors(np.array([G0, G1], np.float32), PRIORS, bm.BIPARTITE, 0.5)
    # g0 takes prior 0 (0.8); g1's only prior is 3 although 3 overlaps g0 too.
    assert match.tolist() == [0, -1, -1, 1]
    np.testing.assert_allclose(overlap, [0.8, 0, 0, 1 / 7], rtol=1e-6)


def test_per_prediction_adds_priors_over_threshold_and_ties_go_to_the_lower_prior():
    priors = np.vstack([PRIORS, [[0, 0, .4, .4]]]).astype(np.float32)  # 0.16 / 0.2 = 0.8 with g0
    gt = np.array([G0], np.float32)
    bip, _ = bm.match_priors(gt, priors, bm.BIPARTITE, 0.5)
    assert bip.tolist() == [0, -1, -1, -1, -1]          # tie at 0.8: prior 0 first
    per, ov = bm.match_priors(gt, priors, bm.PER_PREDICTION, 0.5)
    assert per.tolist() == [0, -1, -1, -1, 0]           # prior 4 joins (0.8 >= 0.5)
    # Prior 3 (0.09) stays unmatched but keeps its overlap for mining.
    np.testing.assert_allclose(ov, [0.8, 0, 0, 0.0375 / 0.4125, 0.8], rtol=1e-6)
    high, _ = bm.match_priors(gt, priors, bm.PER_PREDICTION, 0.81)
    assert high.tolist() == [0, -1, -1, -1, -1]


def test_cross_boundary_priors_are_ignored_when_asked():
    priors = np.array([[-.1, 0, .4, .5], [0, 0, .5, .5]], np.float32)
    match, _ = bm.match_priors(np.array([G0], np.float32), priors, bm.PER_PREDICTION, 0.5,
                               ignore_cross_boundary=True)
    assert match.tolist() == [bm.CROSS_BOUNDARY, 0]


# ------------------------------------------------------------------------ encoding by hand

def test_encode_center_size_by_hand_and_decode_inverts_it():
    prior = np.array([[.1, .2, .5, .6]], np.float32)      # centre (.3, .4), 0.4 x 0.4
    gt = np.array([[.2, .2, .6, .8]], np.float32)         # centre (.4, .5), 0.4 x 0.6
    var = np.array([[.1, .1, .2, .2]], np.float32)
    enc = bm.encode_boxes(gt, prior, var, boxes.CENTER_SIZE, False)
    np.testing.assert_allclose(enc, [[2.5, 2.5, 0.0, math.log(1.5) / 0.2]], rtol=1e-5, atol=1e-6)
    back = boxes.decode_boxes(torch.from_numpy(enc), torch.from_numpy(prior),
                              torch.from_numpy(var), boxes.CENTER_SIZE, False)
    np.testing.assert_allclose(back.numpy(), gt, atol=1e-6)
    in_target = bm.encode_boxes(gt, prior, var, boxes.CENTER_SIZE, True)
    np.testing.assert_allclose(in_target, [[.25, .25, 0, math.log(1.5)]], rtol=1e-5, atol=1e-6)


def test_encode_corner_and_corner_size_by_hand():
    prior = np.array([[.1, .2, .5, .6]], np.float32)
    gt = np.array([[.2, .2, .6, .8]], np.float32)
    var = np.array([[.1, .1, .2, .2]], np.float32)
    np.testing.assert_allclose(bm.encode_boxes(gt, prior, var, boxes.CORNER, False),
                               [[1, 0, .5, 1]], rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(bm.encode_boxes(gt, prior, var, boxes.CORNER_SIZE, False),
                               [[2.5, 0, 1.25, 2.5]], rtol=1e-5, atol=1e-6)


# ------------------------------------------------------------------------- loss by hand

def test_loss_with_mining_by_hand():
    # Zero logits: every row costs ln 2. Prior 0 matches g0; CORNER targets with variance 0.1:
    # (0, 0, (0.4 - 0.5) / 0.1, 0) = (0, 0, -1, 0) -> smooth L1 |-1| - 0.5 = 0.5.
    # 1 positive x neg_pos_ratio 3 = 3 negatives (priors 1-3, all overlap < 0.5): 4 ln 2.
    lay = loss_layer("")
    (loss,) = lay(torch.zeros(1, 16), torch.zeros(1, 8), prior_blob(), gt_blob([[0, 1, *G0]]))
    assert loss.item() == pytest.approx(0.5 + 4 * LN2, rel=1e-6)


def test_mining_keeps_the_hardest_negatives():
    # Background-vs-object logits per prior: prior 1 looks most like an object (hardest
    # negative), then prior 3, then prior 2. Ratio 2 keeps priors 1 and 3.
    conf = torch.tensor([[0., 0., 0., 3., 0., -2., 0., 1.]])
    lay = loss_layer("neg_pos_ratio: 2")
    truth, picks, _, _ = lay.select(torch.zeros(1, 16), conf, prior_blob(), gt_blob([[0, 1, *G0]]))
    assert [(i, m.tolist(), neg.tolist()) for i, m, neg, _ in picks] == [(0, [0, -1, -1, -1], [1, 3])]
    (loss,) = lay(torch.zeros(1, 16), conf, prior_blob(), gt_blob([[0, 1, *G0]]))
    want = 0.5 + LN2 + math.log(1 + math.exp(3)) + math.log(1 + math.exp(1))
    assert loss.item() == pytest.approx(want, rel=1e-6)
    # neg_overlap 0.05 makes prior 3 (overlap 0.09) ineligible: priors 1 and 2 are taken.
    lay = loss_layer("neg_pos_ratio: 2 neg_overlap: 0.05")
    _, picks, _, _ = lay.select(torch.zeros(1, 16), conf, prior_blob(), gt_blob([[0, 1, *G0]]))
    assert picks[0][2].tolist() == [1, 2]


@pytest.mark.parametrize("norm,divisor", [("FULL", 8), ("VALID", 1), ("BATCH_SIZE", 2),
                                          ("NONE", 1)])
def test_normalization_modes(norm, divisor):
    # Two images, ground truth only in image 0: mining takes nothing from image 1.
    lay = loss_layer("", n=2, loss_param=f"loss_param {{ normalization: {norm} }}")
    (loss,) = lay(torch.zeros(2, 16), torch.zeros(2, 8), prior_blob(), gt_blob([[0, 1, *G0]]))
    assert loss.item() == pytest.approx((0.5 + 4 * LN2) / divisor, rel=1e-6)


def test_no_mining_counts_every_prior_of_every_image():
    lay = loss_layer("mining_type: NONE", n=2)
    (loss,) = lay(torch.zeros(2, 16), torch.zeros(2, 8), prior_blob(), gt_blob([[0, 1, *G0]]))
    assert loss.item() == pytest.approx(0.5 + 8 * LN2, rel=1e-6)


def test_logistic_confidence_and_l2_location():
    # Logistic: each selected row costs C ln 2 at zero logits; L2: 0.5 * (-1)^2 = 0.5 too.
    lay = loss_layer("conf_loss_type: LOGISTIC loc_loss_type: L2 loc_weight: 2")
    (loss,) = lay(torch.zeros(1, 16), torch.zeros(1, 8), prior_blob(), gt_blob([[0, 1, *G0]]))
    assert loss.item() == pytest.approx(2 * 0.5 + 4 * 2 * LN2, rel=1e-6)


def test_encode_variance_in_target_divides_both_sides():
    # Targets (0, 0, -0.1, 0) and predictions are both divided by 0.1: |-1| - 0.5 again, and a
    # prediction of 0.05 on xmax gives d = (0.05 + 0.1) / 0.1 = 1.5 -> 1.0.
    lay = loss_layer("encode_variance_in_target: true")
    loc = torch.zeros(1, 16)
    loc[0, 2] = 0.05
    (loss,) = lay(loc, torch.zeros(1, 8), prior_blob(), gt_blob([[0, 1, *G0]]))
    assert loss.item() == pytest.approx(1.0 + 4 * LN2, rel=1e-5)


def test_difficult_ground_truth_is_dropped_unless_used():
    rows = [[0, 1, *G0, 1]]
    (loss,) = loss_layer("use_difficult_gt: false")(torch.zeros(1, 16), torch.zeros(1, 8),
                                                    prior_blob(), gt_blob(rows))
    assert loss.item() == 0.0
    (loss,) = loss_layer("")(torch.zeros(1, 16), torch.zeros(1, 8), prior_blob(), gt_blob(rows))
    assert loss.item() == pytest.approx(0.5 + 4 * LN2, rel=1e-6)


def test_padding_rows_are_skipped_and_background_labels_refused():
    rows = gt_blob([[0, 1, *G0], [-1, -1, -1, -1, -1, -1, -1]])
    (loss,) = loss_layer("", gts=2)(torch.zeros(1, 16), torch.zeros(1, 8), prior_blob(), rows)
    assert loss.item() == pytest.approx(0.5 + 4 * LN2, rel=1e-6)
    with pytest.raises(HovcaffeError, match=r"layer 'l'.*background label 0"):
        loss_layer("")(torch.zeros(1, 16), torch.zeros(1, 8), prior_blob(), gt_blob([[0, 0, *G0]]))


def test_unsupported_settings_are_refused_at_build_time():
    with pytest.raises(NetDefinitionError, match="share_location"):
        loss_layer("share_location: false")
    with pytest.raises(NetDefinitionError, match="HARD_EXAMPLE"):
        loss_layer("mining_type: HARD_EXAMPLE")
    with pytest.raises(NetDefinitionError, match="contradicts"):
        loss_layer("do_neg_mining: false")


# ------------------------------------------------------------------------------ gradients

@pytest.mark.parametrize("params", ["code_type: CENTER_SIZE",
                                    "code_type: CORNER mining_type: NONE",
                                    "conf_loss_type: LOGISTIC neg_pos_ratio: 1",
                                    "loc_loss_type: L2 encode_variance_in_target: true "
                                    "code_type: CENTER_SIZE"])
def test_gradcheck_loc_and_conf(params):
    g = torch.Generator().manual_seed(3)
    classes = 3
    lay = loss_layer(params, n=2, classes=classes, gts=3).double()
    loc = (torch.randn(2, 16, generator=g, dtype=torch.float64) * 2).requires_grad_()
    conf = torch.randn(2, 4 * classes, generator=g, dtype=torch.float64).requires_grad_()
    priors = prior_blob(variance=(0.1, 0.1, 0.2, 0.2)).double()
    gt = gt_blob([[0, 1, *G0], [0, 2, *G1], [1, 2, .1, .55, .45, .95]]).double()
    assert torch.autograd.gradcheck(lambda a, b: lay(a, b, priors, gt)[0], (loc, conf),
                                    eps=1e-6, atol=1e-6)
    # The gradient reaches only matched locations: priors 1 and 2 of image 0 are unmatched.
    (loss,) = lay(loc, conf, priors, gt)
    loss.backward()
    assert loc.grad.view(2, 4, 4)[0, 1:3].abs().sum().item() == 0.0


def test_mobilenet_ssd_train_prototxt_trains():
    """chuanqi305/MobileNet-SSD's own VOC train net: its MultiBoxLoss builds from the prototxt;
    with mining off (every prior counts) each of its six confidence heads gets a gradient."""
    from pathlib import Path

    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import read_net
    from hovcaffe.net import CaffeNet

    path = Path(__file__).parents[1] / "zoo/forks/MobileNet-SSD/voc/MobileNetSSD_train.prototxt"
    torch.manual_seed(0)
    net_param = read_net(path)
    (loss_layer,) = [lp for lp in net_param.layer if lp.type == "MultiBoxLoss"]
    assert loss_layer.multibox_loss_param.mining_type == caffe_pb2.MultiBoxLossParameter.MAX_NEGATIVE
    loss_layer.multibox_loss_param.mining_type = caffe_pb2.MultiBoxLossParameter.NONE
    net = CaffeNet(net_param, caffe_pb2.TRAIN,
                   input_shapes={"data": (2, 3, 300, 300), "label": (1, 1, 3, 8)})
    gt = torch.tensor([[0, 12, 0, .1, .1, .4, .5, 0], [0, 15, 0, .5, .2, .9, .9, 0],
                       [1, 7, 0, .2, .3, .6, .8, 0]]).view(1, 1, 3, 8)
    loss = net.objective(net(data=torch.randn(2, 3, 300, 300), label=gt))
    assert torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    heads = [name for name in net.layers if name.endswith("_mbox_conf")]
    assert len(heads) == 6
    for name in heads:
        assert net.layers[name].blobs[0].grad.abs().sum().item() > 0, name
