"""The ``torch`` backend through the real command line (launch.py, a fresh process and local
Spark each): an exception on rank 1, a rank killed with SIGKILL and restarted by
``-max-restarts 1``, the driver killed (no rank outlives it), and training through a Spark Connect
session. The faults fire at an exact iteration (fault_support.py); the subprocess timeouts are the
bounds on noticing a failure: a hang fails the test."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import numpy as np
import psutil
import pytest

from fault_support import (KILL_FAULT, LAST_BEFORE_KILL, MAX_ITER, RAISE_FAULT,
                           assert_fails_naming_rank_1, fault_workspace, local_reference,
                           snapshot_iterations, wait_for)
from test_dist_support import cli_env, launch_cmd, make_workspace, run_launch

pytestmark = [pytest.mark.spark, pytest.mark.distributed]


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return fault_workspace(tmp_path_factory.mktemp("torch-faults"))


def test_exception_on_rank_1_fails_the_stage_and_names_it(ws):
    proc = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "2", "-backend", "torch",
                      timeout=120, HOVCAFFE_FAULT=RAISE_FAULT)
    assert_fails_naming_rank_1(proc)


def test_killed_rank_restarts_from_the_last_snapshot_and_ends_like_a_resumed_run(ws, tmp_path):
    snaps = ws.root / "snapshots"
    pids = tmp_path / "pids"
    pids.mkdir()
    # rank 1 SIGKILLs itself at iteration KILL_AT, once (the pid dir remembers it)
    proc = run_launch("-conf", str(ws.solver), "-train", "-num-proc", "2", "-backend", "torch",
                      "-max-restarts", "1", timeout=240, HOVCAFFE_FAULT=KILL_FAULT,
                      HOVCAFFE_PID_DIR=str(pids))
    err = proc.stderr
    assert proc.returncode == 0, err[-3000:]
    assert (pids / "rank1.killed").exists()  # the fault did fire
    restarts = [line for line in err.splitlines() if "restart 1 of 1" in line]
    assert len(restarts) == 1, err[-3000:]
    assert f"from {snaps}/lenet_iter_{LAST_BEFORE_KILL}.solverstate" in restarts[0], restarts[0]
    assert "rank 1 died without reporting an error" in restarts[0], restarts[0]
    assert f"trained to iteration {MAX_ITER} on 2 rank(s)" in proc.stdout
    assert snapshot_iterations(snaps) == list(range(LAST_BEFORE_KILL, MAX_ITER + 1, 5))

    # A run resumed from the same snapshot, never interrupted, ends with the same bytes.
    reference = local_reference(ws, tmp_path / "resumed",
                                resume=snaps / f"lenet_iter_{LAST_BEFORE_KILL}.solverstate")
    assert (snaps / f"lenet_iter_{MAX_ITER}.caffemodel").read_bytes() == reference.read_bytes()


def test_killing_the_driver_leaves_no_rank_running(ws, tmp_path):
    """SIGKILL of launch.py mid-run (no handler runs): its JVM, the Python workers and so the
    ranks must all end by themselves. 60 s is the bound, not the expectation (about 1 s here)."""
    pids = tmp_path / "pids"
    pids.mkdir()
    cmd = launch_cmd("-conf", str(ws.solver), "-train", "-num-proc", "2", "-backend", "torch",
                     "-model", str(tmp_path / "out" / "lenet.caffemodel"))
    # slow iterations only keep the run going while the test looks; nothing waits on their length
    log = tmp_path / "driver.log"
    with open(log, "w") as out:  # a file, not a pipe: a full pipe would stall the driver
        driver = subprocess.Popen(cmd, stdout=out, stderr=out,
                                  env=cli_env(HOVCAFFE_PID_DIR=str(pids), HOVCAFFE_SLOW_ITER_S="1"))
    try:
        def training() -> bool:
            assert driver.poll() is None, log.read_text()[-3000:]
            return all((pids / f"rank{r}.iter").exists() for r in (0, 1))

        wait_for(training, 240, "both ranks to train")
        ranks = [psutil.Process(int((pids / f"rank{r}.pid").read_text())) for r in (0, 1)]
        tree = psutil.Process(driver.pid).children(recursive=True)  # JVM, workers, ranks
        assert {r.pid for r in ranks} <= {p.pid for p in tree}
        os.kill(driver.pid, signal.SIGKILL)
        driver.wait(timeout=30)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()

    def alive() -> list[psutil.Process]:
        # is_running() compares creation times, so a reused pid does not count
        left = []
        for p in tree:
            try:
                if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                    left.append(p)
            except psutil.NoSuchProcess:
                pass
        return left

    try:
        wait_for(lambda: not alive(), 60, "the driver's processes to end", interval=0.5)
    except AssertionError:
        left = [f"{p.pid} {p.name()}" for p in alive()]
        raise AssertionError(f"60 s after the driver was killed, still running: {left}") from None
    finally:
        for p in alive():  # never leave them to the next test
            with contextlib.suppress(psutil.NoSuchProcess):
                p.kill()


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
