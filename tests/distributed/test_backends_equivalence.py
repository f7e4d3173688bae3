"""The launcher seam: the same LeNet trained on 2 ranks by the `local` backend (torch.distributed
Gloo processes, no Spark) and by the `horovod` backend (Horovod on local Spark) follows the same
trajectory, and both equal one process with the double batch.

Why the numbers must agree: rank r reads records r, r+2, ... so the two rank batches of iteration
i are together batch i of one process with batch 32; the loss is a batch mean, so the average of
the ranks' gradients is the 32-batch gradient. Both backends average the same two float32
gradients as (a + b) / 2; what differs from one process is float32 summation order (a few ulps per
step, see test_dist_lenet.py): rtol 1e-5 on losses, atol 1e-6 on weights.
"""
from __future__ import annotations

import logging

import numpy as np
import pytest

from test_dist_support import caffemodel_weights, make_workspace

pytestmark = [pytest.mark.distributed]

ITERS = 8


@pytest.fixture(scope="module")
def ws(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("seam"), max_iter=ITERS, snapshot=ITERS,
                          test_interval=4)


def _train(ws, name: str, spark=None, **options):
    from hovcaffe.distributed.runner import run_distributed
    from hovcaffe.options import DistributedOptions

    events: list[dict] = []
    config = ws.solver_config(snapshot_prefix=str(ws.root / name / "lenet"))
    result = run_distributed(config, DistributedOptions(num_proc=2, log_level=logging.WARNING,
                                                        **options),
                             tensorboard=False, on_event=events.append, spark=spark)
    return result, events


@pytest.fixture(scope="module")
def local_run(ws):
    return _train(ws, "local", backend="local")


@pytest.fixture(scope="module")
def horovod_run(ws):
    pytest.importorskip("horovod.spark", reason="the horovod backend needs Horovod (scripts/install.sh)")
    from hovcaffe.utils.spark import get_spark

    spark = get_spark("local[2]", app_name="hovcaffe-test-seam")
    try:
        yield _train(ws, "horovod", spark=spark, backend="horovod", connection="gloo")
    finally:
        spark.stop()


def test_the_local_backend_trains_writes_and_reports(ws, local_run):
    result, events = local_run
    assert result.iterations == ITERS and len(result.losses) == ITERS
    assert [r.rank for r in result.ranks] == [0, 1] and {r.size for r in result.ranks} == {2}
    assert len({r.checksum for r in result.ranks}) == 1  # same averaged gradients everywhere
    assert (ws.root / "local" / f"lenet_iter_{ITERS}.caffemodel").is_file()
    assert set(result.test_scores) == {4, 8}  # the solver skips the test at iteration 0
    assert {"start", "iter", "test", "snapshot", "end"} <= {e["kind"] for e in events}


def test_local_and_horovod_backends_follow_the_same_trajectory(ws, local_run, horovod_run):
    local, _ = local_run
    hvd, _ = horovod_run
    np.testing.assert_allclose(local.mean_losses, hvd.mean_losses, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(local.losses, hvd.losses, rtol=1e-5, atol=1e-7)
    assert set(local.test_scores) == set(hvd.test_scores) == {4, 8}
    for it in (4, 8):
        for key, value in hvd.test_scores[it].items():
            assert local.test_scores[it][key] == pytest.approx(value, rel=1e-5, abs=1e-6), (it, key)
    a = caffemodel_weights(str(ws.root / "local" / f"lenet_iter_{ITERS}.caffemodel"))
    b = caffemodel_weights(str(ws.root / "horovod" / f"lenet_iter_{ITERS}.caffemodel"))
    assert a.keys() == b.keys()
    for layer in a:
        for x, y in zip(a[layer], b[layer]):
            np.testing.assert_allclose(x, y, atol=1e-6, rtol=0, err_msg=layer)


@pytest.mark.parametrize("backend", ["local", "horovod"])
def test_two_ranks_equal_one_process_with_the_double_batch(ws, backend, request, tmp_path):
    from hovcaffe.training.loop import Trainer

    result, _ = request.getfixturevalue(f"{backend}_run")
    single = make_workspace(tmp_path / "single", batch=32, max_iter=ITERS, snapshot=0, test_interval=4)
    trainer = Trainer(single.solver_config(snapshot_prefix=str(tmp_path / "single" / "snap")))
    one = trainer.solve()
    np.testing.assert_allclose(result.mean_losses, one.losses, rtol=1e-5, atol=1e-7)
    blobs = caffemodel_weights(str(ws.root / backend / f"lenet_iter_{ITERS}.caffemodel"))
    for item in trainer.learnables:
        layer, index = item.name.split("/")
        np.testing.assert_allclose(item.param.detach().numpy(),
                                   blobs[layer][int(index)].reshape(item.param.shape),
                                   atol=1e-6, rtol=0, err_msg=item.name)


def test_an_error_on_rank_1_of_the_local_backend_names_it(ws, monkeypatch):
    from hovcaffe.errors import DistributedError

    monkeypatch.setenv("HOVCAFFE_FAULT", "raise:1:2")
    with pytest.raises(DistributedError, match=r"rank 1 failed: InjectedFault: injected failure "
                                               r"on rank 1 at iteration 2"):
        _train(ws, "fault", backend="local")
