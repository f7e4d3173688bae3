"""Every converter as a real local Spark job: each converted row checked against its source.

One SparkSession (local[2], loopback) for the module. Fixtures are generated here in each format.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from data_fixtures import (lmdb_of_images, read_rows, write_cifar, write_hdf5_list,  # noqa: E402
                           write_image_list, write_mnist)

from hovcaffe.data.convert import convert_source, make_source, read_info  # noqa: E402
from hovcaffe.data.spark import SparkExecutor  # noqa: E402
from hovcaffe.utils.spark import get_spark  # noqa: E402
from hovcaffe.errors import DataSourceError  # noqa: E402

pytestmark = pytest.mark.spark


@pytest.fixture(scope="module")
def spark():
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    session = get_spark("local[2]", app_name="hovcaffe-test-convert",
                        conf={"spark.sql.shuffle.partitions": "2"})
    yield session
    session.stop()


@pytest.fixture(scope="module")
def executor(spark):
    return SparkExecutor(spark)


def test_lmdb_encoded_jpeg_and_raw(tmp_path, executor):
    images = np.random.default_rng(0).integers(0, 256, (23, 3, 14, 11), dtype=np.uint8)
    labels = np.arange(23) % 5
    path, expected = lmdb_of_images(tmp_path / "db", images, labels, encoded_every=2, ext=".jpg")
    report = convert_source(make_source("lmdb", str(path)), str(tmp_path / "ds"), executor=executor,
                            records_per_file=6)
    assert report.files == 4 and report.count == 23
    rows = read_rows(tmp_path / "ds")
    for got, want in zip(rows["data"], expected, strict=True):   # JPEG kept: OpenCV's decode of it
        np.testing.assert_array_equal(got, want)
    assert rows["label"] == labels.tolist()
    assert rows["id"] == [f"{i:08d}" for i in range(23)]


def test_lmdb_raw_only(tmp_path, executor):
    images = np.random.default_rng(1).integers(0, 256, (9, 1, 7, 7), dtype=np.uint8)
    path, _ = lmdb_of_images(tmp_path / "db", images, range(9))
    convert_source(make_source("lmdb", str(path)), str(tmp_path / "ds"), executor=executor, records_per_file=4)
    rows = read_rows(tmp_path / "ds")
    np.testing.assert_array_equal(np.stack(rows["data"]), images)
    assert read_info(str(tmp_path / "ds")).field("data").codec == "ndarray"


def test_image_list_with_pngs(tmp_path, executor):
    list_path, images, labels, names = write_image_list(tmp_path, n=11, shape=(3, 9, 13))
    report = convert_source(make_source("imagelist", str(list_path), root_folder=f"{tmp_path}/", codec="raw"),
                            str(tmp_path / "ds"), executor=executor, records_per_file=4)
    assert report.files == 3
    rows = read_rows(tmp_path / "ds")
    np.testing.assert_array_equal(np.stack(rows["data"]), images)   # BGR, as OpenCV (and Caffe) read it
    assert rows["label"] == labels.tolist() and rows["id"] == names
    assert read_info(str(tmp_path / "ds")).channel_order == "BGR"


def test_hdf5_list(tmp_path, executor):
    list_path, arrays = write_hdf5_list(tmp_path, rows=(5, 4, 3))
    convert_source(make_source("hdf5", str(list_path)), str(tmp_path / "ds"), executor=executor,
                   records_per_file=2)
    rows = read_rows(tmp_path / "ds")
    for name, want in arrays.items():
        np.testing.assert_array_equal(np.stack(rows[name]), want)   # file by file, row by row


def test_mnist_idx_through_the_cli(tmp_path, spark):
    from click.testing import CliRunner

    from hovcaffe.cli import main

    src, images, labels = write_mnist(tmp_path / "src", n=37)
    result = CliRunner().invoke(main, ["convert", "mnist", str(src), str(tmp_path / "ds"), "-master", "local[2]",
                                       "--records-per-file", "10"])
    assert result.exit_code == 0, result.output
    assert "37 rows from mnist" in result.output and "4 file(s)" in result.output
    rows = read_rows(tmp_path / "ds")
    np.testing.assert_array_equal(np.stack(rows["data"]), images[:, None])
    assert rows["label"] == labels.tolist()


def test_cifar_binary(tmp_path, executor):
    paths, images, labels = write_cifar(tmp_path / "cifar", counts=(6, 5))
    report = convert_source(make_source("cifar", ",".join(map(str, paths))), str(tmp_path / "ds"),
                            executor=executor, records_per_file=4)
    assert report.count == 11
    rows = read_rows(tmp_path / "ds")
    np.testing.assert_array_equal(np.stack(rows["data"]), images)   # R, G, B planes as stored
    assert rows["label"] == labels.tolist()
    assert read_info(str(tmp_path / "ds")).channel_order == "RGB"


def test_bad_records_on_spark(tmp_path, executor):
    list_path, images, labels, names = write_image_list(tmp_path, n=6)
    (tmp_path / "img" / "im3.png").write_bytes(b"not a png at all")
    with pytest.raises(DataSourceError, match=r"(?s)1 bad record.*im3\.png"):
        convert_source(make_source("imagelist", str(list_path), root_folder=f"{tmp_path}/"), str(tmp_path / "ds"),
                       executor=executor, records_per_file=2)
    report = convert_source(make_source("imagelist", str(list_path), root_folder=f"{tmp_path}/"),
                            str(tmp_path / "ds"), executor=executor, records_per_file=2, on_error="skip")
    assert report.skipped == 1 and read_rows(tmp_path / "ds")["id"] == [n for n in names if "im3" not in n]
