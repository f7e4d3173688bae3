"""Staging and publishing of job outputs: readers see the old output or the whole new one."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from hovcaffe.jobs.location import SUCCESS_MARKER, StepPlace, publish


def test_parse_local_relative_and_file_urls(tmp_path):
    assert StepPlace.parse("a/b.txt", tmp_path).path == tmp_path / "a/b.txt"
    assert StepPlace.parse(f"file://{tmp_path}/x/", Path("/")).path == tmp_path / "x"
    assert StepPlace.parse(f"file://{tmp_path}/x/", Path("/")).is_dir
    remote = StepPlace.parse("memory://bucket/m.caffemodel", tmp_path)
    assert remote.path is None and remote.scheme == "memory"


def test_staged_is_a_hidden_sibling(tmp_path):
    staged = StepPlace.parse("out/model.caffemodel", tmp_path).staged("2024-05-01")
    assert staged.path == tmp_path / "out" / ".tmp-model.2024-05-01.caffemodel"
    d = StepPlace.parse("out/feats/", tmp_path).staged("k")
    assert d.is_dir and d.path == tmp_path / "out" / ".tmp-feats.k"
    assert StepPlace.parse("memory://b/m.bin", tmp_path).staged("k").url == "memory://b/.tmp-m.k.bin"
    # the ending stays, so a step given the staged weights still tells their format by it
    h5 = StepPlace.parse("out/m.caffemodel.h5", tmp_path).staged("2024-05-01")
    assert h5.path.name == ".tmp-m.2024-05-01.caffemodel.h5"


def test_publish_file_replaces_atomically(tmp_path):
    dest = StepPlace.parse("out/model.bin", tmp_path)
    staged = dest.staged("k")
    staged.make_parent()
    staged.path.write_bytes(b"new")
    dest.path.write_bytes(b"old")
    inode_before = os.stat(staged.path).st_ino
    publish(staged, dest)
    assert dest.path.read_bytes() == b"new" and not staged.path.exists()
    assert os.stat(dest.path).st_ino == inode_before  # a rename, not a copy


def test_publish_directory_with_success_marker(tmp_path):
    dest = StepPlace.parse("out/feats/", tmp_path)
    dest.path.mkdir(parents=True)
    (dest.path / "old.json").write_text("old")
    staged = dest.staged("k")
    staged.path.mkdir()
    (staged.path / "part-0.json").write_text("new")
    publish(staged, dest)
    assert sorted(p.name for p in dest.path.iterdir()) == [SUCCESS_MARKER, "part-0.json"]
    assert dest.complete() and not staged.path.exists()
    assert [p.name for p in dest.path.parent.iterdir()] == ["feats"]  # the old copy is gone


def test_publish_remote_file_and_directory(tmp_path):
    fsspec = pytest.importorskip("fsspec", reason="fsspec comes with the test requirements")
    fs = fsspec.filesystem("memory")
    dest = StepPlace.parse("memory://h6-test/models/m.bin", tmp_path)
    staged = dest.staged("k")
    src = tmp_path / "m.bin"
    src.write_bytes(b"weights")
    staged.put_file(src)
    assert not dest.exists()
    publish(staged, dest)
    assert fs.cat("/h6-test/models/m.bin") == b"weights" and not staged.exists()

    ddest = StepPlace.parse("memory://h6-test/feats/", tmp_path)
    dstaged = ddest.staged("k")
    dstaged.child("part-0").put_file(src)
    assert not ddest.complete()
    publish(dstaged, ddest)
    assert ddest.complete() and fs.cat("/h6-test/feats/part-0") == b"weights"
    fs.rm("/h6-test", recursive=True)
