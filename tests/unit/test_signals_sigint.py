"""SIGINT on a one-process `hovcaffe train`: the default stops after the iteration with a snapshot
and exit 130 (128 + SIGINT), and that snapshot resumes to the same place an uninterrupted run
reaches; `-sigint_effect none` ignores SIGINT; `-sigint_effect snapshot` snapshots and goes on."""
from __future__ import annotations

import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from test_snapshot_signals import CASE, data_rows, wait_for
from hovcaffe.caffe.io import blob_to_array, read_caffemodel, read_solverstate

pytestmark = pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def solver(tmp_path, max_iter: int):
    path = tmp_path / f"solver_{max_iter}.prototxt"
    path.write_text((CASE / "solver.prototxt").read_text()
                    .replace("max_iter: 40", f"max_iter: {max_iter}")
                    .replace("test_interval: 20", "test_interval: 1000000")
                    .replace("snapshot_after_train: false", "snapshot_after_train: true"))
    return path


def start(tmp_path, *extra: str, max_iter: int = 1_000_000, prefix: str = "snap"):
    csv_path = tmp_path / f"{prefix}_metrics.csv"
    proc = subprocess.Popen(
        [sys.executable, "-m", "hovcaffe.cli", "train", "-solver", str(solver(tmp_path, max_iter)),
         "--snapshot-prefix", str(tmp_path / prefix), "--metrics-csv", str(csv_path),
         "--no-tensorboard", "--no-progress", *extra],
        cwd=CASE, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, csv_path


def snapshots(tmp_path, prefix: str = "snap") -> list[int]:
    return sorted(read_solverstate(p).iter for p in tmp_path.glob(f"{prefix}_iter_*.solverstate"))


def weights(path) -> dict[str, list[np.ndarray]]:
    return {l.name: [blob_to_array(b) for b in l.blobs] for l in read_caffemodel(path).layer if len(l.blobs)}


def test_sigint_stops_with_exit_130_and_a_snapshot_that_resumes(tmp_path):
    proc, csv_path = start(tmp_path)
    try:
        wait_for(lambda: data_rows(csv_path) >= 3, "3 iterations", proc)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    assert "stopped by SIGINT" in err and "Traceback" not in err
    (stop,) = snapshots(tmp_path)
    assert stop == data_rows(csv_path) >= 3
    # resume to stop + 3 and compare with an uninterrupted run to the same iteration
    resumed = subprocess.run(
        [sys.executable, "-m", "hovcaffe.cli", "train", "-solver", str(solver(tmp_path, stop + 3)),
         "--snapshot-prefix", str(tmp_path / "snap"), "--no-tensorboard", "--no-progress",
         "-snapshot", str(tmp_path / f"snap_iter_{stop}.solverstate")],
        cwd=CASE, env=ENV, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert snapshots(tmp_path) == [stop, stop + 3]
    straight = subprocess.run(
        [sys.executable, "-m", "hovcaffe.cli", "train", "-solver", str(solver(tmp_path, stop + 3)),
         "--snapshot-prefix", str(tmp_path / "straight"), "--no-tensorboard", "--no-progress"],
        cwd=CASE, env=ENV, capture_output=True, text=True, timeout=300)
    assert straight.returncode == 0, straight.stderr
    got = weights(tmp_path / f"snap_iter_{stop + 3}.caffemodel")
    want = weights(tmp_path / f"straight_iter_{stop + 3}.caffemodel")
    assert got.keys() == want.keys() and got
    for name in want:
        assert len(got[name]) == len(want[name])
        for g, w in zip(got[name], want[name], strict=True):
            np.testing.assert_array_equal(g, w, err_msg=name)


def test_sigint_effect_none_ignores_sigint(tmp_path):
    proc, csv_path = start(tmp_path, "-sigint_effect", "none", "-sighup_effect", "stop")
    try:
        wait_for(lambda: data_rows(csv_path) >= 3, "3 iterations", proc)
        proc.send_signal(signal.SIGINT)
        seen = data_rows(csv_path)
        wait_for(lambda: data_rows(csv_path) >= seen + 3, "training to go on after SIGINT", proc)
        assert proc.poll() is None and snapshots(tmp_path) == []
        proc.send_signal(signal.SIGHUP)   # -sighup_effect stop ends it
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGHUP, err
    assert "stopped by SIGHUP" in err
    assert snapshots(tmp_path) == [data_rows(csv_path)]


def test_sigint_effect_snapshot_snapshots_and_goes_on(tmp_path):
    proc, csv_path = start(tmp_path, "-sigint_effect", "snapshot")
    try:
        wait_for(lambda: data_rows(csv_path) >= 3, "3 iterations", proc)
        proc.send_signal(signal.SIGINT)
        wait_for(lambda: snapshots(tmp_path), "the SIGINT snapshot", proc)
        (at,) = snapshots(tmp_path)
        wait_for(lambda: data_rows(csv_path) >= at + 3, "training to go on", proc)
        assert proc.poll() is None
        proc.send_signal(signal.SIGTERM)  # SIGTERM follows -sigint_effect too: another snapshot
        wait_for(lambda: len(snapshots(tmp_path)) == 2, "the SIGTERM snapshot", proc)
        assert proc.poll() is None
    finally:
        proc.kill()
        proc.communicate(timeout=60)
