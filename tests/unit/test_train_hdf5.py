"""The HDF5Data feed: Caffe's row order, batches across files, sharding, resume, path rule."""
from __future__ import annotations

import h5py
import numpy as np
import pytest

from conftest import ORACLE
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import parse_net
from hovcaffe.data.hdf5 import ArrayFileFeed, make_hdf5_feed
from hovcaffe.data.registry import FeedContext, make_feed
from hovcaffe.errors import DataSourceError, UserInputError


def write_h5(path, start, n):
    """Rows numbered start..start+n-1 so the order can be read back from the values."""
    with h5py.File(path, "w") as fh:
        fh["data"] = np.arange(start, start + n, dtype=np.float32)[:, None].repeat(3, 1)
        fh["label"] = np.arange(start, start + n, dtype=np.float32)


def hdf5_layer(source, batch, shuffle=False, tp=False):
    text = f"""layer {{ name: "d" type: "HDF5Data" top: "data" top: "label"
      hdf5_data_param {{ source: "{source}" batch_size: {batch} shuffle: {str(shuffle).lower()} }}
      {'transform_param { scale: 2 }' if tp else ''} }}"""
    return parse_net(text).layer[0]


@pytest.fixture
def two_files(tmp_path):
    write_h5(tmp_path / "a.h5", 0, 5)
    write_h5(tmp_path / "b.h5", 100, 3)
    (tmp_path / "list.txt").write_text("a.h5\nb.h5\n")
    return tmp_path


def labels(feed, n):
    return [next(feed)["label"].numpy().tolist() for _ in range(n)]


def test_row_order_spans_files_and_wraps(two_files, monkeypatch):
    monkeypatch.chdir(two_files)
    feed = make_feed(hdf5_layer("list.txt", 4), FeedContext(phase=caffe_pb2.TRAIN))
    assert labels(feed, 4) == [[0, 1, 2, 3], [4, 100, 101, 102], [0, 1, 2, 3], [4, 100, 101, 102]]
    batch = next(feed)
    assert batch["data"].shape == (4, 3) and batch["data"].dtype.is_floating_point


def test_relative_source_falls_back_to_the_naming_folder(two_files, tmp_path_factory, monkeypatch):
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    ctx = FeedContext(phase=caffe_pb2.TRAIN, base_dir=str(two_files))
    assert labels(make_hdf5_feed(hdf5_layer("list.txt", 3), ctx), 1) == [[0, 1, 2]]
    with pytest.raises(DataSourceError, match="looked at"):
        make_hdf5_feed(hdf5_layer("missing.txt", 3), ctx)


def test_round_robin_shards_partition_the_stream(two_files):
    layer = hdf5_layer(str(two_files / "list.txt"), 2)
    single = np.concatenate(labels(make_hdf5_feed(layer, FeedContext(0)), 8))
    shards = [np.concatenate(labels(make_hdf5_feed(layer, FeedContext(0, rank=r, world_size=2)), 4))
              for r in range(2)]
    np.testing.assert_array_equal(shards[0], single[0::2])
    np.testing.assert_array_equal(shards[1], single[1::2])


def test_shuffle_keeps_files_apart_and_covers_every_row(two_files):
    feed = make_hdf5_feed(hdf5_layer(str(two_files / "list.txt"), 8, shuffle=True),
                          FeedContext(0, seed=3))
    epoch = next(feed)["label"].numpy()  # 8 rows = one pass over both files
    assert sorted(epoch.tolist()) == [0, 1, 2, 3, 4, 100, 101, 102]
    small = epoch < 100  # rows of one file come together (files are never mixed)
    assert small.tolist() in ([True] * 5 + [False] * 3, [False] * 3 + [True] * 5)


def test_state_dict_resumes_the_exact_sequence(two_files):
    layer = hdf5_layer(str(two_files / "list.txt"), 3, shuffle=True)
    feed = make_hdf5_feed(layer, FeedContext(0, seed=11))
    labels(feed, 5)
    saved = feed.state_dict()
    expected = labels(feed, 6)
    other = make_hdf5_feed(layer, FeedContext(0, seed=99))
    other.load_state_dict(saved)
    assert labels(other, 6) == expected


def test_oracle_train_source_reads_all_256_rows(monkeypatch):
    case = ORACLE / "train" / "sgd_inv"
    monkeypatch.chdir(case)  # Caffe's way: cwd = case folder
    feed = make_hdf5_feed(hdf5_layer("train_h5_list.txt", 32), FeedContext(0))
    with h5py.File(ORACLE / "train" / "_data" / "train.h5", "r") as fh:
        data, label = np.asarray(fh["data"]), np.asarray(fh["label"])
    rows = [next(feed) for _ in range(9)]  # 8 batches = 256 rows, then it wraps
    np.testing.assert_array_equal(np.concatenate([r["data"].numpy() for r in rows[:8]]), data)
    np.testing.assert_array_equal(rows[8]["label"].numpy(), label[:32])


def test_errors_name_the_problem(two_files):
    with pytest.raises(UserInputError, match="transform_param"):
        make_hdf5_feed(hdf5_layer(str(two_files / "list.txt"), 2, tp=True), FeedContext(0))
    with h5py.File(two_files / "c.h5", "w") as fh:
        fh["data"] = np.zeros((2, 3), np.float32)
    with pytest.raises(DataSourceError, match="no dataset 'label'"):
        ArrayFileFeed([str(two_files / "c.h5")], ["data", "label"], 2)
