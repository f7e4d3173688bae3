"""The ``torch`` backend through the real command line (launch.py, a fresh process and local
Spark each): an exception on rank 1, a rank killed with SIGKILL and restarted by
``-max-restarts 1``, and training through a Spark Connect session. The subprocess timeouts are the
bounds on noticing a failure: a hang fails the test."""
from __future__ import annotations

import os
import signal
import subprocess
import time

import numpy as np
import pytest

from test_dist_support import cli_env, launch_cmd, make_workspace, run_launch

pytestmark = [pytest.mark.spark, pytest.mark.distributed]

MAX_ITER = 60


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("torch-faults"), max_iter=MAX_ITER, snapshot=20,
                          test_interval=30)


def _errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("hovcaffe: error:")]


def test_exception_on_rank_1_fails_the_stage_and_names_it(ws):
    proc = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "2", "-backend", "torch",
                      timeout=120, HOVCAFFE_FAULT="raise:1:5")
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    errors = _errors(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert "rank 1 failed: InjectedFault: injected failure on rank 1 at iteration 5" in errors[0]
    assert "trained to iteration" not in proc.stdout


def _wait_for(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_killed_rank_restarts_from_the_last_snapshot_and_ends_like_a_resumed_run(ws, tmp_path):
    pids = tmp_path / "pids"
    pids.mkdir()
    snaps = ws.root / "snapshots"
    cmd = launch_cmd("-conf", str(ws.solver), "-train", "-num-proc", "2", "-backend", "torch",
                     "-max-restarts", "1")
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
        last = max(int(p.name.split("_iter_")[1].split(".")[0])
                   for p in snaps.glob("lenet_iter_*.solverstate"))
        os.kill(int((pids / "rank1.pid").read_text()), signal.SIGKILL)
        out, err = proc.communicate(timeout=240)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    restarts = [line for line in err.splitlines() if "restart 1 of 1" in line]
    assert len(restarts) == 1, err[-3000:]
    assert f"from {snaps}/lenet_iter_{last}.solverstate" in restarts[0]
    assert "rank 1 died without reporting an error" in restarts[0], restarts[0]
    assert f"trained to iteration {MAX_ITER} on 2 rank(s)" in out

    # An uninterrupted run resumed from the same snapshot ends with the same bytes.
    other = tmp_path / "resumed" / "lenet.caffemodel"
    reference = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "2", "-backend",
                           "torch", "-snapshot", str(snaps / f"lenet_iter_{last}.solverstate"),
                           "-model", str(other), timeout=240)
    assert reference.returncode == 0, reference.stderr[-3000:]
    assert (snaps / f"lenet_iter_{MAX_ITER}.caffemodel").read_bytes() == \
        (other.parent / f"lenet_iter_{MAX_ITER}.caffemodel").read_bytes()


def test_training_through_a_spark_connect_session(tmp_path):
    from hovcaffe.caffe.io import blob_to_array, read_caffemodel
    from hovcaffe.training.loop import Trainer

    iters = 6
    small = make_workspace(tmp_path / "connect", max_iter=iters, snapshot=iters, test_interval=3)
    proc = run_launch("-conf", str(small.solver), "-train", "-num-proc", "2", "-backend", "torch",
                      "-v", timeout=240, HOVCAFFE_SPARK_REMOTE="local[2]")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Spark Connect session at local[2]" in proc.stderr
    assert f"trained to iteration {iters} on 2 rank(s)" in proc.stdout
    # 2 ranks x 16 through Connect = one process x 32 (see test_torch_backend.py)
    single = make_workspace(tmp_path / "single", batch=32, max_iter=iters, snapshot=0,
                            test_interval=3)
    trainer = Trainer(single.solver_config(snapshot_prefix=str(tmp_path / "single" / "snap")))
    trainer.solve()
    model = read_caffemodel(str(small.root / "snapshots" / f"lenet_iter_{iters}.caffemodel"))
    blobs = {l.name: [blob_to_array(b) for b in l.blobs] for l in model.layer if len(l.blobs)}
    for item in trainer.learnables:
        layer, index = item.name.split("/")
        np.testing.assert_allclose(item.param.detach().numpy(),
                                   blobs[layer][int(index)].reshape(item.param.shape),
                                   atol=1e-6, rtol=0, err_msg=item.name)
