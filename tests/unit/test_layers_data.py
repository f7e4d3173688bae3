"""Sources and sinks: Input, Parameter, DummyData (fillers, refill rule), Silence, HDF5Output."""
from __future__ import annotations

import h5py
import numpy as np
import pytest
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net
from hovcaffe.errors import NetDefinitionError
from hovcaffe.layers import get_builder, list_layers


def make(text: str, bottom_shapes=()):
    lp = parse_net(text).layer[0]
    return get_builder(lp.type, lp.name)(lp, [tuple(s) for s in bottom_shapes], caffe_pb2.TRAIN)


def test_registered():
    assert set(list_layers("data_layers")) == {"Input", "Parameter", "DummyData", "Silence",
                                               "HDF5Output"}


def test_dummy_data_constant_once_random_refilled_each_forward():
    layer = make('layer { name: "d" type: "DummyData" top: "c" top: "g" top: "z" dummy_data_param { '
                 'data_filler { type: "constant" value: 2.5 } '
                 'data_filler { type: "gaussian" mean: 1 std: 2 } '
                 'data_filler { type: "constant" } '
                 'shape { dim: 3 dim: 2 } shape { dim: 200 dim: 100 } shape { dim: 4 } } }')
    assert layer.output_shapes([]) == [(3, 2), (200, 100), (4,)]
    c1, g1, z1 = layer()
    c2, g2, z2 = layer()
    np.testing.assert_array_equal(c1.numpy(), np.full((3, 2), 2.5))
    np.testing.assert_array_equal(z1.numpy(), np.zeros(4))
    assert c2 is c1 and z2 is z1                      # constant tops: filled once, never again
    assert not torch.equal(g1, g2)                    # random tops: drawn on every forward
    for g in (g1, g2):
        assert abs(float(g.mean()) - 1.0) < 0.1 and abs(float(g.std()) - 2.0) < 0.1
    assert not g1.requires_grad


def test_dummy_data_legacy_dims_and_defaults():
    layer = make('layer { name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
                 'num: 2 channels: 3 channels: 1 height: 4 width: 5 } }')
    assert layer.output_shapes([]) == [(2, 3, 4, 5), (2, 1, 4, 5)]
    a, b = layer()
    assert float(a.abs().sum()) == 0 and float(b.abs().sum()) == 0  # no filler: constant 0
    one = make('layer { name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param { '
               'data_filler { type: "uniform" min: 3 max: 4 } shape { dim: 50 } } }')
    for top in one():  # one filler and one shape apply to every top
        assert top.shape == (50,) and float(top.min()) >= 3 and float(top.max()) <= 4


@pytest.mark.parametrize("params, message", [
    ("shape { dim: 2 } num: 2 channels: 1 height: 1 width: 1", "both `shape` and the legacy"),
    ("shape { dim: 2 } shape { dim: 2 } shape { dim: 2 }", "1 or 2"),
    ("data_filler {} data_filler {} data_filler {} shape { dim: 2 }", "0, 1 or 2"),
    ('data_filler { type: "nope" } shape { dim: 2 }', "unknown filler type 'nope'"),
])
def test_dummy_data_errors(params, message):
    with pytest.raises(NetDefinitionError, match=message):
        make(f'layer {{ name: "d" type: "DummyData" top: "a" top: "b" dummy_data_param {{ {params} }} }}')


def test_hdf5_output_writes_and_appends_batches(tmp_path):
    path = tmp_path / "out.h5"
    (tmp_path / "out.h5").write_bytes(b"stale")  # truncated by the first forward, like Caffe
    layer = make(f'layer {{ name: "w" type: "HDF5Output" bottom: "data" bottom: "label" '
                 f'hdf5_output_param {{ file_name: "{path}" }} }}', [(2, 3), (2,)])
    assert layer.output_shapes([(2, 3), (2,)]) == []
    d1, l1 = np.arange(6, dtype=np.float32).reshape(2, 3), np.array([0, 1], np.float32)
    d2, l2 = -d1, np.array([1, 0], np.float32)
    assert layer(torch.tensor(d1), torch.tensor(l1)) == []
    layer(torch.tensor(d2), torch.tensor(l2))
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["data"][...], np.concatenate([d1, d2]))
        np.testing.assert_array_equal(f["label"][...], np.concatenate([l1, l2]))


# ----------------------------------------------------------------------------- Silence / Parameter / Input

def test_silence_has_no_tops():
    layer = make('layer { name: "s" type: "Silence" bottom: "a" bottom: "b" }', [(2,), (3,)])
    assert layer.output_shapes([(2,), (3,)]) == []
    assert layer(torch.zeros(2), torch.zeros(3)) == []


def test_parameter_is_a_zero_learnable_blob_exposed_as_top():
    layer = make('layer { name: "p" type: "Parameter" top: "w" '
                 'parameter_param { shape { dim: 2 dim: 3 } } }', [])
    assert [tuple(b.shape) for b in layer.blobs] == [(2, 3)]
    assert layer.output_shapes([]) == [(2, 3)]
    (w,) = layer()
    np.testing.assert_array_equal(w.detach().numpy(), np.zeros((2, 3)))
    (3 * w).sum().backward()
    np.testing.assert_array_equal(layer.blobs[0].grad.numpy(), np.full((2, 3), 3.0))


def test_input_shapes_one_for_all_or_one_per_top():
    one = make('layer { name: "in" type: "Input" top: "a" top: "b" '
               'input_param { shape { dim: 2 dim: 3 } } }', [])
    assert one.output_shapes([]) == [(2, 3), (2, 3)]
    each = make('layer { name: "in" type: "Input" top: "a" top: "b" '
                'input_param { shape { dim: 2 } shape { dim: 4 dim: 1 } } }', [])
    assert each.output_shapes([]) == [(2,), (4, 1)]
    with pytest.raises(NetDefinitionError, match="0, 1 or 3"):
        make('layer { name: "in" type: "Input" top: "a" top: "b" top: "c" '
             'input_param { shape { dim: 2 } shape { dim: 2 } } }', [])
