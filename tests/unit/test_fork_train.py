"""`hovcaffe train` fine-tunes fork-layer nets on small generated data: a MobileNet v2-style
net (ConvolutionDepthwise, ReLU6) and a DenseNet-style net (pooling ceil_mode: false)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from hovcaffe import cli as cli_mod

BATCH, CLASSES, SIZE = 8, 4, 12


def bn(name: str, relu6: bool = True) -> str:
    act = f'layer {{ name: "{name}/relu" type: "ReLU6" bottom: "{name}" top: "{name}" }}\n'
    return (f'layer {{ name: "{name}/bn" type: "BatchNorm" bottom: "{name}" top: "{name}" }}\n'
            f'layer {{ name: "{name}/scale" type: "Scale" bottom: "{name}" top: "{name}" '
            'scale_param { bias_term: true } }\n' + (act if relu6 else ""))


def conv(name: str, bottom: str, num: int, k: int, stride: int = 1, pad: int = 0,
         type_: str = "Convolution") -> str:
    return (f'layer {{ name: "{name}" type: "{type_}" bottom: "{bottom}" top: "{name}" '
            f'convolution_param {{ num_output: {num} kernel_size: {k} stride: {stride} pad: {pad} '
            'bias_term: false weight_filler { type: "msra" } } }\n')


HEAD = (f'layer {{ name: "data" type: "Input" top: "data" top: "label" input_param {{ '
        f'shape {{ dim: {BATCH} dim: 3 dim: {SIZE} dim: {SIZE} }} shape {{ dim: {BATCH} }} }} }}\n')
TAIL = ('layer { name: "gap" type: "Pooling" bottom: "%s" top: "gap" '
        'pooling_param { pool: AVE global_pooling: true } }\n'
        f'layer {{ name: "fc" type: "InnerProduct" bottom: "gap" top: "fc" inner_product_param {{ '
        f'num_output: {CLASSES} weight_filler {{ type: "xavier" }} }} }}\n'
        'layer { name: "loss" type: "SoftmaxWithLoss" bottom: "fc" bottom: "label" top: "loss" }\n')

MOBILENET_V2_STYLE = (
    HEAD + conv("conv1", "data", 16, 3, 2, 1) + bn("conv1")
    + conv("expand", "conv1", 32, 1) + bn("expand")
    + conv("dw", "expand", 32, 3, 1, 1, "ConvolutionDepthwise") + bn("dw")
    + conv("project", "dw", 16, 1) + bn("project", relu6=False)
    + 'layer { name: "add" type: "Eltwise" bottom: "conv1" bottom: "project" top: "add" }\n'
    + TAIL % "add")

DENSENET_STYLE = (
    HEAD + conv("conv1", "data", 8, 3, 1, 1) + bn("conv1")
    + 'layer { name: "pool1" type: "Pooling" bottom: "conv1" top: "pool1" pooling_param { '
      "pool: MAX kernel_size: 3 stride: 2 pad: 1 ceil_mode: false } }\n"
    + conv("d1", "pool1", 4, 3, 1, 1) + bn("d1")
    + 'layer { name: "cat1" type: "Concat" bottom: "pool1" bottom: "d1" top: "cat1" }\n'
    + conv("d2", "cat1", 4, 3, 1, 1) + bn("d2")
    + 'layer { name: "cat2" type: "Concat" bottom: "cat1" bottom: "d2" top: "cat2" }\n'
    + conv("trans", "cat2", 8, 1) + bn("trans")
    + 'layer { name: "pool2" type: "Pooling" bottom: "trans" top: "pool2" pooling_param { '
      "pool: AVE kernel_size: 2 stride: 2 ceil_mode: false } }\n"
    + TAIL % "pool2")


def make_data(path: Path, n: int = 64) -> None:
    """Class k: a bright square in quadrant k of a noisy image (learnable in a few dozen steps)."""
    rng = np.random.RandomState(0)
    labels = np.arange(n) % CLASSES
    data = rng.rand(n, 3, SIZE, SIZE).astype(np.float32) * 0.5
    half = SIZE // 2
    for i, k in enumerate(labels):
        r, c = divmod(int(k), 2)
        data[i, :, r * half:(r + 1) * half, c * half:(c + 1) * half] += 1.0
    np.savez(path, data=data, label=labels.astype(np.float32))


@pytest.mark.parametrize("name,net_text", [("mobilenet_v2_style", MOBILENET_V2_STYLE),
                                           ("densenet_style", DENSENET_STYLE)])
def test_train_fork_net_learns(name, net_text, tmp_path: Path):
    (tmp_path / "net.prototxt").write_text(net_text)
    make_data(tmp_path / "data.npz")
    (tmp_path / "solver.prototxt").write_text(
        f'net: "{tmp_path / "net.prototxt"}"\nbase_lr: 0.1\nmomentum: 0.9\nweight_decay: 0.0001\n'
        f'lr_policy: "fixed"\nmax_iter: 40\ndisplay: 10\nsnapshot: 0\nrandom_seed: 1\n'
        f'snapshot_prefix: "{tmp_path / name}"\nsolver_mode: CPU\n')
    metrics = tmp_path / "metrics.csv"
    res = CliRunner().invoke(cli_mod.main, ["train", "--solver", str(tmp_path / "solver.prototxt"),
                                            "--input-data", str(tmp_path / "data.npz"),
                                            "--metrics-csv", str(metrics), "--no-tensorboard"])
    assert res.exit_code == 0, res.output
    with open(metrics) as fh:
        losses = [float(row["loss"]) for row in csv.DictReader(fh)]
    assert len(losses) >= 40   # iterations 0..40 (Caffe also reports the loss after the last)
    first, last = np.mean(losses[:5]), np.mean(losses[-5:])
    assert first > 1.0 and last < 0.25 * first, (first, last)
