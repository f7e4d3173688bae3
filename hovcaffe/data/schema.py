"""What a hovcaffe dataset holds: its fields, where it came from, and how its files are laid out.

A dataset is a folder of Parquet files plus two descriptions of it:

* ``_hovcaffe.json`` (:class:`DatasetInfo`): fields with their codec, dtype and per-row shape, the
  source URL and its modification time, the conversion options, the channel order, the row count
  and the row count of every row group of every file (readers plan shards and shuffles from it
  without opening a single Parquet footer).
* ``_common_metadata`` (a Parquet footer without rows) whose key-value metadata holds Petastorm's
  row-group counts and, when petastorm is importable, its Unischema
  (:mod:`hovcaffe.data.petastorm_format`), so ``petastorm.make_reader`` reads the dataset too, and
  the same JSON as ``_hovcaffe.json`` under ``hovcaffe.dataset.v1``.
* ``_SUCCESS``, written last: a folder without it is an interrupted conversion.

Field codecs (the ``codec`` of a :class:`FieldSpec`):

=========  =================================================================================
ndarray    Petastorm's NdarrayCodec: ``numpy.save`` bytes of one row (images as raw C×H×W uint8,
           float Datums, HDF5 rows).
image      encoded PNG/JPEG bytes kept as they are; decoded with OpenCV, so colour images come
           out in OpenCV's BGR order (Caffe's order); ``shape`` is C×H×W after decoding.
scalar     a Parquet number column (labels).
string     a Parquet string column (ids; CaffeOnSpark STRING labels parsed as numbers).
rawbytes   uint8 pixels C×H×W without a header (CaffeOnSpark RAW_IMAGE DataFrame columns).
list       a Parquet list column of numbers (CaffeOnSpark INT_ARRAY / FLOAT_ARRAY).
=========  =================================================================================
"""
from __future__ import annotations

import dataclasses
import json
import time
from typing import Any, Iterable


from hovcaffe.errors import DataSourceError

INFO_FILE = "_hovcaffe.json"
SUCCESS_FILE = "_SUCCESS"
PARQUET_INFO_KEY = b"hovcaffe.dataset.v1"
FORMAT_VERSION = 1
CODECS = ("ndarray", "image", "scalar", "string", "rawbytes", "list")


@dataclasses.dataclass(frozen=True)
class FieldSpec:
    """One column of a dataset.

    Attributes:
        name: the Parquet column (and the default top name).
        codec: one of :data:`CODECS` (see the module docstring).
        dtype: numpy dtype of the decoded values (``"uint8"``, ``"float32"``, ``"int32"``, ``"str"``).
        shape: per-row shape after decoding; ``None`` entries vary from row to row; ``()`` for scalars.
        image_format: ``"png"``/``"jpeg"``/``"mixed"`` for the image codec.
        color: how an image codec decodes: ``"color"`` (3 channels), ``"gray"`` or ``"unchanged"``.
    """

    name: str
    codec: str
    dtype: str
    shape: tuple[int | None, ...] = ()
    image_format: str | None = None
    color: str = "unchanged"

    def __post_init__(self):
        if self.codec not in CODECS:
            raise ValueError(f"field {self.name!r}: unknown codec {self.codec!r}; known: {CODECS}")
        object.__setattr__(self, "shape", tuple(self.shape))

    @property
    def fixed_shape(self) -> bool:
        return all(d is not None for d in self.shape)

    def to_json(self) -> dict[str, Any]:
        return {k: (list(v) if isinstance(v, tuple) else v)
                for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "FieldSpec":
        return cls(**{**d, "shape": tuple(d.get("shape", ()))})


@dataclasses.dataclass
class DatasetInfo:
    """The ``_hovcaffe.json`` sidecar of a dataset.

    Attributes:
        fields: the columns, in order.
        files: ``[{"name": "part-00000.parquet", "row_groups": [rows, ...]}, ...]`` in read order.
        kind: the converter that produced it (``lmdb``, ``imagelist``, ``hdf5``, ``mnist``, ``cifar``).
        source: the source URL; ``source_mtime_ns`` its newest modification time when converted.
        options: conversion options; a conversion with other options is not "up to date".
        channel_order: ``"BGR"`` (OpenCV / Caffe tools), ``"RGB"`` (CIFAR bytes as Caffe stored them),
            ``"gray"``, or None when not images.
        count: number of rows; ``skipped``: corrupt source records left out (``--on-error skip``).
        tops: default top order for a Caffe data layer, e.g. ``["data", "label"]``.
    """

    fields: list[FieldSpec]
    files: list[dict[str, Any]]
    kind: str = ""
    source: str = ""
    source_mtime_ns: int = 0
    options: dict[str, Any] = dataclasses.field(default_factory=dict)
    channel_order: str | None = None
    count: int = 0
    skipped: int = 0
    tops: list[str] = dataclasses.field(default_factory=list)
    created: float = dataclasses.field(default_factory=time.time)
    version: int = FORMAT_VERSION

    def field(self, name: str) -> FieldSpec:
        for f in self.fields:
            if f.name == name:
                return f
        raise DataSourceError(f"dataset from {self.source or '?'} has no field {name!r}; "
                              f"fields: {', '.join(f.name for f in self.fields)}")

    def to_json(self) -> str:
        d = dataclasses.asdict(self)
        d["fields"] = [f.to_json() for f in self.fields]
        return json.dumps(d, indent=1, sort_keys=True)

    @classmethod
    def from_json(cls, text: str | bytes, where: str = "") -> "DatasetInfo":
        try:
            d = json.loads(text)
            if d.get("version", 0) > FORMAT_VERSION:
                raise ValueError(f"written by a newer hovcaffe (format {d['version']})")
            d["fields"] = [FieldSpec.from_json(f) for f in d["fields"]]
            known = {f.name for f in dataclasses.fields(cls)}
            return cls(**{k: v for k, v in d.items() if k in known})
        except (ValueError, KeyError, TypeError) as exc:
            raise DataSourceError(f"{where or 'dataset info'}: not a valid {INFO_FILE}: {exc}") from exc


def image_field(name: str, codec: str, shape: Iterable[int | None], dtype: str = "uint8",
                image_format: str | None = None, color: str = "unchanged") -> FieldSpec:
    """An image column: ``codec`` ``"ndarray"`` (raw C×H×W) or ``"image"`` (encoded PNG/JPEG)."""
    return FieldSpec(name, codec, dtype, tuple(shape), image_format=image_format, color=color)


def scalar_field(name: str, dtype: str = "int32") -> FieldSpec:
    return FieldSpec(name, "string" if dtype == "str" else "scalar", dtype, ())
