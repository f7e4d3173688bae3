"""`hovcaffe job run` with real training (`hovcaffe train` on the oracle's small LeNet + HDF5 data).

Covers the issue's acceptance: a killed job resumes from its last snapshot and publishes the same
model as an uninterrupted run; a second start while one trains exits 3; a failing train step
exits 1 and publishes nothing.
"""
from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from conftest import ORACLE

pytestmark = pytest.mark.slow

CASE = ORACLE / "train" / "sgd_inv"
DATE = "2024-05-01"
ITERATIONS = 400
SNAPSHOT_EVERY = 50


def make_job(root: Path, name: str = "retrain", iterations: int = ITERATIONS) -> Path:
    """The oracle case copied under `root` (Caffe layout: case/ and _data/) plus a job spec."""
    case = root / "case"
    case.mkdir(parents=True)
    for f in ("solver.prototxt", "net_train_test.prototxt", "train_h5_list.txt", "test_h5_list.txt"):
        shutil.copy(CASE / f, case / f)
    shutil.copytree(ORACLE / "train" / "_data", root / "_data")
    spec = root / "job.yaml"
    spec.write_text(textwrap.dedent(f"""\
        name: {name}
        state_dir: state
        workdir: case
        env: {{OMP_NUM_THREADS: "1"}}
        steps:
          - name: train
            type: train
            solver: case/solver.prototxt
            iterations: {iterations}
            snapshot_every: {SNAPSHOT_EVERY}
            outputs:
              model: models/{{date}}/lenet.caffemodel
              metrics: models/{{date}}/metrics.csv
        """))
    return spec


def run(spec: Path, *extra: str, wait: bool = True):
    argv = [sys.executable, "-m", "hovcaffe.cli", "job", "run", str(spec), "--date", DATE, "--hide-output", *extra]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    if not wait:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(argv, capture_output=True, text=True, timeout=600, env=env)


def blobs(path: Path) -> dict[str, list[np.ndarray]]:
    from hovcaffe.caffe.io import blob_to_array, read_caffemodel

    return {layer.name: [blob_to_array(b) for b in layer.blobs]
            for layer in read_caffemodel(path).layer if len(layer.blobs)}


def losses(csv_path: Path) -> dict[int, float]:
    import csv

    return {int(r["iteration"]): float(r["loss"]) for r in csv.DictReader(csv_path.open()) if r.get("loss")}


def snapshot_dir(root: Path) -> Path:
    return root / "state" / "runs" / DATE / "work" / "train" / "snapshots"


def newest_snapshot(root: Path) -> int:
    its = [int(p.name.split("_iter_")[1].split(".")[0]) for p in snapshot_dir(root).glob("*.solverstate")
           if not p.name.startswith(".tmp-")]
    return max(its, default=0)


def wait_for_snapshot(root: Path, iteration: int, proc: subprocess.Popen, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if newest_snapshot(root) >= iteration:
            return
        if proc.poll() is not None:
            raise AssertionError(f"job ended early: {proc.communicate()}")
        time.sleep(0.01)
    raise AssertionError("no snapshot appeared")


def child_pid(root: Path) -> int:
    from hovcaffe.jobs.lock import read_lock

    for _ in range(500):
        info = read_lock(root / "state")
        if info and info.data.get("child"):
            return int(info.data["child"]["pid"])
        time.sleep(0.01)
    raise AssertionError("no step process recorded in the lock")


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("clean")
    out = run(make_job(root))
    assert out.returncode == 0, out.stderr
    return root


def assert_same_model(root: Path, clean: Path) -> None:
    published = root / "models" / DATE / "lenet.caffemodel"
    reference = clean / "models" / DATE / "lenet.caffemodel"
    got, want = blobs(published), blobs(reference)
    assert got.keys() == want.keys() and got
    for name in want:
        assert len(got[name]) == len(want[name]), name
        for g, w in zip(got[name], want[name], strict=True):
            np.testing.assert_array_equal(g, w, err_msg=f"layer {name}")


def test_clean_run_publishes_the_final_model_and_metrics(clean_run):
    model = clean_run / "models" / DATE / "lenet.caffemodel"
    snap = snapshot_dir(clean_run) / f"snap_iter_{ITERATIONS}.caffemodel"
    assert model.read_bytes() == snap.read_bytes()
    assert sorted(losses(clean_run / "models" / DATE / "metrics.csv")) == list(range(ITERATIONS + 1))
    summary = json.loads((clean_run / "state" / "runs" / DATE / "summary.json").read_text())
    train = summary["steps"][0]
    assert summary["status"] == "succeeded" and train["metrics"]["iterations"] == ITERATIONS
    csv_losses = losses(clean_run / "models" / DATE / "metrics.csv")
    assert train["metrics"]["final_loss"] == pytest.approx(csv_losses[max(csv_losses)])
    assert "test/accuracy" in train["metrics"]


def test_hard_crash_resumes_from_last_snapshot_and_publishes_the_same_model(tmp_path, clean_run):
    spec = make_job(tmp_path)
    first = run(spec, wait=False)
    wait_for_snapshot(tmp_path, SNAPSHOT_EVERY, first)
    child = child_pid(tmp_path)
    # While it trains, a second start is refused with exit 3.
    second = run(spec)
    assert second.returncode == 3 and f"pid {first.pid}" in second.stderr
    # Hard crash: runner and trainer die at once, no chance to snapshot.
    os.kill(child, signal.SIGKILL)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    resumed_from = newest_snapshot(tmp_path)
    assert SNAPSHOT_EVERY <= resumed_from < ITERATIONS, "the kill came too late to test a resume"
    assert not (tmp_path / "models" / DATE / "lenet.caffemodel").exists()

    out = run(spec)
    assert out.returncode == 0, out.stderr
    assert "taking over a stale lock" in out.stderr
    assert f"resuming from iteration {resumed_from}" in out.stderr
    assert_same_model(tmp_path, clean_run)
    # The merged metrics cover every iteration once, with the uninterrupted run's losses.
    got, want = losses(tmp_path / "models" / DATE / "metrics.csv"), losses(clean_run / "models" / DATE / "metrics.csv")
    assert sorted(got) == sorted(want)
    np.testing.assert_allclose([got[i] for i in sorted(got)], [want[i] for i in sorted(want)], rtol=1e-6)


def test_killing_only_the_runner_stops_training_with_a_snapshot(tmp_path, clean_run):
    spec = make_job(tmp_path)
    first = run(spec, wait=False)
    wait_for_snapshot(tmp_path, SNAPSHOT_EVERY, first)
    child = child_pid(tmp_path)
    os.kill(first.pid, signal.SIGKILL)
    first.communicate()
    from hovcaffe.jobs.lock import process_start_time

    deadline = time.time() + 60
    while process_start_time(child) is not None and time.time() < deadline:
        time.sleep(0.05)
    assert process_start_time(child) is None, "training outlived its killed runner"
    stopped_at = newest_snapshot(tmp_path)
    assert stopped_at < ITERATIONS, "the kill came too late to test a resume"
    out = run(spec)
    assert out.returncode == 0, out.stderr
    assert f"resuming from iteration {stopped_at}" in out.stderr
    assert_same_model(tmp_path, clean_run)


def test_failing_train_step_exits_1_and_publishes_nothing(tmp_path):
    spec = make_job(tmp_path, iterations=20)
    (tmp_path / "case" / "train_h5_list.txt").write_text("../_data/missing.h5\n")
    out = run(spec)
    assert out.returncode == 1
    assert "step train" in out.stderr and "exited with code" in out.stderr
    assert not (tmp_path / "models" / DATE / "lenet.caffemodel").exists()
    assert not (tmp_path / "models" / DATE / "metrics.csv").exists()
    summary = json.loads((tmp_path / "state" / "runs" / DATE / "summary.json").read_text())
    assert summary["status"] == "failed" and summary["steps"][0]["outcome"] == "failed"


def test_forced_train_step_starts_afresh_and_is_reproducible(tmp_path):
    spec = make_job(tmp_path, iterations=20)
    assert run(spec).returncode == 0
    first = blobs(tmp_path / "models" / DATE / "lenet.caffemodel")
    out = run(spec, "--force-step", "train")
    assert out.returncode == 0, out.stderr
    assert "training from scratch" in out.stderr and "resuming" not in out.stderr
    again = blobs(tmp_path / "models" / DATE / "lenet.caffemodel")
    assert first.keys() == again.keys() and first
    for name in first:
        assert len(first[name]) == len(again[name]), name
        for a, b in zip(first[name], again[name], strict=True):
            np.testing.assert_array_equal(a, b)


def opencv_accuracy(weights: Path) -> float:
    """Accuracy of `weights` on the whole test set (2 batches of 32 = test.h5's 64 samples), by
    OpenCV's Caffe importer running the net's deploy view (Input instead of HDF5Data, no loss)."""
    import cv2
    import h5py
    from google.protobuf import text_format

    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import read_net

    with h5py.File(ORACLE / "train" / "_data" / "test.h5", "r") as fh:
        data, labels = fh["data"][:], fh["label"][:]
    net = read_net(CASE / "net_train_test.prototxt")
    deploy = caffe_pb2.NetParameter(name=net.name)
    deploy.input.append("data")
    deploy.input_shape.add().dim.extend(data.shape)
    deploy.layer.extend(l for l in net.layer if l.type not in ("HDF5Data", "Accuracy", "SoftmaxWithLoss"))
    with tempfile.TemporaryDirectory() as folder:
        proto = Path(folder) / "deploy.prototxt"
        proto.write_text(text_format.MessageToString(deploy))
        cv_net = cv2.dnn.readNetFromCaffe(str(proto), str(weights))
    cv_net.setInput(data.astype(np.float32))
    logits = cv_net.forward("ip2")
    return float(np.mean(logits.argmax(axis=1) == labels))


SCORE_STEP = """\
  - name: score
    type: test
    model: case/net_train_test.prototxt
    weights: "{steps.train.outputs.model}"
    iterations: 2
    min_scores: {accuracy: %s}
    outputs:
      scores: models/{date}/scores.json
"""


def test_score_gate_blocks_publishing_and_passes_scores_through(tmp_path):
    spec = make_job(tmp_path, iterations=20)
    spec.write_text(spec.read_text() + SCORE_STEP % "1.01")  # an accuracy no model reaches
    out = run(spec)
    assert out.returncode == 1
    assert "accuracy = " in out.stderr and "required >= 1.01" in out.stderr
    models = tmp_path / "models" / DATE
    assert [p.name for p in models.iterdir() if not p.name.startswith(".tmp-")] == []  # only staged
    # Lower the bar: train is not run again (it finished), the score step is, and all is published.
    spec.write_text(spec.read_text().replace("accuracy: 1.01", "accuracy: 0.0"))
    out = run(spec)
    assert out.returncode == 0, out.stderr
    assert "step train: already finished" in out.stderr
    scores = json.loads((tmp_path / "models" / DATE / "scores.json").read_text())
    summary = json.loads((tmp_path / "state" / "runs" / DATE / "summary.json").read_text())
    assert summary["steps"][1]["metrics"]["scores"] == scores
    assert "loss" in scores
    assert scores["accuracy"] == pytest.approx(opencv_accuracy(tmp_path / "models" / DATE / "lenet.caffemodel"), abs=1e-6)
    assert (tmp_path / "models" / DATE / "lenet.caffemodel").exists()
