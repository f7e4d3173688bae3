"""Failures of a distributed run, through the real command line (launch.py, as spark-submit runs it):
an exception on one rank, a rank killed with SIGKILL and the -resume that follows, and more ranks
than Spark has slots. Each case is a fresh process with its own local Spark. The faults fire at an
exact iteration (fault_support.py), so nothing here races a rank."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from fault_support import (KILL_FAULT, LAST_BEFORE_KILL, MAX_ITER, RAISE_FAULT,
                           assert_fails_naming_rank_1, error_lines, fault_workspace,
                           local_reference, snapshot_iterations)
from hovcaffe.distributed.faults import parse_fault
from test_dist_support import REPO, cli_env, run_launch

pytestmark = [pytest.mark.spark, pytest.mark.distributed]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return fault_workspace(tmp_path_factory.mktemp("faults"))


def test_the_fault_specs_parse():
    assert parse_fault("kill:1:7") == ("kill", 1, 7)
    with pytest.raises(ValueError, match="raise:RANK:ITER or kill:RANK:ITER"):
        parse_fault("kill:1")


def test_exception_on_rank_1_fails_the_job_and_names_it(ws):
    # The timeout is the bound: a hang (ranks waiting forever in an allreduce) fails the test.
    proc = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "2", timeout=120,
                      HOVCAFFE_FAULT=RAISE_FAULT)
    assert_fails_naming_rank_1(proc)


def test_more_ranks_than_slots_is_a_preflight_error(ws):
    proc = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "3", timeout=120,
                      HOVCAFFE_SPARK_MASTER="local[2]")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    assert ("hovcaffe: error: 3 ranks need 3 concurrent Spark tasks, but only 2 fit "
            "(local[2]: 2 task thread(s)" in proc.stderr), proc.stderr[-2000:]
    assert "launching" not in proc.stderr  # no rank was started
    # the fix names launch.py's own flags for the option
    assert "lower -num-proc (or -clusterSize x -devices)" in proc.stderr, proc.stderr[-2000:]


def test_killed_rank_fails_the_job_and_resume_continues_from_the_last_snapshot(ws, tmp_path):
    snaps = ws.root / "snapshots"
    pids = tmp_path / "pids"
    pids.mkdir()
    # rank 1 SIGKILLs itself when it starts iteration KILL_AT; the timeout bounds the noticing
    killed = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "2", timeout=120,
                        HOVCAFFE_FAULT=KILL_FAULT, HOVCAFFE_PID_DIR=str(pids))
    err = killed.stderr
    assert killed.returncode == 1, err[-3000:]
    errors = error_lines(err)
    assert len(errors) == 1 and "rank 1" in errors[0] and "SIGKILL" in errors[0], err[-3000:]
    assert "trained to iteration" not in killed.stdout
    assert snapshot_iterations(snaps) == [LAST_BEFORE_KILL]

    scores = tmp_path / "test-output.txt"
    # CaffeOnSpark's -train -test: train, then score the TEST set with the trained weights
    resumed = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "2", "-resume",
                         "-test", "-output", str(scores), timeout=240)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert (f"resuming from {snaps}/lenet_iter_{LAST_BEFORE_KILL}.solverstate"
            in resumed.stderr), resumed.stderr[-2000:]
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
    reference = local_reference(ws, tmp_path / "uninterrupted")
    assert (snaps / f"lenet_iter_{MAX_ITER}.caffemodel").read_bytes() == reference.read_bytes()


def test_a_script_without_a_main_guard_can_train_over_mpi(tmp_path):
    """Horovod starts mpirun through a multiprocessing *spawn* child, which re-imports the
    caller's script; a top-level call (no `if __name__ == "__main__":`) must still train."""

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
result = scaling.run_hovcaffe(spark, net, scaling.make_inputs(net, folder), 2, 4, folder, connection="mpi")
print("trained, first iteration after", round(result["first_s"], 1), "s")
""")
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=300,
                          env=cli_env(), cwd=str(tmp_path))
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    assert "trained, first iteration after" in proc.stdout
    assert "bootstrapping phase" not in proc.stderr
