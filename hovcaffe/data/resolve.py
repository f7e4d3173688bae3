"""From a data layer's ``source`` to a Parquet dataset URL, converting on first use.

A source may already be a dataset (a folder of Parquet files, ours or Petastorm's or a Spark
DataFrame's). An LMDB folder or an image-list file is converted once into a cache folder next to
it (``<source>.parquet``; under ``$HOVCAFFE_CACHE`` or ``~/.cache/hovcaffe/datasets`` when that
folder is not writable), and later runs reuse the conversion while it is newer than the source.
Ranks on one machine take a file lock, so only one of them converts.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import logging
import os
from typing import Any, Iterator

import pyarrow.fs as pafs

from hovcaffe.data import storage
from hovcaffe.data.convert import convert_source, is_up_to_date
from hovcaffe.data.schema import INFO_FILE
from hovcaffe.data.sources import ImageListSource, LmdbSource
from hovcaffe.errors import DataSourceError

log = logging.getLogger(__name__)
CACHE_SUFFIX = ".parquet"


def source_kind(loc: storage.Location) -> str:
    """``"dataset"``, ``"lmdb"``, ``"leveldb"`` or ``"file"`` (a list file) for an existing location."""
    info = loc.info()
    if info.type == pafs.FileType.Directory:
        names = {i.base_name for i in loc.list_files()}
        if INFO_FILE in names or "_common_metadata" in names or any(n.endswith(".parquet") for n in names):
            return "dataset"
        if "data.mdb" in names:
            return "lmdb"
        if "CURRENT" in names:
            return "leveldb"
        if any(n.startswith("part-") for n in names):
            return "dataset"
        raise DataSourceError(f"{loc.url}: a folder that is neither a Parquet dataset nor an LMDB "
                              f"(found: {', '.join(sorted(names)[:6]) or 'nothing'})")
    if loc.path.endswith(".mdb"):
        return "lmdb"
    return "file"


def dataset_url(source: str, *, base_dir: str | None, layer_name: str, expect: str,
                **list_options: Any) -> str:
    """The dataset URL for a data layer's source, converting it first if needed.

    Args:
        source: the layer's source (or the CLI override).
        base_dir: folder of the prototxt (relative sources are tried there after the cwd).
        layer_name: for messages.
        expect: ``"lmdb"`` (Data / source_class LMDB) or ``"imagelist"`` (ImageData): what a
            non-dataset source must be.
        list_options: ImageData conversion options (root_folder, new_height, new_width, is_color).

    Raises:
        DataSourceError: missing source, unreadable or of the wrong kind (the URL is named).
    """
    if not source:
        raise DataSourceError(f"data layer {layer_name!r} has no source; set it in the prototxt or pass "
                              f"--train-data/--test-data (-input) with a dataset URL")
    loc = storage.require(source, base_dir, what=f"data layer {layer_name!r} source")
    kind = source_kind(loc)
    if kind == "dataset":
        return loc.url if storage.is_url(loc.url) else loc.path
    if kind == "leveldb":
        raise DataSourceError(f"{source}: data layer {layer_name!r} names a LevelDB database; hovcaffe "
                              f"reads LMDB (rebuild it with Caffe's tools and -backend lmdb) or Parquet")
    if expect == "lmdb" and kind != "lmdb":
        raise DataSourceError(f"{source}: data layer {layer_name!r} expects an LMDB folder or a Parquet "
                              f"dataset, but this is a file that is neither")
    if kind == "lmdb":
        src = LmdbSource(loc.path)
        what = "LMDB"
    else:
        src = ImageListSource(loc.path if loc.is_local else loc.url, base_dir=base_dir, **list_options)
        what = "image list"
    return _convert_cached(src, loc, layer_name, what)


def cache_location(loc: storage.Location, options: dict[str, Any]) -> str:
    """Where the first-use conversion of `loc` goes."""
    beside = loc.path.rstrip("/") + CACHE_SUFFIX
    parent = os.path.dirname(beside)
    if loc.is_local and os.access(parent, os.W_OK):
        return beside
    key = hashlib.sha1(f"{loc.url}|{sorted(options.items())}".encode()).hexdigest()[:16]
    root = os.environ.get("HOVCAFFE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "hovcaffe",
                                                            "datasets")
    return os.path.join(root, f"{os.path.basename(loc.path.rstrip('/'))}-{key}{CACHE_SUFFIX}")


def _convert_cached(src, loc: storage.Location, layer_name: str, what: str) -> str:
    dest = cache_location(loc, src.options())
    # Any complete conversion there is fine whatever codec it chose (e.g. `hovcaffe convert --codec raw`).
    if is_up_to_date(src, dest, ignore=("codec",)):
        return dest
    with _file_lock(dest + ".lock"):
        if is_up_to_date(src, dest, ignore=("codec",)):  # another rank converted it meanwhile
            return dest
        log.info("data layer %r: converting %s %s to Parquet at %s (first use; later runs reuse it)",
                 layer_name, what, loc.url, dest)
        report = convert_source(src, dest)
        log.info("data layer %r: %s", layer_name, report.summary())
    return dest


@contextlib.contextmanager
def _file_lock(path: str) -> Iterator[None]:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with open(path, "a+") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)
