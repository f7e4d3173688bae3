"""SIGHUP snapshots and continues; SIGTERM stops with a snapshot (exit 128+15); resume works."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import ORACLE
from hovcaffe.caffe.io import read_solverstate

CASE = ORACLE / "train" / "sgd_inv"


def wait_for(predicate, what, proc, timeout=120.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        if proc.poll() is not None:
            pytest.fail(f"training exited ({proc.returncode}) before {what}: "
                        f"{proc.stderr.read()}")
        time.sleep(0.1)
    proc.kill()
    pytest.fail(f"timed out waiting for {what}")


def data_rows(path):
    try:
        return max(0, len(path.read_text().splitlines()) - 1)
    except FileNotFoundError:
        return 0


@pytest.mark.skipif(not hasattr(signal, "SIGHUP"), reason="POSIX signals")
def test_sighup_snapshots_and_sigterm_stops_with_snapshot(tmp_path):
    solver = tmp_path / "solver.prototxt"
    solver.write_text((CASE / "solver.prototxt").read_text()
                      .replace("max_iter: 40", "max_iter: 1000000")
                      .replace("test_interval: 20", "test_interval: 1000000"))
    csv_path = tmp_path / "metrics.csv"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "hovcaffe.cli", "train", "-solver", str(solver),
         "--snapshot-prefix", str(tmp_path / "snap"), "--metrics-csv", str(csv_path),
         "--no-tensorboard", "--no-progress"],
        cwd=CASE, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(lambda: data_rows(csv_path) >= 3, "3 iterations", proc)
        proc.send_signal(signal.SIGHUP)
        wait_for(lambda: list(tmp_path.glob("snap_iter_*.solverstate")), "the SIGHUP snapshot",
                 proc)
        hup_snapshot = next(tmp_path.glob("snap_iter_*.solverstate"))
        hup_iter = read_solverstate(hup_snapshot).iter
        wait_for(lambda: data_rows(csv_path) >= hup_iter + 3, "training to go on", proc)
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert "stopped by SIGTERM" in err
    states = sorted(read_solverstate(p).iter for p in tmp_path.glob("snap_iter_*.solverstate"))
    stop_iter = states[-1]
    assert states[0] == hup_iter and stop_iter > hup_iter
    assert stop_iter == data_rows(csv_path)  # the snapshot holds every finished iteration
    assert (tmp_path / f"snap_iter_{stop_iter}.caffemodel").exists()
