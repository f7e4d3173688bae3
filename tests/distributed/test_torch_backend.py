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


def test_two_torch_ranks_equal_one_process_with_the_double_batch(ws, torch_run, tmp_path):
    from hovcaffe.training.loop import Trainer

    result, _ = torch_run
    single = make_workspace(tmp_path / "single", batch=32, max_iter=ITERS, snapshot=0,
                            test_interval=4)
    trainer = Trainer(single.solver_config(snapshot_prefix=str(tmp_path / "single" / "snap")))
    one = trainer.solve()
    np.testing.assert_allclose(result.mean_losses, one.losses, rtol=1e-5, atol=1e-7)
    blobs = caffemodel_weights(str(ws.root / "torch" / f"lenet_iter_{ITERS}.caffemodel"))
    for item in trainer.learnables:
        layer, index = item.name.split("/")
        np.testing.assert_allclose(item.param.detach().numpy(),
                                   blobs[layer][int(index)].reshape(item.param.shape),
                                   atol=1e-6, rtol=0, err_msg=item.name)


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
