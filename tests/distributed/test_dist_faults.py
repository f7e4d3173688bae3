"""Failures of a distributed run, through the real command line (launch.py, as spark-submit runs it):
an exception on one rank, a rank killed with SIGKILL and the -resume that follows, and more ranks
than Spark has slots. Each case is a fresh process with its own local Spark."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import time

import pytest

from test_dist_support import REPO, cli_env, launch_cmd, make_workspace, run_launch

pytestmark = [pytest.mark.spark, pytest.mark.distributed]

MAX_ITER = 60


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("faults"), max_iter=MAX_ITER, snapshot=20,
                          test_interval=30)


def test_exception_on_rank_1_fails_the_job_and_names_it(ws):
    # The timeout is the bound: a hang (ranks waiting forever in an allreduce) fails the test.
    proc = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "2", timeout=120,
                      HOVCAFFE_FAULT="raise:1:5")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("hovcaffe: error:")]
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "rank 1 failed: InjectedFault: injected failure on rank 1 at iteration 5" in errors[0]
    assert "trained to iteration" not in proc.stdout


def test_more_ranks_than_slots_is_a_preflight_error(ws):
    proc = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "3", timeout=120,
                      HOVCAFFE_SPARK_MASTER="local[2]")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert ("hovcaffe: error: 3 ranks need 3 concurrent Spark tasks, but only 2 fit "
            "(local[2]: 2 task thread(s)" in proc.stderr), proc.stderr[-2000:]
    assert "launching" not in proc.stderr  # no rank was started
    # the fix names launch.py's own flags for the option
    assert "lower -num-proc (or -clusterSize x -devices)" in proc.stderr, proc.stderr[-2000:]


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_rank_fails_the_job_and_resume_continues_from_the_last_snapshot(ws, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    snaps = ws.root / "snapshots"
    cmd = launch_cmd("-conf", str(ws.solver), "-train", "-num-proc", "2")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=cli_env(HOVCAFFE_PID_DIR=str(pids), HOVCAFFE_SLOW_ITER_S="0.15"))
    try:
        def rank1_iter() -> int:
            try:
                return int((pids / "rank1.iter").read_text())
            except (OSError, ValueError):
                return -1

        _wait_for(lambda: (snaps / "lenet_iter_20.solverstate").exists() and rank1_iter() >= 25,
                  240, "the iteration-20 snapshot")
        complete = sorted(int(p.name.split("_iter_")[1].split(".")[0])
                          for p in snaps.glob("lenet_iter_*.solverstate"))
        os.kill(int((pids / "rank1.pid").read_text()), signal.SIGKILL)
        out, err = proc.communicate(timeout=90)  # the bound on noticing the dead rank
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 1, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("hovcaffe: error:")]
    assert len(errors) == 1 and "rank 1" in errors[0] and "SIGKILL" in errors[0], err[-3000:]
    assert not (snaps / f"lenet_iter_{MAX_ITER}.solverstate").exists()

    scores = tmp_path / "test-output.txt"
    # CaffeOnSpark's -train -test: train, then score the TEST set with the trained weights
    resumed = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "2", "-resume",
                         "-test", "-output", str(scores), timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    last = complete[-1]
    assert f"resuming from {snaps}/lenet_iter_{last}.solverstate" in resumed.stderr, resumed.stderr[-2000:]
    assert f"trained to iteration {MAX_ITER} on 2 rank(s)" in resumed.stdout
    assert (snaps / f"lenet_iter_{MAX_ITER}.caffemodel").exists()
    rows = (snaps / "lenet_metrics.csv").read_text().splitlines()[1:]
    iterations = [int(r.split(",")[0]) for r in rows]
    # rows of the killed run after the snapshot were dropped; the resumed run wrote the rest
    assert iterations == list(range(MAX_ITER)) + [MAX_ITER]
    lines = dict(line.split(": ", 1) for line in scores.read_text().splitlines())
    assert set(lines) == {"accuracy", "loss"}  # the TEST net's outputs, one line each
    # the training's last test pass (test_iter x batch = all 200 TEST samples, split over the 2
    # ranks) and -test on Spark (the same samples, 2 shares) score the same weights alike
    final = re.search(r"test: test/accuracy = ([0-9.]+), test/loss = ([0-9.]+)", resumed.stdout)
    assert float(lines["accuracy"]) == pytest.approx(float(final.group(1)), abs=1e-5)
    assert float(lines["loss"]) == pytest.approx(float(final.group(2)), rel=1e-4)

    # The resume is exact: data positions, histories and counters continue, so the weights equal
    # those of a run that was never interrupted (same file, byte for byte).
    other = tmp_path / "uninterrupted" / "lenet.caffemodel"
    reference = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "2", "-model", str(other),
                           timeout=240)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert (snaps / f"lenet_iter_{MAX_ITER}.caffemodel").read_bytes() == other.read_bytes()


def test_a_script_without_a_main_guard_can_train_over_mpi(tmp_path):
    """Horovod starts mpirun through a multiprocessing *spawn* child, which re-imports the
    caller's script; a top-level call (no `if __name__ == "__main__":`) must still train."""
    import sys

    script = tmp_path / "train_at_top_level.py"
    script.write_text(f"""
import sys
sys.path.insert(0, {str(REPO / "benchmarks")!r})
import tempfile
from pathlib import Path
import scaling
from hovcaffe.utils.spark import get_spark
spark = get_spark("local[2]", app_name="no-main-guard")
folder = Path(tempfile.mkdtemp(dir={str(tmp_path)!r}))
net = scaling.PERF / scaling.NETS["lenet"][0]
result = scaling.run_hovcaffe(spark, net, scaling.make_inputs(net, folder), 2, 12, folder, connection="mpi")
print("trained, first iteration after", round(result["first_s"], 1), "s")
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=cli_env(), cwd=str(tmp_path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "trained, first iteration after" in proc.stdout
    assert "bootstrapping phase" not in proc.stderr
