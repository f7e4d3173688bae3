"""Caffe's fillers: distribution properties of the formulas (docs/caffe-semantics.md#fillers)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from hovcaffe import fillers
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_text
from hovcaffe.errors import NetDefinitionError


def filler(text: str) -> caffe_pb2.FillerParameter:
    return parse_text(text, caffe_pb2.FillerParameter())


def fill(text: str, shape) -> np.ndarray:
    return fillers.fill(shape, filler(text)).numpy()


def test_every_caffe_filler_type_exists():
    assert fillers.list_fillers() == sorted(["constant", "uniform", "gaussian", "positive_unitball",
                                             "xavier", "msra", "bilinear"])


def test_default_filler_is_constant_zero():
    a = fillers.fill((3, 4), caffe_pb2.FillerParameter())
    assert a.dtype == torch.float32 and torch.all(a == 0)
    assert np.all(fill('type: "constant" value: 2.5', (2, 3)) == 2.5)


def test_uniform_and_gaussian_moments():
    torch.manual_seed(0)
    u = fill('type: "uniform" min: -2 max: 3', (200, 500))
    assert u.min() >= -2 and u.max() <= 3
    assert abs(u.mean() - 0.5) < 0.02 and abs(u.std() - 5 / math.sqrt(12)) < 0.02
    g = fill('type: "gaussian" mean: 1 std: 0.5', (200, 500))
    assert abs(g.mean() - 1) < 0.01 and abs(g.std() - 0.5) < 0.01


def test_sparse_gaussian_keeps_sparse_over_num_outputs():
    torch.manual_seed(1)
    g = fill('type: "gaussian" std: 1 sparse: 5', (20, 3000))
    assert abs((g != 0).mean() - 5 / 20) < 0.01
    assert abs(g[g != 0].std() - 1) < 0.02


def test_positive_unitball_rows_sum_to_one():
    a = fill('type: "positive_unitball"', (7, 3, 2, 2))
    assert np.all(a >= 0)
    np.testing.assert_allclose(a.reshape(7, -1).sum(axis=1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("norm,n", [("FAN_IN", 8 * 3 * 3), ("FAN_OUT", 40 * 3 * 3),
                                    ("AVERAGE", (8 * 9 + 40 * 9) / 2)])
def test_xavier_and_msra_scale_with_caffes_fans(norm, n):
    torch.manual_seed(2)
    shape = (40, 8, 3, 3)     # fan_in = count/shape[0] = 72, fan_out = count/shape[1] = 360
    x = fill(f'type: "xavier" variance_norm: {norm}', shape)
    bound = math.sqrt(3 / n)
    assert x.min() >= -bound and x.max() <= bound and x.max() > 0.95 * bound
    m = fill(f'type: "msra" variance_norm: {norm}', shape)
    assert abs(m.std() / math.sqrt(2 / n) - 1) < 0.05


@pytest.mark.parametrize("k", [3, 4, 5])
def test_bilinear_is_the_formula_for_every_channel_pair(k):
    a = fill('type: "bilinear"', (2, 3, k, k))
    f = math.ceil(k / 2)
    c = (k - 1) / (2 * f)
    want = np.array([[(1 - abs(x / f - c)) * (1 - abs(y / f - c)) for x in range(k)]
                     for y in range(k)])
    for i in range(2):
        for j in range(3):
            np.testing.assert_allclose(a[i, j], want, rtol=1e-6)
    with pytest.raises(NetDefinitionError, match="square"):
        fill('type: "bilinear"', (1, 1, 3, 4))


def test_fillers_are_deterministic_under_torch_manual_seed():
    torch.manual_seed(123)
    a = fill('type: "xavier"', (5, 6))
    torch.manual_seed(123)
    assert np.array_equal(a, fill('type: "xavier"', (5, 6)))


def test_filler_errors_name_the_problem():
    with pytest.raises(NetDefinitionError, match="unknown filler type 'gausian'"):
        fillers.fill((2,), filler('type: "gausian"'), where="layer 'c'")
    with pytest.raises(NetDefinitionError, match="sparse"):
        fill('type: "xavier" sparse: 3', (2, 2))
