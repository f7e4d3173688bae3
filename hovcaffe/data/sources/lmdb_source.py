"""LMDB databases of Caffe ``Datum`` records (what ``convert_imageset`` and Caffe's examples write).

A Datum holds either raw uint8 pixels (C×H×W), float pixels (``float_data``), or an encoded image
(``encoded: true``, JPEG/PNG bytes), plus an integer label. Records are read in key order, as
Caffe's Data layer reads them.

The ``lmdb`` package opens local files only; on a cluster the database must be on a filesystem the
executors mount at the same path (CaffeOnSpark copied it to every node instead).
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import numpy as np

from hovcaffe.data.schema import FieldSpec, image_field, scalar_field
from hovcaffe.data.sources.base import (Encoded, Record, RecordError, SourcePlan, records_per_task)
from hovcaffe.data.storage import require
from hovcaffe.errors import DataSourceError

CODECS = ("auto", "raw", "png")


@dataclasses.dataclass
class LmdbSource:
    """Converter source for an LMDB of Datums.

    Attributes:
        url: the LMDB folder (with ``data.mdb``) or the data file itself; local paths only.
        codec: ``auto`` keeps records as they are (encoded stay encoded, raw stay raw);
            ``raw`` decodes encoded records to C×H×W uint8; ``png`` stores raw records as PNG.
    """

    url: str
    codec: str = "auto"
    kind = "lmdb"

    def __post_init__(self):
        if self.codec not in CODECS:
            raise DataSourceError(f"{self.url}: codec {self.codec!r} is not one of {CODECS} for LMDB")

    def options(self) -> dict[str, Any]:
        return {"codec": self.codec}

    def inputs(self) -> list[str]:
        return [self.url]

    def _path(self) -> str:
        loc = require(self.url, what="LMDB")
        if not loc.is_local:
            raise DataSourceError(f"{self.url}: LMDB databases are read from local (or mounted) "
                                  f"filesystems only; copy it to a local path first")
        return loc.path

    def _open(self):
        import lmdb

        path = self._path()
        subdir = os.path.isdir(path)
        if subdir and not os.path.exists(os.path.join(path, "data.mdb")):
            if os.path.exists(os.path.join(path, "CURRENT")):
                raise DataSourceError(f"{self.url}: is a LevelDB database; hovcaffe reads LMDB only "
                                      f"(rebuild it with Caffe's tools and -backend lmdb)")
            raise DataSourceError(f"{self.url}: not an LMDB database (no data.mdb inside)")
        try:
            return lmdb.open(path, subdir=subdir, readonly=True, lock=False, readahead=False,
                             max_readers=512)
        except lmdb.Error as exc:
            raise DataSourceError(f"{self.url}: not an LMDB database ({exc})") from exc

    def plan(self, per_task: int | None) -> SourcePlan:
        from hovcaffe.caffe import caffe_pb2

        env = self._open()
        try:
            with env.begin(buffers=False) as txn:
                count = txn.stat()["entries"]
                if count == 0:
                    raise DataSourceError(f"{self.url}: the LMDB database is empty")
                cursor = txn.cursor()
                cursor.first()
                first = cursor.value()
                n_task = records_per_task(count, len(first), per_task)
                tasks = []
                for i, key in enumerate(cursor.iternext(keys=True, values=False)):
                    if i % n_task == 0:
                        tasks.append((bytes(key), min(n_task, count - i)))
        finally:
            env.close()
        try:
            datum = caffe_pb2.Datum.FromString(first)
        except Exception as exc:  # protobuf's DecodeError, or garbage that parses as nothing useful
            raise DataSourceError(f"{self.url}: first record is not a Caffe Datum ({exc})") from exc
        return SourcePlan(fields=self._fields(datum), tasks=tasks, count=count, tops=["data", "label"],
                          record_bytes=len(first))

    def _fields(self, datum) -> list[FieldSpec]:
        if len(datum.float_data):
            if self.codec == "png":
                raise DataSourceError(f"{self.url}: float Datums cannot be stored as PNG")
            data = image_field("data", "ndarray", (datum.channels, datum.height, datum.width), "float32")
        elif datum.encoded:
            data = (image_field("data", "ndarray", (None, None, None)) if self.codec == "raw"
                    else image_field("data", "image", (None, None, None)))
        else:
            shape = (datum.channels, datum.height, datum.width)
            data = image_field("data", "image" if self.codec == "png" else "ndarray", shape)
        return [data, scalar_field("label", "int32"), scalar_field("id", "str")]

    def read(self, task: tuple[bytes, int]) -> Iterator[Record | RecordError]:
        from hovcaffe.caffe import caffe_pb2

        start, n = task
        env = self._open()
        try:
            with env.begin(buffers=False) as txn:
                cursor = txn.cursor()
                if not cursor.set_key(start):
                    raise DataSourceError(f"{self.url}: key {start!r} vanished during the conversion")
                for _ in range(n):
                    key, value = cursor.item()
                    ident = key.decode("utf-8", "backslashreplace")
                    try:
                        yield Record(ident, datum_values(caffe_pb2.Datum.FromString(value)))
                    except Exception as exc:  # DecodeError / size mismatch: a corrupt record
                        yield RecordError(f"{self.url} key {ident}", f"{type(exc).__name__}: {exc}")
                    if not cursor.next():
                        break
        finally:
            env.close()


def datum_values(datum) -> dict[str, Any]:
    """Row values of a Caffe Datum: ``data`` (C×H×W array or Encoded bytes) and ``label``.

    Raises:
        ValueError: the pixel count does not match channels × height × width.
    """
    if datum.encoded:
        data: Any = Encoded(bytes(datum.data))
    else:
        shape = (datum.channels, datum.height, datum.width)
        size = int(np.prod(shape))
        if len(datum.float_data):
            if len(datum.float_data) != size:
                raise ValueError(f"{len(datum.float_data)} float_data values, expected {size} for "
                                 f"{datum.channels}x{datum.height}x{datum.width}")
            data = np.asarray(datum.float_data, dtype=np.float32).reshape(shape)
        else:
            if len(datum.data) != size:
                raise ValueError(f"{len(datum.data)} data bytes, expected {size} for "
                                 f"{datum.channels}x{datum.height}x{datum.width}")
            data = np.frombuffer(datum.data, np.uint8).reshape(shape)
    return {"data": data, "label": int(datum.label)}
