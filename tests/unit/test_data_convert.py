"""Conversions run in-process (LocalExecutor): rows, determinism, up-to-date skips, commit, errors.

The same conversions through real Spark partitions are in tests/spark/test_convert.py.
"""
from __future__ import annotations

import os
import time

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner
from data_fixtures import (float_datum, lmdb_of_images, raw_datum, read_rows, write_hdf5_list,
                           write_image_list, write_lmdb, write_mnist)

from hovcaffe.data.convert import convert_source, make_source, read_info
from hovcaffe.data.writer import WriteOptions
from hovcaffe.errors import DataSourceError

SMALL = WriteOptions(row_group_bytes=4000)


def test_mnist_rows_order_and_metadata(tmp_path):
    src, images, labels = write_mnist(tmp_path / "src", n=50)
    report = convert_source(make_source("mnist", str(src)), str(tmp_path / "ds"), records_per_file=16,
                            options=SMALL)
    assert (report.count, report.files, report.skipped) == (50, 4, 0)
    rows = read_rows(tmp_path / "ds")
    np.testing.assert_array_equal(np.stack(rows["data"]), images[:, None])
    assert rows["label"] == labels.tolist()
    info = read_info(str(tmp_path / "ds"))
    assert info.count == 50 and info.channel_order == "gray" and info.field("data").shape == (1, 28, 28)
    assert sum(sum(f["row_groups"]) for f in info.files) == 50 and report.row_groups > 4
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # temp folder renamed away


def test_conversion_is_deterministic(tmp_path):
    src, *_ = write_mnist(tmp_path / "src", n=40)
    for name in ("a", "b"):
        convert_source(make_source("mnist", str(src)), str(tmp_path / name), records_per_file=15, options=SMALL)
    files_a = sorted(p.name for p in (tmp_path / "a").glob("part-*"))
    assert files_a == sorted(p.name for p in (tmp_path / "b").glob("part-*"))
    for name in files_a:
        assert pq.read_table(tmp_path / "a" / name).equals(pq.read_table(tmp_path / "b" / name))


def test_skips_when_up_to_date_and_reconverts_when_source_changes(tmp_path):
    src, *_ = write_mnist(tmp_path / "src", n=20)
    dest = str(tmp_path / "ds")
    assert not convert_source(make_source("mnist", str(src)), dest).up_to_date
    assert convert_source(make_source("mnist", str(src)), dest).up_to_date
    later = time.time() + 5
    os.utime(src, (later, later))
    assert not convert_source(make_source("mnist", str(src)), dest).up_to_date   # source newer
    other_labels = tmp_path / "src" / "copy-labels"
    other_labels.write_bytes((tmp_path / "src" / "train-labels-idx1-ubyte").read_bytes())
    assert not convert_source(make_source("mnist", str(src), labels_url=str(other_labels)), dest).up_to_date


def test_lmdb_raw_encoded_and_corrupt_records(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (9, 3, 10, 12), dtype=np.uint8)
    path, expected = lmdb_of_images(tmp_path / "db", images, range(9), encoded_every=3, ext=".jpg")
    # The first record is encoded, so encoded records stay JPEG bytes and raw ones get PNG-encoded.
    convert_source(make_source("lmdb", str(path)), str(tmp_path / "ds"))
    rows = read_rows(tmp_path / "ds")
    for got, want in zip(rows["data"], expected):
        np.testing.assert_array_equal(got, want)
    assert rows["label"] == list(range(9)) and rows["id"] == [f"{i:08d}" for i in range(9)]
    assert read_info(str(tmp_path / "ds")).field("data").codec == "image"

    records = [(b"a", raw_datum(images[0], 1)), (b"b", b"\xff\x00garbage"), (b"c", raw_datum(images[2], 3))]
    write_lmdb(tmp_path / "bad", records)
    with pytest.raises(DataSourceError, match=r"(?s)1 bad record.*key b"):
        convert_source(make_source("lmdb", str(tmp_path / "bad")), str(tmp_path / "bad_ds"))
    assert not (tmp_path / "bad_ds").exists()
    report = convert_source(make_source("lmdb", str(tmp_path / "bad")), str(tmp_path / "bad_ds"), on_error="skip")
    assert report.count == 2 and report.skipped == 1 and "key b" in report.errors[0][0]
    assert read_rows(tmp_path / "bad_ds")["label"] == [1, 3]


def test_lmdb_float_datums(tmp_path):
    values = np.random.default_rng(1).standard_normal((4, 2, 3, 5)).astype(np.float32)
    write_lmdb(tmp_path / "db", [(f"{i}".encode(), float_datum(v, i)) for i, v in enumerate(values)])
    convert_source(make_source("lmdb", str(tmp_path / "db")), str(tmp_path / "ds"))
    np.testing.assert_array_equal(np.stack(read_rows(tmp_path / "ds")["data"]), values)


def test_failed_conversion_keeps_previous_dataset(tmp_path):
    images = np.zeros((2, 1, 4, 4), np.uint8)
    write_lmdb(tmp_path / "db", [(b"a", raw_datum(images[0], 1)), (b"b", raw_datum(images[1], 2))])
    convert_source(make_source("lmdb", str(tmp_path / "db")), str(tmp_path / "ds"))
    write_lmdb(tmp_path / "db", [(b"c", b"\x01corrupt")])
    with pytest.raises(DataSourceError):
        convert_source(make_source("lmdb", str(tmp_path / "db")), str(tmp_path / "ds"))
    assert read_rows(tmp_path / "ds")["label"] == [1, 2]
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]


@pytest.mark.parametrize("codec", ["auto", "raw", "png"])
def test_image_list_codecs_store_the_same_pixels(tmp_path, codec):
    list_path, images, labels, names = write_image_list(tmp_path, n=5, spaces=True)
    convert_source(make_source("imagelist", str(list_path), root_folder=f"{tmp_path}/", codec=codec),
                   str(tmp_path / "ds"))
    rows = read_rows(tmp_path / "ds")
    np.testing.assert_array_equal(np.stack(rows["data"]), images)
    assert rows["label"] == labels.tolist() and rows["id"] == names


def test_image_list_resize_matches_opencv(tmp_path):
    import cv2

    list_path, images, labels, names = write_image_list(tmp_path, n=3, shape=(3, 12, 10))
    convert_source(make_source("imagelist", str(list_path), root_folder=f"{tmp_path}/", new_height=7,
                               new_width=5), str(tmp_path / "ds"))
    got = read_rows(tmp_path / "ds")["data"]
    for img, name in zip(got, names):
        want = cv2.resize(cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR), (5, 7))
        np.testing.assert_array_equal(img, want.transpose(2, 0, 1))


def test_hdf5_list_rows(tmp_path):
    list_path, arrays = write_hdf5_list(tmp_path)
    report = convert_source(make_source("hdf5", str(list_path)), str(tmp_path / "ds"))
    rows = read_rows(tmp_path / "ds")
    assert report.count == 7
    for name, want in arrays.items():
        np.testing.assert_array_equal(np.stack(rows[name]), want)


# ----------------------------------------------------------------------------- bad sources

def test_missing_source_names_the_path(tmp_path):
    with pytest.raises(DataSourceError, match=f"{tmp_path}/nope.*does not exist"):
        convert_source(make_source("lmdb", f"{tmp_path}/nope"), str(tmp_path / "ds"))


def test_not_an_lmdb(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataSourceError, match=f"{tmp_path}/empty: not an LMDB"):
        convert_source(make_source("lmdb", str(tmp_path / "empty")), str(tmp_path / "ds"))
    (tmp_path / "file.mdb").write_bytes(b"hello, not a database" * 100)
    with pytest.raises(DataSourceError, match=f"{tmp_path}/file.mdb: not an LMDB"):
        convert_source(make_source("lmdb", str(tmp_path / "file.mdb")), str(tmp_path / "ds"))


def test_list_with_missing_images(tmp_path):
    list_path, *_ = write_image_list(tmp_path, n=4)
    os.remove(tmp_path / "img" / "im2.png")
    with pytest.raises(DataSourceError, match=r"(?s)1 listed image.*im2\.png"):
        convert_source(make_source("imagelist", str(list_path), root_folder=f"{tmp_path}/"), str(tmp_path / "ds"))
    report = convert_source(make_source("imagelist", str(list_path), root_folder=f"{tmp_path}/"),
                            str(tmp_path / "ds"), on_error="skip")
    assert report.count == 3 and report.skipped == 1 and "im2.png" in report.errors[0][0]


def test_all_records_bad_fails_even_when_skipping(tmp_path):
    list_path, *_, names = write_image_list(tmp_path, n=2)
    for name in names:
        (tmp_path / name).write_bytes(b"not an image")
    with pytest.raises(DataSourceError, match=r"(?s)list.txt: no record could be converted\n.*2 bad record.*im"):
        convert_source(make_source("imagelist", str(list_path), root_folder=f"{tmp_path}/"), str(tmp_path / "ds"),
                       on_error="skip")
    assert not (tmp_path / "ds").exists()


def test_list_with_bad_line(tmp_path):
    (tmp_path / "list.txt").write_text("a.png 1\nb.png x\n")
    with pytest.raises(DataSourceError, match=r"list.txt:2: expected 'path label'"):
        convert_source(make_source("imagelist", str(tmp_path / "list.txt")), str(tmp_path / "ds"))


def test_cli_no_spark(tmp_path):
    from hovcaffe.cli import main

    src, images, labels = write_mnist(tmp_path / "src", n=12)
    result = CliRunner().invoke(main, ["convert", "mnist", str(src), str(tmp_path / "ds"), "--no-spark"])
    assert result.exit_code == 0, result.output
    assert "12 rows from mnist" in result.output
    assert read_rows(tmp_path / "ds")["label"] == labels.tolist()
    result = CliRunner().invoke(main, ["convert", "lmdb", str(tmp_path / "missing"), str(tmp_path / "x"),
                                       "--no-spark"])
    assert result.exit_code == 2 and "missing" in result.output
