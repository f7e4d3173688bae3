"""Distributed detection on the ``torch`` backend (one Spark barrier stage, torch.distributed
Gloo): 2 ranks of a tiny SSD net end with identical weights, BatchNorm statistics included, and
follow the trajectory of one process with the double batch.

The net (32 x 32 images of examples/detection/shapes.py, two conv layers, SSD heads on the 8x8
and 4x4 maps, MultiBoxLoss) is built so that the double-batch equality is exact up to float32
summation order:

* no augmentation (no sampler, distortion, expansion or mirror): the rank-keyed random draws
  play no part, and rank r's rows r, r+2, ... make with the other rank's the batch of one process;
* ``normalization: BATCH_SIZE``: each rank divides its summed loss by its 4 images, so the mean of
  the ranks' gradients is the 8-image gradient (VALID would divide by each rank's own number of
  matches, as multi-GPU Caffe does, and the two would differ);
* the BatchNorm sits on a side branch (into Silence): its statistics still accumulate every
  iteration on every rank, which is what used to make the ranks end with different weights,
  but its batch statistics do not feed the loss (a BatchNorm on the main path normalises each
  rank by its own 4 images, so its gradient is not that of 8).

The ranks average the statistics (`DistributedHooks.sync_statistics`): mean_sum and the scale
factor then equal one process's with the double batch (the batch mean of 8 is the mean of the
two means of 4); var_sum is the mean of the ranks' variances, which leaves out the spread
between the two ranks' means, so only its equality across ranks is checked.
Tolerances as in test_torch_backend.py: rtol 1e-5 on losses, atol 1e-6 on weights.
"""
from __future__ import annotations

import logging
import sys
from pathlib import Path

import numpy as np
import pytest

from test_dist_support import REPO, caffemodel_weights

pytestmark = [pytest.mark.spark, pytest.mark.distributed]

ITERS = 6
SIZE = 32
CLASSES = 4  # background + square, disc, triangle


def _conv(name: str, bottom: str, out: int, k: int, stride: int = 1) -> str:
    return (f'layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"\n'
            f'  param {{ lr_mult: 1 decay_mult: 1 }} param {{ lr_mult: 2 decay_mult: 0 }}\n'
            f'  convolution_param {{ num_output: {out} kernel_size: {k} pad: {k // 2} '
            f'stride: {stride} weight_filler {{ type: "xavier" }} '
            f'bias_filler {{ type: "constant" value: 0.1 }} }} }}\n')


def _relu(name: str) -> str:
    return f'layer {{ name: "{name}/relu" type: "ReLU" bottom: "{name}" top: "{name}" }}\n'


def net_text(source: str, batch: int, train: bool) -> str:
    """The tiny SSD: data, conv1 (8x8), conv2 (4x4), heads on both, loss or evaluation."""
    text = (f'name: "TinySSD"\nlayer {{ name: "data" type: "AnnotatedData" top: "data" top: "label"\n'
            f'  transform_param {{ scale: 0.0078125 mean_value: 127.5 mean_value: 127.5 '
            f'mean_value: 127.5 }}\n  data_param {{ source: "{source}" batch_size: {batch} }} }}\n')
    text += _conv("conv1", "data", 8, 3, 4) + _relu("conv1")
    text += _conv("conv2", "conv1", 16, 3, 2) + _relu("conv2")
    if train:  # the side-branch BatchNorm (see the module docstring)
        text += ('layer { name: "side/bn" type: "BatchNorm" bottom: "conv2" top: "side" '
                 'param { lr_mult: 0 } param { lr_mult: 0 } param { lr_mult: 0 } '
                 'batch_norm_param { moving_average_fraction: 0.9 } }\n'
                 'layer { name: "side/silence" type: "Silence" bottom: "side" }\n')
    heads = (("conv1", 6, 14), ("conv2", 14, 26))
    for feature, lo, hi in heads:
        for kind, per in (("loc", 4), ("conf", CLASSES)):
            head = f"{feature}_mbox_{kind}"
            text += _conv(head, feature, 3 * per, 3)  # 3 priors: min, max, aspect ratio 2
            text += (f'layer {{ name: "{head}_perm" type: "Permute" bottom: "{head}" '
                     f'top: "{head}_perm" permute_param {{ order: 0 order: 2 order: 3 order: 1 }} }}\n'
                     f'layer {{ name: "{head}_flat" type: "Flatten" bottom: "{head}_perm" '
                     f'top: "{head}_flat" flatten_param {{ axis: 1 }} }}\n')
        text += (f'layer {{ name: "{feature}_prior" type: "PriorBox" bottom: "{feature}" '
                 f'bottom: "data" top: "{feature}_prior" prior_box_param {{ min_size: {lo} '
                 f'max_size: {hi} aspect_ratio: 2 flip: false variance: 0.1 variance: 0.1 '
                 f'variance: 0.2 variance: 0.2 }} }}\n')
    for kind, suffix, axis in (("loc", "_mbox_loc_flat", 1), ("conf", "_mbox_conf_flat", 1),
                               ("prior", "_prior", 2)):
        bottoms = " ".join(f'bottom: "{f}{suffix}"' for f, _, _ in heads)
        text += (f'layer {{ name: "mbox_{kind}" type: "Concat" {bottoms} top: "mbox_{kind}" '
                 f'concat_param {{ axis: {axis} }} }}\n')
    if train:
        return text + (
            'layer { name: "mbox_loss" type: "MultiBoxLoss" bottom: "mbox_loc" bottom: "mbox_conf" '
            'bottom: "mbox_prior" bottom: "label" top: "mbox_loss"\n'
            '  propagate_down: true propagate_down: true propagate_down: false propagate_down: false\n'
            '  loss_param { normalization: BATCH_SIZE }\n'
            f'  multibox_loss_param {{ num_classes: {CLASSES} overlap_threshold: 0.5 '
            'neg_pos_ratio: 3 neg_overlap: 0.5 code_type: CENTER_SIZE mining_type: MAX_NEGATIVE } }\n')
    return text + (
        'layer { name: "conf_reshape" type: "Reshape" bottom: "mbox_conf" top: "conf_reshape" '
        f'reshape_param {{ shape {{ dim: 0 dim: -1 dim: {CLASSES} }} }} }}\n'
        'layer { name: "conf_softmax" type: "Softmax" bottom: "conf_reshape" top: "conf_softmax" '
        'softmax_param { axis: 2 } }\n'
        'layer { name: "conf_flat" type: "Flatten" bottom: "conf_softmax" top: "conf_flat" }\n'
        'layer { name: "detection_out" type: "DetectionOutput" bottom: "mbox_loc" '
        'bottom: "conf_flat" bottom: "mbox_prior" top: "detection_out"\n'
        f'  detection_output_param {{ num_classes: {CLASSES} nms_param {{ nms_threshold: 0.45 '
        'top_k: 50 } code_type: CENTER_SIZE keep_top_k: 20 confidence_threshold: 0.01 } }\n'
        'layer { name: "detection_eval" type: "DetectionEvaluate" bottom: "detection_out" '
        f'bottom: "label" top: "detection_eval"\n  detection_evaluate_param {{ num_classes: {CLASSES} '
        'overlap_threshold: 0.5 } }\n')


def make_detection_workspace(root: Path, *, batch: int, iters: int = ITERS, train: int = 48,
                             test: int = 16):
    """Shapes as Parquet plus the tiny net and an SGD solver; returns a TrainConfig factory."""
    sys.path.insert(0, str(REPO / "examples" / "detection"))
    import shapes

    from hovcaffe.data.convert import convert_source, make_source

    raw = root / "raw"
    if not (raw / "labelmap.prototxt").exists():
        shapes.write(str(raw), train, test, SIZE, seed=5)
    data = {}
    for split in ("train", "test"):
        dest = root / "data" / split
        if not dest.exists():
            convert_source(make_source("annoset", str(raw / f"{split}.json"),
                                       label_map=str(raw / "labelmap.prototxt")), str(dest))
        data[split] = dest
    (root / f"train_{batch}.prototxt").write_text(net_text(str(data["train"]), batch, True))
    (root / "test.prototxt").write_text(net_text(str(data["test"]), 8, False))
    solver = root / f"solver_{batch}.prototxt"
    solver.write_text(
        f'train_net: "train_{batch}.prototxt"\ntest_net: "test.prototxt"\ntest_iter: 2\n'
        f'test_interval: {iters}\ntest_initialization: false\nbase_lr: 0.01\nmomentum: 0.9\n'
        f'weight_decay: 0.0005\nlr_policy: "fixed"\nmax_iter: {iters}\ndisplay: 0\n'
        f'snapshot: {iters}\nsnapshot_prefix: "{root}/snap_{batch}"\nrandom_seed: 3\n'
        'eval_type: "detection"\nap_version: "11point"\n')

    def config(**overrides):
        from hovcaffe.caffe.io import read_solver
        from hovcaffe.training.loop import TrainConfig

        return TrainConfig(solver=read_solver(str(solver)), solver_path=str(solver),
                           handle_signals=False, **overrides)
    return config


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    return tmp_path_factory.mktemp("dist-detection")


@pytest.fixture(scope="module")
def torch_run(root):
    from hovcaffe.distributed.runner import run_distributed
    from hovcaffe.options import DistributedOptions
    from hovcaffe.utils.spark import get_spark

    config = make_detection_workspace(root, batch=4)
    spark = get_spark("local[2]", app_name="hovcaffe-test-dist-detection")
    try:
        result = run_distributed(config(), DistributedOptions(num_proc=2, backend="torch",
                                                              log_level=logging.WARNING),
                                 tensorboard=False, spark=spark)
    finally:
        spark.stop()
    return result


@pytest.fixture(scope="module")
def single_run(root):
    from hovcaffe.training.loop import Trainer

    config = make_detection_workspace(root, batch=8)
    trainer = Trainer(config())
    return trainer, trainer.solve()


def test_two_ranks_end_with_identical_weights_and_statistics(root, torch_run):
    result = torch_run
    assert result.iterations == ITERS and [r.rank for r in result.ranks] == [0, 1]
    # the checksum covers every blob of the net (BatchNorm statistics included); ranks that
    # kept their own statistics differed here
    assert len({r.checksum for r in result.ranks}) == 1, [r.checksum for r in result.ranks]
    blobs = caffemodel_weights(str(root / f"snap_4_iter_{ITERS}.caffemodel"))
    assert float(blobs["side/bn"][2][0]) > 0  # statistics accumulated: scale factor s > 0
    # the gathered test pass ran on both ranks and is a mean over classes of APs
    assert 0.0 <= result.test_scores[ITERS]["test/detection_eval"] <= 1.0


def test_two_ranks_follow_one_process_with_the_double_batch(root, torch_run, single_run):
    trainer, one = single_run
    np.testing.assert_allclose(torch_run.mean_losses, one.losses, rtol=1e-5, atol=1e-7)
    blobs = caffemodel_weights(str(root / f"snap_4_iter_{ITERS}.caffemodel"))
    for item in trainer.learnables:
        layer, index = item.name.rsplit("/", 1)[0], int(item.name.rsplit("/", 1)[1])
        if layer == "side/bn" and index == 1:
            continue  # var_sum: the ranks' mean variance, not the 8-image one (module docstring)
        np.testing.assert_allclose(item.param.detach().numpy(),
                                   blobs[layer][index].reshape(item.param.shape),
                                   atol=1e-6, rtol=1e-6, err_msg=item.name)
