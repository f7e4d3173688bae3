"""SSD's DetectionEvaluate and the solver's eval_type "detection": AP by hand for each
ap_version, against the VOC devkit's formulas, true/false positives by hand, and a training run
whose test score is the mAP (ranks' detections gathered, not averaged)."""
from __future__ import annotations

import csv

import numpy as np
import pytest
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net, parse_solver
from hovcaffe.data.registry import FeedContext
from hovcaffe.errors import HovcaffeError
from hovcaffe.metrics import MetricsCallback
from hovcaffe.net import CaffeNet
from hovcaffe.training.detection_scoring import (DetectionTally, average_precision,
                                                 collect_detections, cut_batch, detection_test,
                                                 image_rows)
from hovcaffe.training.feeder import NetFeeder
from hovcaffe.training.loop import TrainConfig, Trainer
from tests.unit.layer_helpers import layer

# ---------------------------------------------------------------- average precision by hand

# num_pos 2; hits at ranks 1 and 3: precision (1, 1/2, 2/3), recall (1/2, 1/2, 1).
#   Integral: 1 * 1/2 + 2/3 * 1/2 = 5/6; MaxIntegral: the envelope is the same here, 5/6;
#   11point: recall levels 0-0.5 see precision 1, 0.6-1 see 2/3: (6 + 5 * 2/3) / 11.
# A miss first (0, 1/2, 2/3 at recall 0, 1/2, 1): Integral 1/2 * 1/2 + 2/3 * 1/2 = 7/12;
#   MaxIntegral lifts the first half to 2/3: 2/3; 11point: 2/3 at every level.
CASES = [
    ([.9, .8, .7], [1, 0, 1], 2, {"Integral": 5 / 6, "MaxIntegral": 5 / 6,
                                  "11point": (6 + 5 * 2 / 3) / 11}),
    ([.9, .8, .7], [0, 1, 1], 2, {"Integral": 7 / 12, "MaxIntegral": 2 / 3, "11point": 2 / 3}),
    # One hit of four boxes: recall stops at 1/4.
    ([.5], [1], 4, {"Integral": .25, "MaxIntegral": .25, "11point": 3 / 11}),
    # Order comes from the scores, not from the arrival order.
    ([.7, .8, .9], [1, 0, 1], 2, {"Integral": 5 / 6, "MaxIntegral": 5 / 6,
                                  "11point": (6 + 5 * 2 / 3) / 11}),
]


@pytest.mark.parametrize("scores,tp,num_pos,want", CASES)
@pytest.mark.parametrize("version", ["Integral", "MaxIntegral", "11point"])
def test_average_precision_by_hand(scores, tp, num_pos, want, version):
    assert average_precision(scores, tp, num_pos, version) == pytest.approx(want[version], rel=1e-6)


def test_no_detections_or_no_positives_score_zero_and_unknown_versions_are_refused():
    assert average_precision([], [], 3, "Integral") == 0.0
    assert average_precision([.5], [0], 0, "11point") == 0.0
    with pytest.raises(ValueError, match="ap_version"):
        average_precision([.5], [1], 1, "VOC")


def _voc07(rec, prec):
    return sum(max([p for r, p in zip(rec, prec) if r >= t], default=0.0) / 11
               for t in np.arange(0.0, 1.1, 0.1))


def _voc12(rec, prec):
    mrec = np.concatenate([[0.0], rec, [1.0]])
    mpre = np.concatenate([[0.0], prec, [0.0]])
    for i in range(len(mpre) - 2, -1, -1):
        mpre[i] = max(mpre[i], mpre[i + 1])
    idx = np.nonzero(mrec[1:] != mrec[:-1])[0]
    return float(np.sum((mrec[idx + 1] - mrec[idx]) * mpre[idx + 1]))


@pytest.mark.parametrize("seed", range(5))
def test_11point_and_max_integral_are_the_voc_devkit_formulas(seed):
    rs = np.random.RandomState(seed)
    n = 40
    scores = rs.permutation(n) / n           # distinct scores
    tp = (rs.rand(n) < 0.4).astype(int)
    num_pos = int(tp.sum()) + 3              # some boxes never found
    order = np.argsort(-scores)
    hits = np.cumsum(tp[order])
    rec = hits / num_pos
    prec = hits / np.arange(1, n + 1)
    assert average_precision(scores, tp, num_pos, "11point") == pytest.approx(_voc07(rec, prec),
                                                                               abs=1e-5)
    assert average_precision(scores, tp, num_pos, "MaxIntegral") == pytest.approx(
        _voc12(rec, prec), abs=1e-5)


# ---------------------------------------------------------------- DetectionEvaluate by hand

A, B, C, D = [0, 0, .5, .5], [.5, .5, 1, 1], [0, .5, .5, 1], [.2, .2, .6, .6]
# Image 0: class 1 boxes A and B (B difficult), class 2 box C. Image 1: class 1 box D.
GT = [[0, 1, 0, *A, 0], [0, 1, 0, *B, 1], [0, 2, 0, *C, 0], [1, 1, 0, *D, 0]]
# Scrambled: A again at 0.8 (IoU 0.9 with A: a repeat), A at 0.9 (hit), B at 0.7 (the difficult
# box), a class-2 box far from C, and class 2 in image 1, which has none.
DETS = [[0, 1, .8, 0, 0, .5, .45], [0, 2, .6, .6, 0, 1, .4], [0, 1, .9, *A], [0, 1, .7, *B],
        [1, 2, .5, *A]]


def evaluate(dets, gt, params=""):
    lay = layer(f'type: "DetectionEvaluate" detection_evaluate_param {{ num_classes: 3 {params} }}',
                [(1, 1, len(dets), 7), (1, 1, len(gt), 8)])
    (top,) = lay(torch.tensor(dets, dtype=torch.float32).view(1, 1, -1, 7),
                 torch.tensor(gt, dtype=torch.float32).view(1, 1, -1, 8))
    return top[0, 0].numpy()


def test_true_and_false_positives_by_hand():
    np.testing.assert_allclose(evaluate(DETS, GT), [
        [-1, 1, 3, -1, -1], [-1, 2, 1, -1, -1],   # positives per class (difficult included)
        [0, 1, .9, 1, 0], [0, 1, .8, 0, 1], [0, 1, .7, 1, 0],   # hit, repeat, difficult hit
        [0, 2, .6, 0, 1],                          # no overlap with C
        [1, 2, .5, 0, 1]], rtol=1e-6)              # no class-2 box in image 1


def test_difficult_boxes_are_neither_hit_nor_miss_unless_evaluated():
    table = evaluate(DETS, GT, "evaluate_difficult_gt: false")
    assert table[0].tolist() == [-1, 1, 2, -1, -1]
    np.testing.assert_allclose(table[4], [0, 1, .7, 0, 0], rtol=1e-6)
    # The empty marker of DetectionOutput (label -1) adds no row.
    empty = evaluate([[0, -1, -1, -1, -1, -1, -1]], GT)
    assert empty.shape == (2, 5)


def test_overlap_threshold_and_background_detections():
    # At threshold 0.95 the repeat (0.9) and the hit stay as before; a looser box turns a miss.
    loose = [[0, 1, .9, 0, 0, .5, .45]]
    assert evaluate(loose, GT)[2, 3:].tolist() == [1, 0]
    assert evaluate(loose, GT, "overlap_threshold: 0.95")[2, 3:].tolist() == [0, 1]
    with pytest.raises(HovcaffeError, match="background label"):
        evaluate([[0, 0, .9, *A]], GT)


def test_tally_mean_ap_by_hand():
    tally = DetectionTally()
    tally.add(evaluate(DETS, GT))
    # Class 1: hits at ranks 1 and 3 of 3 boxes: Integral 1/3 + 2/3 * 1/3 = 5/9. Class 2: 0.
    assert tally.class_aps("Integral") == pytest.approx({1: 5 / 9, 2: 0.0}, rel=1e-6)
    assert tally.mean_ap("Integral") == pytest.approx(5 / 18, rel=1e-6)


# ---------------------------------------------------------------- the test pass and the solver

EVAL_NET = """
layer { name: "det" type: "Input" top: "det" input_param { shape { dim: 1 dim: 1 dim: 5 dim: 7 } } }
layer { name: "gt" type: "Input" top: "gt" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 8 } } }
layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "detection_eval"
        detection_evaluate_param { num_classes: 3 } }
"""
PAD_DET, PAD_GT = [-1] * 7, [-1] * 8


@pytest.fixture()
def batches(tmp_path):
    """Two images, one per batch: image 0 as above, then image 1 (ids restart in each batch)."""
    det0 = [d for d in DETS if d[0] == 0]
    det1 = [[0, *d[1:]] for d in DETS if d[0] == 1]
    gt0 = [g for g in GT if g[0] == 0]
    gt1 = [[0, *g[1:]] for g in GT if g[0] == 1]
    det = np.array([pad(det0, 5, PAD_DET), pad(det1, 5, PAD_DET)], np.float32)[:, None]
    gt = np.array([pad(gt0, 4, PAD_GT), pad(gt1, 4, PAD_GT)], np.float32)[:, None]
    path = tmp_path / "eval.npz"
    np.savez(path, det=det, gt=gt)
    return str(path)


def pad(rows, n, filler):
    return rows + [filler] * (n - len(rows))


def _rank(path, rank=0, size=1):
    feeder = NetFeeder(parse_net(EVAL_NET).layer,
                       FeedContext(phase=caffe_pb2.TEST, rank=rank, world_size=size),
                       input_data=path)
    return CaffeNet(parse_net(EVAL_NET), caffe_pb2.TEST), feeder


def test_detection_pass_pools_every_batch(batches):
    net, feeder = _rank(batches)
    means, _ = detection_test(net, feeder, 2, None, ap_version="Integral", gather=lambda t: [t])
    # Pooled over both batches the rows equal the single-table case above.
    assert float(means["detection_eval"][0]) == pytest.approx(5 / 18, rel=1e-6)


def test_ranks_detections_are_gathered_not_averaged(batches):
    tallies = [collect_detections(*_rank(batches, r, 2), samples=1)[0] for r in range(2)]
    net, feeder = _rank(batches, 0, 2)
    means, _ = detection_test(net, feeder, 1, 1, ap_version="Integral",
                              gather=lambda own: tallies)
    assert float(means["detection_eval"][0]) == pytest.approx(5 / 18, rel=1e-6)
    # Rank 0 alone: class 1 has 2 boxes, hits at ranks 1 and 3 -> 1/2 + 2/3 * 1/2 = 5/6;
    # rank 1 alone: class 1 has one box and no detection. Averaging would give another number.
    alone = [t["detection_eval"].mean_ap("Integral") for t in tallies]
    assert alone == pytest.approx([5 / 12, 0.0], rel=1e-6)
    assert np.mean(alone) != pytest.approx(5 / 18, rel=1e-3)


TRAIN_LAYERS = """
  layer { name: "x" type: "DummyData" top: "x" top: "y" include { phase: TRAIN }
          dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
  layer { name: "ip" type: "InnerProduct" bottom: "x" top: "out" include { phase: TRAIN }
          inner_product_param { num_output: 2 } }
  layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "y" top: "loss"
          include { phase: TRAIN } }
"""


def _test_only(net: str) -> str:
    """The layers of `net` (each starting a line with `layer {`), restricted to TEST."""
    blocks = ["layer" + b for b in net.strip().split("layer")[1:]]
    return "\n".join(b.rstrip()[:-1] + " include { phase: TEST } }" for b in blocks) + "\n"


def test_solver_eval_type_detection_writes_map_to_the_metrics(batches, tmp_path):
    net = TRAIN_LAYERS + _test_only(EVAL_NET)
    solver = (f"net_param {{ {net} }}\nbase_lr: 0.01\nlr_policy: \"fixed\"\nmax_iter: 2\n"
              "test_iter: 2\ntest_interval: 2\nsnapshot_after_train: false\n"
              'eval_type: "detection"\nap_version: "MaxIntegral"\n')
    metrics = MetricsCallback(tmp_path / "m.csv")
    trainer = Trainer(TrainConfig(parse_solver(solver), input_data=batches,
                                  snapshot_prefix=str(tmp_path / "s"), handle_signals=False),
                      callbacks=[metrics])
    result = trainer.solve()
    # MaxIntegral of class 1 (hits at 1 and 3 of 3 boxes): 1/3 * 1 + 1/3 * 2/3 = 5/9; class 2: 0.
    assert result.test_scores[2] == {"test/detection_eval": pytest.approx(5 / 18, rel=1e-6)}
    rows = list(csv.DictReader(open(tmp_path / "m.csv")))
    assert [float(r["test/detection_eval"]) for r in rows if r.get("test/detection_eval")] == \
        pytest.approx([5 / 18, 5 / 18], rel=1e-6)



def test_a_short_last_batch_keeps_its_images_ground_truth_only():
    # Three images, ragged ground truth (2, 0, 1 boxes): rows are images, not boxes.
    gt = torch.tensor([[0, 1, 0, .1, .1, .2, .2, 0], [0, 2, 0, .3, .3, .4, .4, 0],
                       [2, 1, 0, .5, .5, .6, .6, 0]]).view(1, 1, 3, 8)
    batch = {"data": torch.zeros(3, 3, 4, 4), "label": gt}
    assert image_rows(batch) == 3
    cut = cut_batch(batch, 2)
    assert tuple(cut["data"].shape) == (2, 3, 4, 4)
    assert cut["label"][0, 0, :, 0].tolist() == [0, 0]
    assert cut_batch(batch, 1)["label"][0, 0, :, 0].tolist() == [0, 0]
    empty = cut_batch({"data": torch.zeros(3, 1), "label": gt[:, :, 2:]}, 2)["label"]
    assert empty.tolist() == [[[[-1.0] * 8]]]


# -- `hovcaffe test` of a detection net -------------------------------------------------------
# Hand-worked: class 1 has ground truth G1, G2 and detections TP (0.9), FP (0.8), TP (0.7):
# precision 1, 1/2, 2/3 at recall 1/2, 1/2, 1. Class 2 has G3, G4 and FP (0.9), TP, TP:
# precision 0, 1/2, 2/3 at recall 0, 1/2, 1.
#   11point:     class 1 (6 x 1 + 5 x 2/3) / 11 = 28/33, class 2 11 x 2/3 / 11 = 2/3
#   MaxIntegral: class 1 1/2 x 1 + 1/2 x 2/3 = 5/6,     class 2 1/2 x 2/3 + 1/2 x 2/3 = 2/3
#   Integral:    class 1 1/2 x 1 + 0 + 1/2 x 2/3 = 5/6, class 2 0 + 1/2 x 1/2 + 1/2 x 2/3 = 7/12
CLI_MAP = {"11point": (28 / 33 + 2 / 3) / 2, "MaxIntegral": (5 / 6 + 2 / 3) / 2,
           "Integral": (5 / 6 + 7 / 12) / 2}
CLI_NET = """
layer { name: "det" type: "Input" top: "det" input_param { shape { dim: 1 dim: 1 dim: 6 dim: 7 } } }
layer { name: "gt" type: "Input" top: "gt" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 8 } } }
layer { name: "eval" type: "DetectionEvaluate" bottom: "det" bottom: "gt" top: "eval"
  detection_evaluate_param { num_classes: 3 background_label_id: 0 overlap_threshold: 0.5 } }
"""


@pytest.fixture
def cli_net(tmp_path):
    det = [[0, 1, 0.9, 0.0, 0.0, 0.2, 0.2], [0, 1, 0.8, 0.3, 0.3, 0.4, 0.4],
           [0, 1, 0.7, 0.5, 0.5, 0.7, 0.7], [0, 2, 0.9, 0.8, 0.8, 0.9, 0.9],
           [0, 2, 0.8, 0.0, 0.5, 0.2, 0.7], [0, 2, 0.7, 0.5, 0.0, 0.7, 0.2]]
    gt = [[0, 1, 0, 0.0, 0.0, 0.2, 0.2, 0], [0, 1, 1, 0.5, 0.5, 0.7, 0.7, 0],
          [0, 2, 0, 0.0, 0.5, 0.2, 0.7, 0], [0, 2, 1, 0.5, 0.0, 0.7, 0.2, 0]]
    np.savez(tmp_path / "in.npz", det=np.array(det, np.float32).reshape(1, 1, 6, 7),
             gt=np.array(gt, np.float32).reshape(1, 1, 4, 8))
    (tmp_path / "net.prototxt").write_text(CLI_NET)
    (tmp_path / "solver.prototxt").write_text('ap_version: "MaxIntegral"\n')
    return tmp_path


def _cli_test(path, *extra: str):
    import json

    from click.testing import CliRunner

    from hovcaffe.commands.test import cli

    res = CliRunner().invoke(cli, ["-model", str(path / "net.prototxt"), "--input-data",
                                   str(path / "in.npz"), "-iterations", "1", "--json", *extra])
    assert res.exit_code == 0, res.output
    return json.loads(res.output.strip().splitlines()[-1])


@pytest.mark.parametrize("version", sorted(CLI_MAP))
def test_hovcaffe_test_scores_a_detection_net_by_map(cli_net, version):
    out = _cli_test(cli_net, "--ap-version", version)
    assert out["ap_version"] == version
    assert out["outputs"]["eval"] == pytest.approx(CLI_MAP[version], abs=1e-6)


def test_hovcaffe_test_takes_ap_version_from_the_solver_else_ssd_default(cli_net):
    assert _cli_test(cli_net, "-solver", str(cli_net / "solver.prototxt"))["ap_version"] == \
        "MaxIntegral"
    out = _cli_test(cli_net)
    assert out["ap_version"] == "Integral"  # SolverParameter's default, as SSD
    assert out["outputs"]["eval"] == pytest.approx(CLI_MAP["Integral"], abs=1e-6)


def test_the_command_lists_the_scorings_ap_versions():
    from hovcaffe.commands.test import AP_VERSIONS as listed
    from hovcaffe.training.detection_scoring import AP_VERSIONS

    assert listed == AP_VERSIONS


def test_hovcaffe_test_refuses_a_detection_net_with_other_outputs(cli_net):
    from click.testing import CliRunner

    from hovcaffe.commands.test import cli
    from hovcaffe.errors import NetDefinitionError

    (cli_net / "net.prototxt").write_text(CLI_NET + 'layer { name: "x" type: "Power" '
                                          'bottom: "gt" top: "x" }\n')
    res = CliRunner().invoke(cli, ["-model", str(cli_net / "net.prototxt"), "--input-data",
                                   str(cli_net / "in.npz"), "-iterations", "1"])
    assert isinstance(res.exception, NetDefinitionError) and res.exception.exit_code == 2
    assert "['x'] do not come from DetectionEvaluate" in str(res.exception)
