"""The reader's and the cache's environment variables, each through the path a run takes (the data
layer's feed, ``hovcaffe.data.feeds``), with the rows compared against the source arrays:

* ``HOVCAFFE_SHARD``: which rows a rank of a 2-rank run gets (``rows`` vs ``row_groups``);
* ``HOVCAFFE_READER_WORKERS`` / ``HOVCAFFE_READER_PREFETCH``: the reader runs with those
  settings and still yields the same rows in the same (seeded, shuffled) order;
* ``HOVCAFFE_CACHE``: where a list file's first-use conversion goes when its own folder cannot be
  written.

The fast path's ``fast_path.json`` under ``$HOVCAFFE_CACHE`` is tested in test_runtime_fastpath.py.
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import numpy as np
import pytest
from google.protobuf import text_format

sys.path.insert(0, str(Path(__file__).resolve().parent))
from data_fixtures import write_image_list, write_mnist  # noqa: E402

from hovcaffe.caffe import caffe_pb2 as pb  # noqa: E402
from hovcaffe.data.convert import convert_source, make_source  # noqa: E402
from hovcaffe.data.dataset import open_dataset  # noqa: E402
from hovcaffe.data.registry import FeedContext, make_feed  # noqa: E402

ENV_VARS = ("HOVCAFFE_SHARD", "HOVCAFFE_READER_WORKERS", "HOVCAFFE_READER_PREFETCH", "HOVCAFFE_CACHE")
N, PER_GROUP = 24, 3   # 8 row groups of 3 rows


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    for name in ENV_VARS:
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def digits(tmp_path_factory) -> tuple[str, np.ndarray]:
    """An MNIST idx file converted to Parquet, one row group per 3 records; (URL, images)."""
    root = tmp_path_factory.mktemp("digits")
    img_path, images, _ = write_mnist(root / "raw", n=N, rows=5, cols=4, seed=7)
    dest = str(root / "ds")
    convert_source(make_source("mnist", str(img_path)), dest, records_per_file=PER_GROUP)
    assert list(open_dataset(dest).group_sizes) == [PER_GROUP] * (N // PER_GROUP)   # the shard test's premise
    return dest, images


def _layer(text: str) -> pb.LayerParameter:
    return text_format.Parse(text, pb.LayerParameter())


def _row_ids(batches: Iterator[dict], images: np.ndarray, count: int) -> list[int]:
    """The source index of each of the next `count` samples (matched by their pixels)."""
    flat = images.reshape(len(images), -1).astype(np.float32)
    ids: list[int] = []
    while len(ids) < count:
        data = next(batches)["data"].reshape(-1, flat.shape[1]).numpy()
        for row in data:
            (match,) = np.flatnonzero((flat == row).all(axis=1))
            ids.append(int(match))
    return ids[:count]


DATA_LAYER = 'name: "d" type: "Data" top: "data" top: "label" data_param {{ source: "{src}" batch_size: 4 }}'


def test_hovcaffe_shard_chooses_which_rows_a_rank_reads(digits, monkeypatch):
    url, images = digits
    ctx = FeedContext(phase=pb.TRAIN, rank=1, world_size=2, seed=0)
    layer = _layer(DATA_LAYER.format(src=url))
    # Data reads in stored order (Caffe reads its LMDB sequentially), so the shares are exact.
    default = make_feed(layer, ctx)
    assert _row_ids(iter(default), images, 12) == list(range(1, 24, 2))   # records i ≡ 1 (mod 2)
    default.close()
    monkeypatch.setenv("HOVCAFFE_SHARD", "row_groups")
    groups = make_feed(layer, ctx)
    # row groups 1, 3, 5, 7 of 3 rows each, then the next epoch of the same groups
    own = [g * PER_GROUP + i for g in (1, 3, 5, 7) for i in range(PER_GROUP)]
    assert _row_ids(iter(groups), images, 16) == own + own[:4]
    groups.close()
    monkeypatch.setenv("HOVCAFFE_SHARD", "rows")
    explicit = make_feed(layer, ctx)
    assert _row_ids(iter(explicit), images, 12) == list(range(1, 24, 2))
    explicit.close()


SHUFFLED = ('name: "d" type: "ImageData" top: "data" top: "label" '
            'image_data_param {{ source: "{src}" batch_size: 5 shuffle: true }}')


def test_reader_workers_and_prefetch_keep_the_rows_and_their_order(digits, monkeypatch):
    url, images = digits
    ctx = FeedContext(phase=pb.TRAIN, rank=0, world_size=1, seed=11)
    layer = _layer(SHUFFLED.format(src=url))
    for name, value in (("HOVCAFFE_READER_WORKERS", "0"), ("HOVCAFFE_READER_PREFETCH", "0")):
        monkeypatch.setenv(name, value)
    feed = make_feed(layer, ctx)
    assert (feed.workers, feed.prefetch) == (0, 0)   # decoded and batched in this thread
    inline = _row_ids(iter(feed), images, 3 * N)       # three epochs
    feed.close()
    assert inline[:N] != list(range(N)) and sorted(inline[:N]) == list(range(N))  # shuffled, each once
    assert inline[N:2 * N] != inline[:N]                 # each epoch its own order

    monkeypatch.setenv("HOVCAFFE_READER_WORKERS", "3")
    monkeypatch.setenv("HOVCAFFE_READER_PREFETCH", "4")
    feed = make_feed(layer, ctx)
    assert (feed.workers, feed.prefetch) == (3, 4)
    assert _row_ids(iter(feed), images, 3 * N) == inline
    feed.close()


@pytest.fixture
def read_only_list(tmp_path) -> Iterator[tuple[Path, np.ndarray]]:
    """An image list and its PNGs in a folder this process cannot write: a read-only tmpfs for
    root (root ignores mode bits), a mode-555 folder for anyone else."""
    folder = tmp_path / "ro"
    folder.mkdir()
    mounted = os.geteuid() == 0
    if mounted:
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(folder)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    try:
        list_path, images, _, _ = write_image_list(folder, n=5, shape=(3, 6, 7))
        if mounted:
            subprocess.run(["mount", "-o", "remount,ro", str(folder)], check=True)
        else:
            folder.chmod(0o555)
        assert not os.access(folder, os.W_OK)
        yield list_path, images
    finally:
        if mounted:
            subprocess.run(["umount", str(folder)], check=True)
        else:
            folder.chmod(0o755)


def test_hovcaffe_cache_holds_conversions_that_cannot_go_beside_the_source(read_only_list, tmp_path,
                                                                            monkeypatch):
    list_path, images = read_only_list
    cache = tmp_path / "cache"
    monkeypatch.setenv("HOVCAFFE_CACHE", str(cache))
    layer = _layer(f'name: "d" type: "ImageData" top: "data" top: "label" '
                   f'image_data_param {{ source: "{list_path}" root_folder: "{list_path.parent}/" '
                   f'batch_size: 5 }}')
    feed = make_feed(layer, FeedContext(phase=pb.TEST, base_dir=str(list_path.parent)))
    (converted,) = [p for p in cache.iterdir() if p.suffix == ".parquet"]
    assert converted.name.startswith("list.txt-")
    np.testing.assert_array_equal(next(iter(feed))["data"].numpy(), images.astype(np.float32))
    feed.close()
    # the same conversion is found again (not redone) by a second feed
    stamp = converted.stat().st_mtime_ns
    make_feed(layer, FeedContext(phase=pb.TEST, base_dir=str(list_path.parent))).close()
    assert [p for p in cache.iterdir() if p.suffix == ".parquet"] == [converted]
    assert converted.stat().st_mtime_ns == stamp
