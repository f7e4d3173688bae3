"""`hovcaffe train|test|time|plot` end to end on real files.

The zoo LeNet (`tests/zoo/bvlc/mnist/lenet_solver.prototxt` and its `lenet_train_test.prototxt`,
both unmodified) reads LMDB `Data` layers. The test copies the net file to
`<tmp>/examples/mnist/` - where the solver's Caffe-root-relative `net:` path points when the
current directory is `<tmp>`, as with `caffe train` run from the Caffe root - and replaces the data
with a small generated HDF5 set through `--train-data/--test-data` (the layers' batch sizes and
`scale: 0.00390625` still apply). `-iterations 60` and `--solver-set` shorten the run.
"""
from __future__ import annotations

import csv
import json
import shutil

import h5py
import numpy as np
import pytest
from click.testing import CliRunner

from conftest import ORACLE, ZOO
from hovcaffe.caffe.io import read_caffemodel, read_solverstate
from hovcaffe.cli import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def write_mnist_like(folder, n_train=640, n_test=200, seed=0):
    """10 random binary 28x28 templates + heavy noise, pixel values 0-255 like MNIST bytes."""
    rng = np.random.default_rng(seed)
    templates = (rng.random((10, 1, 28, 28)) > 0.75).astype(np.float32)
    for name, n in (("train", n_train), ("test", n_test)):
        y = rng.integers(0, 10, n)
        x = np.clip(templates[y] * 160 + rng.normal(40, 70, (n, 1, 28, 28)), 0, 255)
        with h5py.File(folder / f"{name}.h5", "w") as fh:
            fh["data"] = x.astype(np.float32)
            fh["label"] = y.astype(np.float32)
        (folder / f"{name}_list.txt").write_text(f"{name}.h5\n")


def read_csv(path):
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


@pytest.fixture(scope="module")
def lenet_run(tmp_path_factory):
    """One 60-iteration `hovcaffe train` of the zoo LeNet; returns (folder, CliRunner result)."""
    root = tmp_path_factory.mktemp("lenet")
    (root / "examples" / "mnist").mkdir(parents=True)
    shutil.copy(ZOO / "bvlc" / "mnist" / "lenet_train_test.prototxt", root / "examples" / "mnist")
    write_mnist_like(root)
    mp = pytest.MonkeyPatch()
    mp.chdir(root)
    try:
        result = CliRunner().invoke(main, [
            "train", "-solver", str(ZOO / "bvlc" / "mnist" / "lenet_solver.prototxt"),
            "--train-data", "train_list.txt", "--test-data", "test_list.txt", "-iterations", "60",
            "--solver-set", "test_interval: 20 test_iter: 2 snapshot: 30 display: 20",
            "--no-progress"])
    finally:
        mp.undo()
    return root, result


def test_zoo_lenet_trains_and_snapshots(lenet_run):
    root, result = lenet_run
    assert result.exit_code == 0, result.output
    prefix = root / "examples" / "mnist" / "lenet"
    for it in (30, 60):
        assert read_solverstate(f"{prefix}_iter_{it}.solverstate").iter == it
        assert any(len(l.blobs) for l in read_caffemodel(f"{prefix}_iter_{it}.caffemodel").layer)
        assert json.loads(open(f"{prefix}_iter_{it}.hovcaffe.json").read())["iter"] == it
    rows = read_csv(f"{prefix}_metrics.csv")
    assert list(rows[0])[:5] == ["iteration", "lr", "loss", "smoothed_loss", "seconds"]
    assert [int(r["iteration"]) for r in rows] == list(range(61))
    losses = [float(r["loss"]) for r in rows]
    assert np.mean(losses[-10:]) < 0.5 * np.mean(losses[:5])  # the loss falls
    tested = {int(r["iteration"]): float(r["test/accuracy"]) for r in rows if r["test/accuracy"]}
    assert sorted(tested) == [0, 20, 40, 60]
    assert tested[60] > tested[0] + 0.3
    assert list((root / "examples" / "mnist" / "lenet_tensorboard").glob("events.out.tfevents*"))


def test_plot_renders_png(lenet_run, tmp_path, monkeypatch):
    from test_plot import drawn_figure

    root, _ = lenet_run
    out = tmp_path / "curves.png"
    seen = drawn_figure(monkeypatch)
    csv_path = root / "examples/mnist/lenet_metrics.csv"
    result = CliRunner().invoke(main, ["plot", str(csv_path), "-o", str(out)])
    assert result.exit_code == 0, result.output
    data = out.read_bytes()
    assert data[:8] == PNG_MAGIC
    rows = read_csv(str(csv_path))
    loss, test, _ = seen["panels"]
    x, y = loss["lines"]["train loss"]
    assert x == [int(r["iteration"]) for r in rows]
    np.testing.assert_allclose(y, [float(r["loss"]) for r in rows])
    x, y = test["lines"]["test/accuracy"]
    assert x == [0, 20, 40, 60]
    np.testing.assert_allclose(y, [float(r["test/accuracy"]) for r in rows if r["test/accuracy"]])
    import matplotlib.image
    height, width = matplotlib.image.imread(str(out)).shape[:2]
    assert width >= 600 and height >= 600


def test_test_command_reproduces_the_final_test(lenet_run, monkeypatch):
    root, _ = lenet_run
    monkeypatch.chdir(root)
    result = CliRunner().invoke(main, [
        "test", "-model", "examples/mnist/lenet_train_test.prototxt",
        "-weights", "examples/mnist/lenet_iter_60.caffemodel", "-iterations", "2",
        "--test-data", "test_list.txt", "--json"])
    assert result.exit_code == 0, result.output
    got = json.loads(result.output.strip().splitlines()[-1])
    final = read_csv(root / "examples/mnist/lenet_metrics.csv")[-1]
    # the trainer's test at 60 read the same two batches (its cursor wrapped to row 0)
    assert got["outputs"]["accuracy"] == pytest.approx(float(final["test/accuracy"]), abs=1e-6)
    assert got["outputs"]["loss"] == pytest.approx(float(final["test/loss"]), rel=1e-5)


def test_time_command_reports_every_layer():
    result = CliRunner().invoke(main, ["time", "-model", str(ORACLE / "perf/lenet_b64.prototxt"),
                                       "-iterations", "2", "--json"])
    assert result.exit_code == 0, result.output
    timing = json.loads(result.output)
    assert list(timing["layers"]) == ["conv1", "pool1", "conv2", "pool2", "ip1", "relu1", "ip2",
                                      "loss"]
    assert timing["has_backward"]
    for name in ("conv1", "conv2", "ip1", "ip2"):
        assert timing["layers"][name]["forward_ms"] > 0 and timing["layers"][name]["backward_ms"] > 0
    layer_sum = sum(t["forward_ms"] for t in timing["layers"].values())
    assert layer_sum <= timing["forward_ms"] * 1.0001


def test_missing_input_data_is_a_user_error(tmp_path):
    solver = tmp_path / "s.prototxt"
    solver.write_text(f'net: "{ORACLE / "perf/lenet_b64.prototxt"}"\nbase_lr: 0.01\n'
                      'lr_policy: "fixed"\nmax_iter: 1\n')
    result = CliRunner().invoke(main, ["train", "-solver", str(solver), "--no-progress"])
    assert result.exit_code == 2
    assert "--input-data" in result.output


def test_time_on_a_net_without_layers_is_a_user_error(tmp_path):
    (tmp_path / "empty.prototxt").write_text('name: "empty"\n')
    result = CliRunner().invoke(main, ["time", "-model", str(tmp_path / "empty.prototxt")])
    assert result.exit_code == 2 and "the net has no layers" in result.output


@pytest.mark.parametrize("flags, named", [
    (["-master", "local[2]"], "-master"),
    (["-remote", "sc://127.0.0.1:15002"], "-remote"),
    (["-model", "{tmp}/out/final.caffemodel", "-resume"], "-model, -resume"),
    (["-nics", "lo"], "-nics"),
])
def test_distributed_options_without_num_proc_are_a_usage_error(tmp_path, flags, named):
    """Spark/rank options on a local run would be silently ignored; the command refuses them
    before reading anything, naming each one and the flag that makes the run distributed."""
    solver = tmp_path / "s.prototxt"
    solver.write_text(f'net: "{ORACLE / "perf/lenet_b64.prototxt"}"\nbase_lr: 0.01\n'
                      'lr_policy: "fixed"\nmax_iter: 1\n')
    flags = [f.format(tmp=tmp_path) for f in flags]
    result = CliRunner().invoke(main, ["train", "-solver", str(solver), "--no-progress", *flags])
    assert result.exit_code == 2, result.output
    assert f"{named}: distributed-training option(s); add -num-proc N" in result.output
    assert not (tmp_path / "out").exists()
