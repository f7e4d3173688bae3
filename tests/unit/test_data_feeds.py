"""Caffe data layers (from real prototxts) resolved to feeds: sources, conversions on first use, CoS."""
from __future__ import annotations

import logging

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from data_fixtures import lmdb_of_images, write_image_list

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net, read_net
from hovcaffe.data.registry import FeedContext, make_feed
from hovcaffe.errors import DataSourceError, UnsupportedLayerError

ZOO_COS = __import__("pathlib").Path(__file__).resolve().parents[1] / "zoo" / "caffeonspark"
TRAIN, TEST = caffe_pb2.TRAIN, caffe_pb2.TEST


def layer_of(net, type_: str, phase: int):
    for layer in net.layer:
        if layer.type == type_ and any(r.phase == phase for r in layer.include):
            return layer
    raise AssertionError(f"no {type_} layer for phase {phase}")


def one_layer(text: str):
    return parse_net(text).layer[0]


@pytest.fixture
def lmdb_src(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (20, 1, 6, 5), dtype=np.uint8)
    path, _ = lmdb_of_images(tmp_path / "mnist_lmdb", images, range(20))
    return path, images


def test_data_layer_converts_lmdb_on_first_use(lmdb_src, tmp_path, caplog):
    path, images = lmdb_src
    layer = one_layer(f'layer {{ name: "mnist" type: "Data" top: "data" top: "label" '
                      f'transform_param {{ scale: 0.00390625 }} '
                      f'data_param {{ source: "{path.name}" batch_size: 8 backend: LMDB }} }}')
    ctx = FeedContext(phase=TEST, base_dir=str(tmp_path))
    with caplog.at_level(logging.INFO, logger="hovcaffe"):
        feed = make_feed(layer, ctx)
    assert "first use" in caplog.text and (tmp_path / "mnist_lmdb.parquet" / "_SUCCESS").exists()
    batch = next(feed)
    assert set(batch) == {"data", "label"} and batch["label"].dtype == torch.float32
    np.testing.assert_array_equal(batch["data"].numpy(),
                                  (images[:8].astype(np.float32) * np.float32(0.00390625)))
    assert batch["label"].tolist() == list(range(8))
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="hovcaffe"):
        make_feed(layer, ctx)   # reuses the conversion
    assert "first use" not in caplog.text


def test_data_layer_reads_parquet_url_and_override(lmdb_src, tmp_path):
    path, images = lmdb_src
    layer = one_layer(f'layer {{ name: "d" type: "Data" top: "data" top: "label" '
                      f'data_param {{ source: "{path}" batch_size: 4 backend: LMDB }} }}')
    make_feed(layer, FeedContext(phase=TEST))   # converts next to the LMDB
    url = f"file://{path}.parquet"
    layer.data_param.source = url
    feed = make_feed(layer, FeedContext(phase=TRAIN, rank=1, world_size=2, seed=0))
    assert next(feed)["label"].tolist() == [1, 3, 5, 7]   # Caffe's order, record i to rank i mod 2
    layer.data_param.source = "/nonexistent/lmdb"
    feed = make_feed(layer, FeedContext(phase=TEST, source_override=url))
    assert next(feed)["label"].tolist() == [0, 1, 2, 3]


def test_image_data_layer(tmp_path):
    list_path, images, labels, names = write_image_list(tmp_path, n=7, shape=(3, 12, 10))
    text = (f'layer {{ name: "img" type: "ImageData" top: "data" top: "label" '
            f'image_data_param {{ source: "{list_path}" root_folder: "{tmp_path}/" batch_size: 7 '
            f'new_height: 6 new_width: 4 is_color: false shuffle: true }} }}')
    test_batch = next(make_feed(one_layer(text), FeedContext(phase=TEST)))
    assert test_batch["data"].shape == (7, 1, 6, 4)
    assert test_batch["label"].tolist() == labels.tolist()          # TEST: list order
    # TRAIN: each batch of 7 is one epoch in a new shuffled order. Rows are told apart by their
    # pixels (the TEST batch holds them in list order, resized the same way).
    reference = test_batch["data"].numpy().reshape(7, -1)

    def epoch_orders(seed: int) -> list[list[int]]:
        train = make_feed(one_layer(text), FeedContext(phase=TRAIN, seed=seed))
        orders = []
        for _ in range(3):
            batch = next(train)
            rows = batch["data"].numpy().reshape(7, -1)
            order = [int(np.flatnonzero((reference == row).all(axis=1))[0]) for row in rows]
            assert batch["label"].tolist() == labels[order].tolist()   # labels travel with images
            orders.append(order)
        return orders

    orders = epoch_orders(seed=1)
    assert all(sorted(o) == list(range(7)) for o in orders)   # every image once per epoch
    assert any(o != list(range(7)) for o in orders)          # not the list order
    assert len({tuple(o) for o in orders}) > 1               # reshuffled between epochs
    assert epoch_orders(seed=1) == orders                    # the seed fixes the order


def test_memory_data_lmdb_source_class_from_zoo(lmdb_src):
    path, images = lmdb_src
    layer = layer_of(read_net(ZOO_COS / "lenet_memory_train_test.prototxt"), "MemoryData", TEST)
    assert layer.source_class == "com.yahoo.ml.caffe.LMDB"
    layer.memory_data_param.source = f"file:{path}/"   # CaffeOnSpark's file:/abs spelling
    layer.memory_data_param.batch_size = 5
    batch = next(make_feed(layer, FeedContext(phase=TEST)))
    np.testing.assert_array_equal(batch["data"].numpy(), images[:5] * np.float32(0.00390625))


def _dataframe(tmp_path, name, columns) -> str:
    folder = tmp_path / name
    folder.mkdir()
    table = pa.table(columns)
    pq.write_table(table.slice(0, 6), folder / "part-00000-abc.snappy.parquet")
    pq.write_table(table.slice(6), folder / "part-00001-abc.snappy.parquet")
    (folder / "_SUCCESS").write_bytes(b"")
    return str(folder)


def test_memory_data_image_dataframe_from_zoo(tmp_path):
    rng = np.random.default_rng(3)
    images = rng.integers(0, 256, (10, 1, 28, 28), dtype=np.uint8)
    source = _dataframe(tmp_path, "mnist_df", {
        "id": [f"s{i}" for i in range(10)], "label": [str(i % 10) for i in range(10)],
        "data": [img.tobytes() for img in images]})
    layer = layer_of(read_net(ZOO_COS / "lenet_dataframe_train_test.prototxt"), "MemoryData", TEST)
    layer.memory_data_param.source = source
    layer.memory_data_param.batch_size = 10
    batch = next(make_feed(layer, FeedContext(phase=TEST)))
    np.testing.assert_array_equal(batch["data"].numpy(), images * np.float32(0.00390625))
    assert batch["label"].tolist() == [float(i % 10) for i in range(10)]


def test_cos_data_layer_from_zoo(tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (12, 1, 28, 28), dtype=np.uint8)
    source = _dataframe(tmp_path, "cos_df", {"data": [img.tobytes() for img in images],
                                             "label": [str(i % 3) for i in range(12)]})
    layer = layer_of(read_net(ZOO_COS / "lenet_cos_train_test.prototxt"), "CoSData", TEST)
    layer.cos_data_param.source = source
    layer.cos_data_param.batch_size = 12
    feed = make_feed(layer, FeedContext(phase=TEST))
    batch = next(feed)
    np.testing.assert_array_equal(batch["data"].numpy(), images * np.float32(0.00390625))
    assert batch["label"].shape == (12, 1, 1, 1)           # CoS: scalar tops keep C x H x W axes
    assert batch["label"].flatten().tolist() == [float(i % 3) for i in range(12)]
    assert feed.shapes() == {"data": (12, 1, 28, 28), "label": (12, 1, 1, 1)}


def test_cos_data_transposed_array_top(tmp_path):
    source = _dataframe(tmp_path, "seq_df", {"sentence": [[i, i + 1, i + 2] for i in range(8)]})
    layer = one_layer(f'layer {{ name: "d" type: "CoSData" top: "sentence" '
                      f'source_class: "com.yahoo.ml.caffe.DataFrameSource" '
                      f'cos_data_param {{ source: "{source}" batch_size: 4 '
                      f'top {{ name: "sentence" type: INT_ARRAY channels: 3 sample_num_axes: 1 transpose: true }} }} }}')
    feed = make_feed(layer, FeedContext(phase=TEST))
    batch = next(feed)
    assert batch["sentence"].shape == (3, 4) and feed.shapes() == {"sentence": (3, 4)}   # (length, batch)
    assert batch["sentence"][:, 1].tolist() == [1.0, 2.0, 3.0]
    assert len(list(feed)) == 1   # the rest of the pass: 4 more rows, then StopIteration


def test_unsupported_and_bad_sources(tmp_path, lmdb_src):
    layer = one_layer('layer { name: "d" type: "MemoryData" top: "data" top: "label" '
                      'source_class: "com.yahoo.ml.caffe.SeqImageDataSource" '
                      'memory_data_param { source: "/x" batch_size: 2 channels: 1 height: 2 width: 2 } }')
    with pytest.raises(UnsupportedLayerError, match="SeqImageDataSource.*SequenceFiles"):
        make_feed(layer, FeedContext(phase=TEST))
    layer = one_layer('layer { name: "m" type: "MemoryData" top: "data" top: "label" '
                      'memory_data_param { batch_size: 2 channels: 1 height: 2 width: 2 } }')
    with pytest.raises(DataSourceError, match="MemoryData layer 'm' has no source"):
        make_feed(layer, FeedContext(phase=TEST))
    (tmp_path / "leveldb").mkdir()
    (tmp_path / "leveldb" / "CURRENT").write_text("MANIFEST-000001\n")
    layer = one_layer(f'layer {{ name: "d" type: "Data" top: "data" '
                      f'data_param {{ source: "{tmp_path}/leveldb" batch_size: 2 }} }}')
    with pytest.raises(DataSourceError, match="LevelDB"):
        make_feed(layer, FeedContext(phase=TEST))
    layer.data_param.source = str(tmp_path / "missing_lmdb")
    with pytest.raises(DataSourceError, match="missing_lmdb.*does not exist"):
        make_feed(layer, FeedContext(phase=TEST))
    layer = one_layer('layer { name: "w" type: "WindowData" top: "data" }')
    with pytest.raises(UnsupportedLayerError, match="WindowData.*supported data layer types: .*CoSData"):
        make_feed(layer, FeedContext(phase=TEST))


def test_data_layer_reuses_an_existing_conversion(lmdb_src, tmp_path, caplog):
    from hovcaffe.data.convert import convert_source, make_source

    path, images = lmdb_src
    convert_source(make_source("lmdb", str(path), codec="png"), f"{path}.parquet")   # done by hand earlier
    layer = one_layer(f'layer {{ name: "d" type: "Data" top: "data" top: "label" '
                      f'data_param {{ source: "{path}" batch_size: 3 backend: LMDB }} }}')
    with caplog.at_level(logging.INFO, logger="hovcaffe"):
        batch = next(make_feed(layer, FeedContext(phase=TEST)))
    assert "first use" not in caplog.text
    np.testing.assert_array_equal(batch["data"].numpy(), images[:3])
