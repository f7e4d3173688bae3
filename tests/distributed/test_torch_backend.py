"""The ``torch`` backend (one Spark barrier stage, torch.distributed Gloo) on local Spark:
2 ranks x batch 16 follow the trajectory of one process with batch 32, and of the Horovod
backend on the same session.

Why the numbers must agree: rank r reads records r, r+2, ... so the two rank batches of iteration
i together are batch i of one process with batch 32; the loss is a batch mean, so the average of
the ranks' gradients is the 32-batch gradient. Both backends average the same two float32
gradients as (a + b) / 2; one process differs by float32 summation order only (a few ulps per
step): rtol 1e-5 on losses, atol 1e-6 on weights (as test_backends_equivalence.py).
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from test_dist_support import caffemodel_weights, make_workspace

pytestmark = [pytest.mark.spark, pytest.mark.distributed]

ITERS = 8


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("torch-backend"), max_iter=ITERS,
                          snapshot=ITERS, test_interval=4)


@pytest.fixture(scope="module")
def spark():
    from hovcaffe.utils.spark import get_spark

    session = get_spark("local[2]", app_name="hovcaffe-test-torch-backend")
    yield session
    session.stop()


def _train(ws, name: str, spark, **options):
    from hovcaffe.distributed.runner import run_distributed
    from hovcaffe.options import DistributedOptions

    events: list[dict] = []
    config = ws.solver_config(snapshot_prefix=str(ws.root / name / "lenet"))
    result = run_distributed(config, DistributedOptions(num_proc=2, log_level=logging.WARNING,
                                                        **options),
                             tensorboard=False, on_event=events.append, spark=spark)
    return result, events


@pytest.fixture(scope="module")
def torch_run(ws, spark):
    return _train(ws, "torch", spark, backend="torch")


def test_torch_backend_ranks_fork_from_a_daemon_that_imported_torch(spark, torch_run):
    """The torch backend's stage runs with HOVCAFFE_DAEMON_PRELOAD=ranks in its workers'
    environment, so Spark gives it a daemon of its own that imported torch before forking (the
    probe's job reuses the one `torch_run` started: ~0.3 s); other jobs keep the daemon without
    torch (Horovod's ranks are not forked from it, so torch there would only delay its launch).
    In a worker forked from the torch daemon a task's own thread count still applies, and a
    parallel op completes with the right value (an OpenMP pool started before the fork would
    hang it)."""
    from hovcaffe.distributed.daemon import PRELOAD_ENV, RANKS, preload_list
    from hovcaffe.utils.spark import worker_environment

    marker = f"{PRELOAD_ENV}={RANKS}".encode()

    def probe(_):
        import os

        daemon = os.getppid()
        with open(f"/proc/{daemon}/maps") as f:
            torch_in_daemon = "libtorch_cpu" in f.read()
        with open(f"/proc/{daemon}/environ", "rb") as f:
            asked = marker in f.read().split(b"\0")
        import torch

        torch.set_num_threads(2)
        total = float(torch.full((1 << 20,), 3.0).mul(2.0).sum())  # 2**20 * 6, in parallel
        yield daemon, torch_in_daemon, asked, torch.get_num_threads(), total

    sc = spark.sparkContext
    with worker_environment(sc, {PRELOAD_ENV: RANKS}):
        ranks = sc.parallelize(range(2), 2).barrier().mapPartitions(probe).collect()
    assert all(row[1:] == (True, True, 2, 6.0 * 2 ** 20) for row in ranks), ranks
    assert sc.environment.get(PRELOAD_ENV) is None  # the session's other jobs are unaffected
    # Their daemon's list (test_dist_lenet checks that it is used and imports Horovod's code):
    assert "torch" in preload_list({PRELOAD_ENV: RANKS}) and "torch" not in preload_list({})


def test_the_torch_backend_trains_in_a_barrier_stage_and_reports(ws, torch_run):
    result, events = torch_run
    assert result.iterations == ITERS and len(result.losses) == ITERS
    assert [r.rank for r in result.ranks] == [0, 1] and {r.size for r in result.ranks} == {2}
    assert len({r.pid for r in result.ranks}) == 2  # two Python workers, one rank each
    assert len({r.checksum for r in result.ranks}) == 1  # same averaged gradients everywhere
    assert result.ranks[1].lrs == [] and len(result.ranks[0].lrs) == ITERS  # typed, rank 0's
    assert (ws.root / "torch" / f"lenet_iter_{ITERS}.caffemodel").is_file()
    assert set(result.test_scores) == {4, 8}
    # progress reached the driver while the stage ran (rank 0's, throttled to one per 0.5 s)
    assert {"start", "iter", "test", "snapshot", "end"} <= {e["kind"] for e in events}
    iters = [e["iter"] for e in events if e["kind"] == "iter"]
    assert iters[0] == 0 and iters == sorted(set(iters))


@pytest.fixture(scope="module")
def double_batch(tmp_path_factory):
    """One process with batch 32 (the independent reference): (its Trainer, its result)."""
    from hovcaffe.training.loop import Trainer

    root = tmp_path_factory.mktemp("single")
    single = make_workspace(root, batch=32, max_iter=ITERS, snapshot=0, test_interval=4)
    trainer = Trainer(single.solver_config(snapshot_prefix=str(root / "snap")))
    return trainer, trainer.solve()


def _assert_equals_double_batch(ws, name: str, result, double_batch) -> None:
    trainer, one = double_batch
    np.testing.assert_allclose(result.mean_losses, one.losses, rtol=1e-5, atol=1e-7)
    blobs = caffemodel_weights(str(ws.root / name / f"lenet_iter_{ITERS}.caffemodel"))
    for item in trainer.learnables:
        layer, index = item.name.split("/")
        np.testing.assert_allclose(item.param.detach().numpy(),
                                   blobs[layer][int(index)].reshape(item.param.shape),
                                   atol=1e-6, rtol=0, err_msg=item.name)


def test_two_torch_ranks_equal_one_process_with_the_double_batch(ws, torch_run, double_batch):
    _assert_equals_double_batch(ws, "torch", torch_run[0], double_batch)


def test_devices_2_runs_two_ranks_in_one_task_equal_to_one_process_with_the_double_batch(
        ws, spark, double_batch):
    """``-devices 2`` on CPU: one barrier task, its process rank 0 and a fresh interpreter it
    started rank 1 (Gloo); the same trajectory as one process with batch 32."""
    result, _ = _train(ws, "devices", spark, backend="torch", devices=2)
    assert [r.rank for r in result.ranks] == [0, 1] and {r.size for r in result.ranks} == {2}
    assert len({r.pid for r in result.ranks}) == 2  # two processes
    _assert_equals_double_batch(ws, "devices", result, double_batch)


@pytest.mark.parametrize("fault, named", [
    ("kill:1:3", "rank 1 failed: RankDied: local rank process"),  # ... (killed by signal 9)
    ("raise:0:3", "rank 0 failed: InjectedFault: injected failure on rank 0 at iteration 3"),
])
def test_devices_2_a_failing_rank_fails_the_task_naming_it_and_leaves_no_local_rank(
        ws, spark, tmp_path, fault, named):
    """With ``-devices 2``, the local rank (1) killed (no report: named from its exit status), or
    the task's own rank (0) raising while rank 1 waits in an allreduce: the run fails naming the
    rank that caused it, and the local rank's process is gone once the run has returned (the task
    terminates and reaps it). A local rank that raises reports like any rank (rank_error event,
    as test_torch_backend_faults.py checks for one rank per task)."""
    import os

    from hovcaffe.errors import DistributedError

    env = (("HOVCAFFE_FAULT", fault), ("HOVCAFFE_PID_DIR", str(tmp_path)))
    with pytest.raises(DistributedError) as failed:
        _train(ws, f"devices-{fault}".replace(":", "-"), spark, backend="torch", devices=2,
               env=env)
    assert named in str(failed.value)
    child = int((tmp_path / "rank1.pid").read_text())
    assert not os.path.exists(f"/proc/{child}") or \
        open(f"/proc/{child}/stat").read().split()[2] == "Z", "local rank 1 outlived its task"


def test_torch_and_horovod_backends_follow_the_same_trajectory(ws, torch_run, spark):
    pytest.importorskip("horovod.spark", reason="the horovod backend needs Horovod")
    mine, _ = torch_run
    hvd, _ = _train(ws, "horovod", spark, backend="horovod", connection="gloo")
    np.testing.assert_allclose(mine.mean_losses, hvd.mean_losses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(mine.losses, hvd.losses, rtol=1e-5, atol=1e-7)
    for it in (4, 8):
        for key, value in hvd.test_scores[it].items():
            assert mine.test_scores[it][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (it, key)
    a = caffemodel_weights(str(ws.root / "torch" / f"lenet_iter_{ITERS}.caffemodel"))
    b = caffemodel_weights(str(ws.root / "horovod" / f"lenet_iter_{ITERS}.caffemodel"))
    for layer in a:
        for x, y in zip(a[layer], b[layer]):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0, err_msg=layer)


def test_auto_picks_horovod_when_importable_else_torch(monkeypatch):
    from hovcaffe.distributed.backend import backend_class
    from hovcaffe.distributed.backends.horovod import HorovodBackend

    monkeypatch.setattr(HorovodBackend, "missing", classmethod(lambda cls: "not importable here"))
    assert backend_class("auto").name == "torch"
    monkeypatch.undo()
    expected = "horovod" if HorovodBackend.missing() is None else "torch"
    assert backend_class("auto").name == expected
