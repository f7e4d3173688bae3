"""CLI paths no other test takes: HOVCAFFE_DEBUG=1 tracebacks, `train --tensorboard DIR` (read back
with TensorBoard's own EventAccumulator), `doctor --no-spark --json`."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from conftest import ORACLE

CASE = ORACLE / "train" / "sgd_inv"


def hovcaffe(*args: str, cwd=None, **env: str) -> subprocess.CompletedProcess:
    full_env = {k: v for k, v in os.environ.items() if k != "HOVCAFFE_DEBUG"}
    full_env.update(OMP_NUM_THREADS="1", **env)
    return subprocess.run([sys.executable, "-m", "hovcaffe.cli", *args], capture_output=True,
                          text=True, timeout=300, env=full_env, cwd=cwd)


@pytest.mark.parametrize("debug", ["", "0", "1"])
def test_hovcaffe_debug_shows_the_traceback_only_when_set(tmp_path, debug):
    bad = tmp_path / "bad.prototxt"
    bad.write_text('layer { name: "a" type: "ReLU" bottom: "nothing" top: "a" }\n')
    out = hovcaffe("inspect", str(bad), HOVCAFFE_DEBUG=debug)
    assert out.returncode == (1 if debug == "1" else 2)  # the traceback is Python's own exit
    message = "Unknown bottom blob 'nothing'"
    if debug == "1":
        assert "Traceback (most recent call last)" in out.stderr
        assert "NetDefinitionError" in out.stderr and message in out.stderr
    else:
        lines = out.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hovcaffe: error: ") and message in lines[0], out.stderr


def test_train_tensorboard_dir_holds_the_losses_of_the_metrics_csv(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    solver = tmp_path / "solver.prototxt"
    solver.write_text((CASE / "solver.prototxt").read_text().replace("max_iter: 40", "max_iter: 6")
                      .replace("test_interval: 20", "test_interval: 3"))
    board = tmp_path / "board"
    out = hovcaffe("train", "-solver", str(solver), "--snapshot-prefix", str(tmp_path / "snap"),
                   "--metrics-csv", str(tmp_path / "m.csv"), "--tensorboard", str(board), "--no-progress",
                   cwd=CASE)
    assert out.returncode == 0, out.stderr
    assert list(board.glob("events.out.tfevents*")), list(board.iterdir())
    events = EventAccumulator(str(board))
    events.Reload()
    tags = events.Tags()["scalars"]
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    losses = {int(r["iteration"]): float(r["loss"]) for r in rows if r["loss"]}
    assert sorted(losses) == list(range(7))  # a row per update, and the final loss
    loss_tag = next(t for t in tags if t.endswith("/loss") and not t.startswith("test"))
    logged = {e.step: e.value for e in events.Scalars(loss_tag)}
    assert sorted(logged) == sorted(losses)
    np.testing.assert_allclose([logged[i] for i in sorted(logged)], [losses[i] for i in sorted(losses)],
                               rtol=1e-6)
    tested = {int(r["iteration"]): float(r["test/accuracy"]) for r in rows if r.get("test/accuracy")}
    assert sorted(tested) == [0, 3, 6]
    board_acc = {e.step: e.value for e in events.Scalars("test/accuracy")}
    assert board_acc == pytest.approx(tested)


def test_doctor_json_reports_the_installed_versions():
    """`doctor --no-spark --json`: one record per check, versions as the packages report them."""
    import numpy
    import pyarrow
    import torch

    out = hovcaffe("doctor", "--no-spark", "--json")
    report = json.loads(out.stdout)
    checks: dict = {}
    for check in report:  # a launcher's check may reuse a package's name after it
        checks.setdefault(check["name"], check)
    assert set(checks["python"]) == {"name", "ok", "detail", "fix"}
    assert checks["torch"]["detail"].startswith(torch.__version__ + " ")
    assert checks["numpy"]["detail"] == numpy.__version__
    assert checks["pyarrow"]["detail"] == pyarrow.__version__
    assert checks["python"]["detail"].startswith("%d.%d.%d " % sys.version_info[:3])
    # the exit status is the checks' verdict, and every failed check says how to fix it
    assert out.returncode == (0 if all(c["ok"] for c in report) else 1), out.stderr
    assert all(c["fix"] for c in report if not c["ok"])
