"""Sample-exact test passes (`score_samples`), which distributed ranks use when `test_iter`
batches cover the TEST set: each rank scores its share of the set once, its last batch short,
and the ranks' row-weighted means combine into the mean over the whole set."""
from __future__ import annotations

import numpy as np
import pytest

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net
from hovcaffe.data.registry import FeedContext
from hovcaffe.net import CaffeNet
from hovcaffe.training.feeder import NetFeeder
from hovcaffe.training.scoring import run_test, score_samples

BATCH = 4
# The batch mean of the input values: a per-batch output like accuracy or a loss.
NET = f"""
layer {{ name: "in" type: "Input" top: "x" input_param {{ shape {{ dim: {BATCH} dim: 1 }} }} }}
layer {{ name: "mean" type: "Reduction" bottom: "x" top: "m" reduction_param {{ operation: MEAN axis: 0 }} }}
"""


@pytest.fixture()
def values(tmp_path):
    x = np.arange(1, 11, dtype=np.float32).reshape(10, 1) ** 2  # 10 rows: not a multiple of 4
    path = tmp_path / "x.npz"
    np.savez(path, x=x)
    return x.ravel(), str(path)


def _rank(path: str, rank: int, size: int):
    layers = parse_net(NET).layer
    feeder = NetFeeder(layers, FeedContext(phase=caffe_pb2.TEST, rank=rank, world_size=size),
                       input_data=path)
    return CaffeNet(parse_net(NET), caffe_pb2.TEST), feeder


@pytest.mark.parametrize("size", [1, 2, 3])
def test_ranks_shares_combine_into_the_mean_over_every_sample(values, size):
    x, path = values
    weighted, rows = 0.0, 0
    for rank in range(size):
        net, feeder = _rank(path, rank, size)
        n = feeder.pass_samples()
        assert n == len(range(rank, len(x), size))  # round-robin share of the 10 rows
        means, _ = score_samples(net, feeder, n)
        weighted += float(means["m"][0]) * n
        rows += n
    assert rows == len(x)
    assert weighted / rows == pytest.approx(float(x.mean()), rel=1e-6)


def test_caffes_pass_wraps_around_where_the_exact_pass_stops(values):
    """The difference the exact pass exists for: Caffe's 3 batches of 4 re-read rows 0-1."""
    x, path = values
    net, feeder = _rank(path, 0, 1)
    caffe_means, _ = run_test(net, feeder, 3)
    wrapped = np.concatenate([x, x[:2]]).reshape(3, BATCH).mean(axis=1).mean()
    assert float(caffe_means["m"][0]) == pytest.approx(float(wrapped), rel=1e-6)
    exact, _ = score_samples(net, feeder, 10)
    assert float(exact["m"][0]) == pytest.approx(float(x.mean()), rel=1e-6)


def test_every_pass_starts_over_from_the_first_row(values):
    x, path = values
    net, feeder = _rank(path, 0, 1)
    first, _ = score_samples(net, feeder, 6)
    second, _ = score_samples(net, feeder, 6)
    assert float(first["m"][0]) == float(second["m"][0]) == pytest.approx(float(x[:6].mean()))


def test_a_rank_with_nothing_to_score_still_reports_its_outputs(values):
    _, path = values
    net, feeder = _rank(path, 0, 1)
    means, _ = score_samples(net, feeder, 0)
    assert set(means) == {"m"} and float(means["m"][0]) == 0.0
