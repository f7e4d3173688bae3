"""Data URLs: plain paths, file:// and CaffeOnSpark's file:/ spelling, relative paths, HDFS, S3."""
from __future__ import annotations

import importlib.util
import os

import pyarrow.fs as pafs
import pytest
from data_fixtures import write_mnist

from hovcaffe.data.convert import convert_source, make_source
from hovcaffe.data.reader import make_batch_iterator
from hovcaffe.data.storage import require, resolve
from hovcaffe.errors import DataSourceError


def test_local_spellings_resolve_to_the_same_path(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    paths = {resolve(u).path for u in (str(tmp_path / "f.txt"), f"file://{tmp_path}/f.txt",
                                       f"file:{tmp_path}/f.txt")}
    assert paths == {str(tmp_path / "f.txt")}
    assert resolve(str(tmp_path)).is_local


def test_relative_paths_try_cwd_then_base_dir(tmp_path, monkeypatch):
    (tmp_path / "net").mkdir()
    (tmp_path / "net" / "list.txt").write_text("x")
    monkeypatch.chdir(tmp_path)
    assert resolve("list.txt", base_dir=str(tmp_path / "net")).path == str(tmp_path / "net" / "list.txt")
    (tmp_path / "list.txt").write_text("y")
    assert resolve("list.txt", base_dir=str(tmp_path / "net")).path == str(tmp_path / "list.txt")


def test_missing_location_is_named(tmp_path):
    with pytest.raises(DataSourceError, match=f"'{tmp_path}/none' does not exist"):
        require(f"{tmp_path}/none")


def test_unknown_scheme():
    with pytest.raises(DataSourceError, match="nosuchscheme"):
        resolve("nosuchscheme://bucket/data")


HDFS_URL = os.environ.get("HOVCAFFE_TEST_HDFS")  # e.g. hdfs://namenode:8020/tmp/hovcaffe-test


@pytest.mark.skipif(not HDFS_URL, reason="no HDFS here: set HOVCAFFE_TEST_HDFS=hdfs://host:port/writable/dir "
                                          "(needs libhdfs, Java and CLASSPATH=$(hadoop classpath --glob))")
def test_hdfs_round_trip(tmp_path):
    src, images, labels = write_mnist(tmp_path / "src", n=20)
    dest = HDFS_URL.rstrip("/") + "/mnist_pq"
    convert_source(make_source("mnist", str(src)), dest, force=True)
    batch = next(make_batch_iterator(dest, phase=1, batch_size=20))
    assert batch["label"].tolist() == labels.tolist()


def test_hdfs_without_client_gives_a_clear_error():
    if HDFS_URL:
        pytest.skip("an HDFS is configured")
    try:
        pafs.HadoopFileSystem("default")
    except Exception:   # the expected case here: no libhdfs / Hadoop client
        with pytest.raises(DataSourceError, match="hdfs://.*Hadoop client"):
            resolve("hdfs://localhost:9/x")
    else:
        pytest.skip("a Hadoop client is installed")


@pytest.mark.skipif(importlib.util.find_spec("s3fs") is None, reason="s3fs is not installed")
def test_s3_goes_through_s3fs():
    loc = resolve("s3://some-bucket/some/key")
    assert isinstance(loc.fs, pafs.PyFileSystem) and loc.path == "some-bucket/some/key"


@pytest.mark.parametrize("text, url", [
    ("hdfs://nn:8020/d", True), ("s3://b/k", True), ("file:///abs/x", True), ("file:/abs/x", True),
    ("/abs/x", False), ("rel/x", False), ("model:v2.caffemodel", False), ("runs/10:30/x", False),
])
def test_one_url_rule_for_the_whole_project(text, url):
    from hovcaffe.data import storage
    from hovcaffe.utils import paths

    assert paths.is_url(text) is url and storage.is_url(text) is url
