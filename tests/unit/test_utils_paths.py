"""The one path/URL rule (hovcaffe/utils/paths.py), as every room sees it."""
from __future__ import annotations

import os

import pytest

from hovcaffe.data import storage
from hovcaffe.distributed import outputs
from hovcaffe.utils import paths


@pytest.mark.parametrize("text, expected", [
    ("/data/a b/x.h5", "/data/a b/x.h5"),
    ("file:///data/a%20b/x.h5", "/data/a b/x.h5"),
    ("file:/data/x.h5", "/data/x.h5"),         # CaffeOnSpark's spelling
    ("FILE:///data/x.h5", "/data/x.h5"),
    ("hdfs://nn:8020/data/x.h5", None),
    ("s3://bucket/x.h5", None),
])
def test_local_path_of_plain_paths_and_file_urls(text, expected):
    assert paths.local_path(text) == expected
    assert paths.is_local(text) is (expected is not None)


def test_relative_and_home_paths_become_absolute(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.local_path("sub/x") == str(tmp_path / "sub" / "x")
    assert paths.local_path("~/x") == str(tmp_path / "home" / "x")


def test_find_path_tries_the_current_folder_then_the_naming_files_folder(monkeypatch, tmp_path):
    here, there = tmp_path / "cwd", tmp_path / "solver_dir"
    for folder in (here, there):
        folder.mkdir()
    (there / "only_there.txt").write_text("x")
    (here / "both.txt").write_text("x")
    (there / "both.txt").write_text("x")
    monkeypatch.chdir(here)
    assert paths.find_path("only_there.txt", there) == there / "only_there.txt"
    assert os.path.abspath(paths.find_path("both.txt", there)) == str(here / "both.txt")
    assert paths.find_path("nowhere.txt", there) is None
    assert paths.find_path("hdfs://nn/x", there) is None


def test_url_folders_and_children():
    assert paths.url_dirname("hdfs://nn/models/lenet.caffemodel") == "hdfs://nn/models"
    assert paths.url_dirname("s3://b/models/") == "s3://b"
    assert paths.url_dirname("/tmp/models/lenet.caffemodel") == "/tmp/models"
    assert paths.url_join("hdfs://nn/models/", "a.caffemodel") == "hdfs://nn/models/a.caffemodel"
    assert paths.url_join("/tmp/models", "a.caffemodel") == "/tmp/models/a.caffemodel"


def test_storage_and_the_distributed_outputs_use_the_same_rule(tmp_path):
    url = f"file://{tmp_path}/a%20b.bin"
    assert storage.resolve(url).path == paths.local_path(url) == str(tmp_path / "a b.bin")
    assert outputs.local_path(url) == paths.local_path(url)
    assert outputs.is_local("hdfs://nn/x") is False and outputs.is_local(url) is True


def test_job_specs_read_urls_by_the_same_rule(tmp_path):
    from hovcaffe.jobs.location import StepPlace

    # A colon in a file name is no URL scheme, here as for data sources (relative: the spec's folder).
    assert StepPlace.parse("model:v2.caffemodel", tmp_path).path == tmp_path / "model:v2.caffemodel"
    assert StepPlace.parse(f"file://{tmp_path}/a%20b/", tmp_path).path == tmp_path / "a b"
    assert StepPlace.parse("hdfs://nn/models/m.caffemodel", tmp_path).path is None
