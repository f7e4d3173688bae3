"""The data-layer table (hovcaffe/caffe/data_layer_types.py) agrees with the feeds and the layers."""
from __future__ import annotations

import pytest

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.data_layer_types import (
    BATCHED_TYPES, DATA_LAYERS, FED_TYPES, FILE_FIELDS, NET_INPUT_TYPES, batch_size_of,
    set_batch_size, source_of)
from hovcaffe.caffe.io import parse_net
from hovcaffe.caffe.shapes import declared_top_shapes
from hovcaffe.errors import NetDefinitionError, UnsupportedLayerError

# Fed types that Caffe knows and hovcaffe accepts in a net, but has no reader for yet.
NO_FEED_YET = {"WindowData"}


def one_layer(text: str) -> caffe_pb2.LayerParameter:
    return parse_net(text).layer[0]


def test_every_fed_type_has_a_feed_and_every_feed_a_row():
    from hovcaffe.data.registry import _load_builtin_feeds, list_feeds

    _load_builtin_feeds()
    assert set(list_feeds()) == FED_TYPES - NO_FEED_YET


def test_a_fed_type_without_a_feed_is_refused_by_name():
    from hovcaffe.data.registry import FeedContext, make_feed

    for name in NO_FEED_YET:
        layer = one_layer(f'layer {{ name: "w" type: "{name}" top: "data" }}')
        with pytest.raises(UnsupportedLayerError, match=f"type '{name}', for which hovcaffe has no"):
            make_feed(layer, FeedContext(phase=caffe_pb2.TEST))


def test_unfed_types_are_built_as_layers_and_fed_types_are_not():
    from hovcaffe.layers.registry import list_layers

    built = set(list_layers())
    assert NET_INPUT_TYPES - FED_TYPES <= built
    assert not FED_TYPES & built


def test_each_row_names_a_settings_message_of_LayerParameter():
    fields = caffe_pb2.LayerParameter.DESCRIPTOR.fields_by_name
    for name, row in DATA_LAYERS.items():
        assert row.name == name
        assert fields[row.param].message_type is not None, row.param


def test_facts_read_from_the_schema():
    # From caffe.proto: DummyData and Input have no batch size; the legacy mean_file lives in
    # DataParameter, ImageDataParameter, WindowDataParameter and SegNet's DenseImageDataParameter.
    assert BATCHED_TYPES == ("Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "CoSData",
                             "DenseImageData", "AnnotatedData")
    assert {f for f, attr in FILE_FIELDS if attr == "mean_file"} == {
        "data_param", "image_data_param", "window_data_param", "dense_image_data_param"}
    assert {f for f, attr in FILE_FIELDS if attr == "source"} == {
        "data_param", "image_data_param", "hdf5_data_param", "memory_data_param",
        "window_data_param", "cos_data_param", "dense_image_data_param"}


@pytest.mark.parametrize("text, source, batch", [
    ('type: "Data" data_param { source: "db" batch_size: 64 }', "db", 64),
    ('type: "ImageData" image_data_param { source: "list.txt" batch_size: 5 }', "list.txt", 5),
    ('type: "HDF5Data" hdf5_data_param { source: "h5.txt" batch_size: 10 }', "h5.txt", 10),
    ('type: "MemoryData" memory_data_param { source: "file:/x" batch_size: 3 }', "file:/x", 3),
    ('type: "WindowData" window_data_param { source: "w.txt" batch_size: 128 }', "w.txt", 128),
    ('type: "CoSData" cos_data_param { source: "df.parquet" batch_size: 7 }', "df.parquet", 7),
    # A message of another type is not this layer's setting.
    ('type: "Data" image_data_param { source: "list.txt" batch_size: 5 }', "", 0),
    # ImageData's batch_size defaults to 1 in caffe.proto, but an unset message declares none.
    ('type: "ImageData"', "", 0),
    ('type: "DummyData" dummy_data_param { shape { dim: 2 } }', "", 0),
    ('type: "Input" input_param { shape { dim: 2 } }', "", 0),
    ('type: "Convolution" data_param { source: "db" batch_size: 4 }', "", 0),
])
def test_source_and_batch_size_of_a_layer(text, source, batch):
    layer = one_layer(f'layer {{ name: "d" top: "t" {text} }}')
    assert source_of(layer) == source
    assert batch_size_of(layer) == batch


def test_set_batch_size_writes_the_types_own_message():
    layer = one_layer('layer { name: "d" type: "CoSData" top: "t" cos_data_param { source: "s" } }')
    set_batch_size(layer, 9)
    assert layer.cos_data_param.batch_size == 9 and not layer.HasField("data_param")
    with pytest.raises(NetDefinitionError, match=r"'i' \(Input\) has no batch size"):
        set_batch_size(one_layer('layer { name: "i" type: "Input" top: "t" }'), 9)


def test_every_row_has_top_shapes_and_other_types_none():
    for name in DATA_LAYERS:
        layer = one_layer(f'layer {{ name: "d" type: "{name}" top: "a" top: "b" }}')
        assert len(declared_top_shapes(layer)) == 2, name
    assert declared_top_shapes(one_layer('layer { name: "r" type: "ReLU" top: "a" }')) is None
