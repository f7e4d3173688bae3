"""LeNet on 2 Horovod ranks in local Spark: both transports, equivalence with one rank and a
double batch, and -test / -features on Spark executors against local forward passes.

One Spark session (local[2]) serves the module; each training is a real `horovod.spark.run`.
"""
from __future__ import annotations

import json
import logging

import numpy as np
import pytest

from test_dist_support import Workspace, local_accuracy, local_forward, make_workspace

pytestmark = [pytest.mark.spark, pytest.mark.distributed]

ITERS = 20


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Workspace:
    return make_workspace(tmp_path_factory.mktemp("lenet"), max_iter=ITERS, snapshot=10, test_interval=10)


@pytest.fixture(scope="module")
def spark():
    from hovcaffe.utils.spark import get_spark

    session = get_spark("local[2]", app_name="hovcaffe-test-dist")
    yield session
    session.stop()


def _train(ws: Workspace, spark, connection: str, prefix: str):
    from hovcaffe.distributed.runner import run_distributed
    from hovcaffe.options import DistributedOptions

    events: list[dict] = []
    config = ws.solver_config(snapshot_prefix=str(ws.root / prefix / "lenet"))
    result = run_distributed(config, DistributedOptions(num_proc=2, connection=connection,
                                                        log_level=logging.WARNING),
                             tensorboard=False, on_event=events.append, spark=spark)
    return result, events


@pytest.fixture(scope="module")
def gloo_run(ws, spark):
    return _train(ws, spark, "gloo", "gloo")


def test_gloo_run_trains_writes_and_reports(ws, gloo_run):
    result, events = gloo_run
    assert result.iterations == ITERS and len(result.losses) == ITERS
    assert {r.rank for r in result.ranks} == {0, 1}
    # every rank ends with the same weights: they applied the same averaged gradients
    assert len({r.checksum for r in result.ranks}) == 1
    for it in (10, 20):
        for ext in ("caffemodel", "solverstate"):
            assert (ws.root / "gloo" / f"lenet_iter_{it}.{ext}").is_file()
    rows = (ws.root / "gloo" / "lenet_metrics.csv").read_text().splitlines()
    assert rows[0].startswith("iteration,lr,loss,smoothed_loss,seconds")
    assert len(rows) == 1 + ITERS + 1  # a row per update, plus the final test row
    final = result.test_scores[ITERS]
    # the reported accuracy is that of the final weights over the whole test set, run locally
    weights = str(ws.root / "gloo" / f"lenet_iter_{ITERS}.caffemodel")
    assert final["test/accuracy"] == pytest.approx(local_accuracy(ws, weights), abs=1e-6)
    # and it learned: chance is 0.1 (20 of 200 right, sd 4.2)
    assert final["test/accuracy"] > 0.2
    assert np.mean(result.mean_losses[-5:]) < np.mean(result.mean_losses[:5])
    kinds = {e["kind"] for e in events}
    assert {"start", "iter", "test", "snapshot", "end"} <= kinds


def test_mpi_gives_the_same_trajectory_as_gloo(ws, spark, gloo_run):
    gloo, _ = gloo_run
    mpi, _ = _train(ws, spark, "mpi", "mpi")
    assert mpi.iterations == ITERS
    # Both average the same two float32 gradients (a + b, then / 2): the runs agree to rounding.
    np.testing.assert_allclose(mpi.mean_losses, gloo.mean_losses, rtol=1e-6, atol=1e-7)
    assert mpi.test_scores[ITERS]["test/accuracy"] == pytest.approx(gloo.test_scores[ITERS]["test/accuracy"])


def test_two_ranks_equal_one_rank_with_double_batch(ws, gloo_run, tmp_path):
    """2 ranks x batch 16 vs 1 process x batch 32 over the same samples.

    Rank r reads records r, r+2, ... so the two rank batches of iteration i are together the
    32-record batch i of one process; the loss is a mean over the batch, so averaging the two
    ranks' gradients gives the 32-batch gradient. What differs is float32 summation order (the
    batch sums split in two and the allreduce's (a+b)/2): a few float32 ulps (eps 1.2e-7) per
    step. Measured over 20 momentum steps: losses within 1.7e-7 relative, weights within 7e-8.
    Tolerances leave ~10x headroom for other BLAS kernels: losses rtol 1e-5, weights atol 1e-6.
    """
    from hovcaffe.caffe.io import read_caffemodel
    from hovcaffe.caffe.io import blob_to_array
    from hovcaffe.training.loop import Trainer

    result, _ = gloo_run
    single = make_workspace(tmp_path / "single", batch=32, max_iter=ITERS, snapshot=0, test_interval=10)
    # same digits (same seed) -> same Parquet rows
    trainer = Trainer(single.solver_config(snapshot_prefix=str(tmp_path / "single" / "snap")))
    local = trainer.solve()
    np.testing.assert_allclose(result.mean_losses, local.losses, rtol=1e-5, atol=1e-7)
    dist = read_caffemodel(str(ws.root / "gloo" / f"lenet_iter_{ITERS}.caffemodel"))
    blobs = {l.name: [blob_to_array(b) for b in l.blobs] for l in dist.layer if len(l.blobs)}
    for item in trainer.learnables:
        layer, index = item.name.split("/")
        np.testing.assert_allclose(item.param.detach().numpy(), blobs[layer][int(index)].reshape(item.param.shape),
                                   atol=1e-6, rtol=0, err_msg=item.name)


def test_features_on_spark_equal_a_local_forward(ws, spark, gloo_run, tmp_path):
    from hovcaffe.distributed.features import inference_spec, write_features

    weights = str(ws.root / "gloo" / f"lenet_iter_{ITERS}.caffemodel")
    spec = inference_spec(str(ws.net), weights, partitions=2)
    out = tmp_path / "features"
    count = write_features(spark, spec, ["ip2"], "label", str(out), "json")
    assert count == ws.test_count
    rows = [json.loads(line) for f in sorted(out.glob("part-*.json")) for line in f.read_text().splitlines()]
    rows.sort(key=lambda r: r["SampleID"])
    assert [r["SampleID"] for r in rows] == list(range(ws.test_count))  # one row per sample
    expected = local_forward(ws, weights, ["ip2", "label"])
    np.testing.assert_allclose(np.array([r["ip2"] for r in rows]), expected["ip2"], atol=1e-5, rtol=1e-5)
    np.testing.assert_array_equal(np.array([r["label"] for r in rows]).ravel(), expected["label"].ravel())


def test_test_mode_on_spark_counts_every_sample_once(ws, spark, gloo_run):
    from hovcaffe.distributed.features import inference_spec, test_means

    weights = str(ws.root / "gloo" / f"lenet_iter_{ITERS}.caffemodel")
    means, count = test_means(spark, inference_spec(str(ws.solver), weights, partitions=2))
    assert count == ws.test_count
    local = local_forward(ws, weights, ["ip2", "label"])
    accuracy = float(np.mean(local["ip2"].argmax(1) == local["label"].ravel()))
    assert means["accuracy"][0] == pytest.approx(accuracy, abs=1e-6)


def test_an_unknown_blob_is_a_user_error_not_a_spark_failure(ws, spark, tmp_path):
    from hovcaffe.distributed.features import inference_spec, write_features
    from hovcaffe.errors import UserInputError

    spec = inference_spec(str(ws.net), None, partitions=2)
    # Raised on an executor; the driver must re-raise it as the user error (exit 2), not Spark's.
    with pytest.raises(UserInputError, match=r"\['no_such_blob'\] are not in the TEST net.*ip2"):
        write_features(spark, spec, ["no_such_blob"], None, str(tmp_path / "f"), "json")


def test_local_sessions_fork_spark_workers_with_horovod_preloaded(spark):
    """Sessions hovcaffe starts on local masters use its worker daemon, so the fresh workers that
    `horovod.spark.run`'s job forks already hold Horovod's task modules (no import per launch)."""
    import sys

    from hovcaffe.utils.spark import PRELOADING_DAEMON

    assert spark.sparkContext.getConf().get("spark.python.daemon.module") == PRELOADING_DAEMON

    def probe(_):
        import os

        with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
            parent = f.read().replace(b"\0", b" ").decode()
        yield parent, "horovod.spark.runner" in sys.modules

    # the same kind of job horovod.spark.run submits
    rows = spark.sparkContext.range(0, numSlices=2).mapPartitions(probe).collect()
    assert rows and all(PRELOADING_DAEMON in parent and preloaded for parent, preloaded in rows), rows


def test_test_scores_count_every_sample_once_when_batches_do_not_divide(spark, tmp_path):
    """230 TEST samples, batch 50, test_iter 5 (250 rows: the whole set). Each of 2 ranks scores
    its 115 samples (50 + 50 + 15) once; the combined accuracy and loss equal those of a local
    forward over all 230 samples with the final weights, not the mean of five batch means."""
    import torch

    from hovcaffe.distributed.runner import run_distributed
    from hovcaffe.options import DistributedOptions

    iters = 4
    ws = make_workspace(tmp_path / "uneven", test=230, test_batch=50, test_iter=5, max_iter=iters,
                        snapshot=iters, test_interval=iters)
    config = ws.solver_config(snapshot_prefix=str(ws.root / "out" / "lenet"))
    result = run_distributed(config, DistributedOptions(num_proc=2, log_level=logging.WARNING),
                             tensorboard=False, spark=spark)
    scores = result.test_scores[iters]
    local = local_forward(ws, str(ws.root / "out" / f"lenet_iter_{iters}.caffemodel"), ["ip2", "label"])
    labels = local["label"].ravel().astype(np.int64)
    assert len(labels) == 230
    accuracy = float(np.mean(local["ip2"].argmax(1) == labels))
    loss = float(torch.nn.functional.cross_entropy(torch.from_numpy(local["ip2"]).double(),
                                                   torch.from_numpy(labels)))
    assert scores["test/accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert scores["test/loss"] == pytest.approx(loss, rel=1e-5)
