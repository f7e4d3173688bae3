"""`hovcaffe train` of a small SegNet-basic-style net on generated image/label PNGs.

The net has SegNet's pieces: a DenseImageData layer (mirror on, list shuffled), BN layers,
pooling with a switch (mask) top and Upsample layers driven by those masks, and a per-pixel
SoftmaxWithLoss. The data are 24 x 32 noisy images with a red rectangle (class 1) and a green
disc (class 2) on background (class 0).
"""
from __future__ import annotations

import csv

import cv2
import numpy as np
from click.testing import CliRunner

from hovcaffe.cli import main

BN = 'bn_param { scale_filler { type: "constant" value: 1 } shift_filler { type: "constant" value: 0.001 } }'


def conv_bn_relu(name: str, bottom: str, out: int) -> str:
    return f"""
layer {{ name: "{name}" type: "Convolution" bottom: "{bottom}" top: "{name}"
  convolution_param {{ num_output: {out} kernel_size: 3 pad: 1 weight_filler {{ type: "msra" }} }} }}
layer {{ name: "{name}_bn" type: "BN" bottom: "{name}" top: "{name}" {BN} }}
layer {{ name: "{name}_relu" type: "ReLU" bottom: "{name}" top: "{name}" }}"""


def data_layer(phase: str, source: str, extra: str) -> str:
    return f"""
layer {{ name: "data" type: "DenseImageData" top: "data" top: "label" include {{ phase: {phase} }}
  transform_param {{ scale: 0.0078125 mean_value: 128 }}
  dense_image_data_param {{ source: "{source}" batch_size: 4 {extra} }} }}"""


NET = ('name: "segnet_tiny"' + data_layer("TRAIN", "train.txt", "shuffle: true mirror: true")
       + data_layer("TEST", "test.txt", "") + conv_bn_relu("conv1", "data", 8) + """
layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" top: "pool1_mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }""" + conv_bn_relu("conv2", "pool1", 16) + """
layer { name: "pool2" type: "Pooling" bottom: "conv2" top: "pool2" top: "pool2_mask"
  pooling_param { pool: MAX kernel_size: 2 stride: 2 } }
layer { name: "upsample2" type: "Upsample" bottom: "pool2" bottom: "pool2_mask" top: "up2"
  upsample_param { scale: 2 } }""" + conv_bn_relu("conv2_D", "up2", 8) + """
layer { name: "upsample1" type: "Upsample" bottom: "conv2_D" bottom: "pool1_mask" top: "up1"
  upsample_param { scale: 2 } }""" + conv_bn_relu("conv1_D", "up1", 8) + """
layer { name: "conv_classifier" type: "Convolution" bottom: "conv1_D" top: "conv_classifier"
  convolution_param { num_output: 3 kernel_size: 1 weight_filler { type: "msra" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "conv_classifier" bottom: "label" top: "loss" }
layer { name: "accuracy" type: "Accuracy" bottom: "conv_classifier" bottom: "label" top: "accuracy"
  include { phase: TEST } }
""")

SOLVER = """net: "net.prototxt"
test_iter: 2
test_interval: 40
base_lr: 0.05
lr_policy: "fixed"
momentum: 0.9
weight_decay: 0.0005
display: 10
max_iter: 80
snapshot_prefix: "segnet_tiny"
random_seed: 1
"""


def write_segmentation_set(folder, name: str, count: int, rng) -> None:
    lines = []
    h, w = 24, 32
    yy, xx = np.mgrid[0:h, 0:w]
    for i in range(count):
        image = rng.integers(0, 90, (h, w, 3)).astype(np.uint8)
        label = np.zeros((h, w), np.uint8)
        y, x = rng.integers(0, h - 8), rng.integers(0, w - 10)
        rh, rw = rng.integers(6, 9), rng.integers(6, 11)
        image[y:y + rh, x:x + rw] = (40, 40, 220)
        label[y:y + rh, x:x + rw] = 1
        disc = (yy - rng.integers(5, h - 5)) ** 2 + (xx - rng.integers(5, w - 5)) ** 2 <= rng.integers(3, 6) ** 2
        image[disc] = (60, 210, 60)
        label[disc] = 2
        image = np.clip(image.astype(int) + rng.integers(-30, 30, image.shape), 0, 255).astype(np.uint8)
        cv2.imwrite(str(folder / f"{name}_{i}.png"), image)
        cv2.imwrite(str(folder / f"{name}_{i}_label.png"), label)
        lines.append(f"{name}_{i}.png {name}_{i}_label.png")
    (folder / f"{name}.txt").write_text("\n".join(lines) + "\n")


def test_segnet_style_net_learns_from_a_dense_image_list(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    write_segmentation_set(tmp_path, "train", 32, rng)
    write_segmentation_set(tmp_path, "test", 8, rng)
    (tmp_path / "net.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    monkeypatch.chdir(tmp_path)
    result = CliRunner().invoke(main, ["train", "-solver", "solver.prototxt", "--no-progress"])
    assert result.exit_code == 0, result.output
    with open(tmp_path / "segnet_tiny_metrics.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    losses = [float(r["loss"]) for r in rows]
    assert len(losses) == 81
    assert np.mean(losses[-10:]) < 0.3 * np.mean(losses[:3])       # about 1.1 -> 0.1
    tested = {int(r["iteration"]): float(r["test/accuracy"]) for r in rows if r["test/accuracy"]}
    assert sorted(tested) == [0, 40, 80]
    assert tested[80] > 0.85 and tested[80] > tested[0] + 0.3
    assert (tmp_path / "segnet_tiny_iter_80.caffemodel").exists()

