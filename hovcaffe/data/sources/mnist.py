"""MNIST idx files (``train-images-idx3-ubyte`` + ``train-labels-idx1-ubyte``, optionally ``.gz``).

Stored as Caffe's ``convert_mnist_data`` stores them: 1×rows×cols uint8 pixels and the label.
"""
from __future__ import annotations

import dataclasses
import gzip
import struct
from typing import Any, Iterator

import numpy as np

from hovcaffe.data.schema import image_field, scalar_field
from hovcaffe.data.sources.base import (Record, RecordError, SourcePlan, records_per_task,
                                        split_ranges)
from hovcaffe.data.storage import require
from hovcaffe.errors import DataSourceError

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049


def default_labels_url(images_url: str) -> str:
    """``...-images-idx3-ubyte[.gz]`` -> ``...-labels-idx1-ubyte[.gz]`` (the standard file names)."""
    if "images-idx3" in images_url:
        return images_url.replace("images-idx3", "labels-idx1")
    raise DataSourceError(f"{images_url}: cannot guess the labels file from this name; pass --labels")


def _read(url: str) -> bytes:
    data = require(url, what="MNIST file").read_bytes()
    if url.endswith(".gz"):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as exc:
            raise DataSourceError(f"{url}: not a gzip file ({exc})") from exc
    return data


def _header(data: bytes, url: str, magic: int, ndims: int) -> tuple[int, ...]:
    if len(data) < 4 + 4 * ndims:
        raise DataSourceError(f"{url}: too short for an idx header")
    found, *dims = struct.unpack(f">{1 + ndims}i", data[:4 + 4 * ndims])
    if found != magic:
        raise DataSourceError(f"{url}: not an MNIST idx file (magic number {found}, expected {magic})")
    return tuple(dims)


@dataclasses.dataclass
class MnistSource:
    """Converter source for a pair of MNIST idx files."""

    url: str
    labels_url: str | None = None
    kind = "mnist"

    def __post_init__(self):
        self.labels_url = self.labels_url or default_labels_url(self.url)

    def options(self) -> dict[str, Any]:
        return {"labels": self.labels_url}

    def inputs(self) -> list[str]:
        return [self.url, self.labels_url]

    def _load(self) -> tuple[np.ndarray, np.ndarray]:
        images, labels = _read(self.url), _read(self.labels_url)
        n, rows, cols = _header(images, self.url, IMAGES_MAGIC, 3)
        (n_labels,) = _header(labels, self.labels_url, LABELS_MAGIC, 1)
        if n != n_labels:
            raise DataSourceError(f"{self.url} has {n} images but {self.labels_url} has {n_labels} labels")
        if len(images) < 16 + n * rows * cols or len(labels) < 8 + n:
            raise DataSourceError(f"{self.url}: truncated (header says {n} images of {rows}x{cols})")
        pixels = np.frombuffer(images, np.uint8, n * rows * cols, 16).reshape(n, 1, rows, cols)
        return pixels, np.frombuffer(labels, np.uint8, n, 8)

    def plan(self, per_task: int | None) -> SourcePlan:
        pixels, _ = self._load()
        n, _, rows, cols = pixels.shape
        tasks = split_ranges(n, records_per_task(n, rows * cols, per_task))
        return SourcePlan(fields=[image_field("data", "ndarray", (1, rows, cols)), scalar_field("label", "int32")],
                          tasks=tasks, count=n, channel_order="gray", tops=["data", "label"],
                          record_bytes=rows * cols)

    def read(self, task: tuple[int, int]) -> Iterator[Record | RecordError]:
        start, n = task
        pixels, labels = self._load()
        for i in range(start, start + n):
            yield Record(str(i), {"data": pixels[i], "label": int(labels[i])})
