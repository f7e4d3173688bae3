"""ImageData list files: one ``path label`` per line, images read as Caffe's ImageData layer reads them.

Caffe splits each line at its *last* space (paths may contain spaces), prefixes ``root_folder``
by plain string concatenation, reads the image with OpenCV in colour (BGR) or grayscale
(``is_color``), and resizes it bilinearly to exactly ``new_height`` × ``new_width`` when both are set.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterator

import numpy as np

from hovcaffe.data import codecs
from hovcaffe.data.schema import image_field, scalar_field
from hovcaffe.data.sources.base import (Encoded, Record, RecordError, SourcePlan, records_per_task,
                                        split_ranges)
from hovcaffe.data.storage import resolve, require
from hovcaffe.errors import DataSourceError

CODECS = ("auto", "raw", "png", "source")
MAX_LISTED_MISSING = 5


@dataclasses.dataclass(frozen=True)
class ListEntry:
    path: str
    label: int
    line: int


def parse_list(text: str, where: str) -> list[ListEntry]:
    """Entries of an ImageData list file; blank lines are ignored.

    Raises:
        DataSourceError: a line has no label or a label that is not an integer (file:line named).
    """
    entries = []
    for lineno, line in enumerate(text.splitlines(), 1):
        line = line.rstrip("\r\n")
        if not line.strip():
            continue
        path, sep, label = line.rpartition(" ")
        try:
            if not sep or not path:
                raise ValueError
            entries.append(ListEntry(path, int(label), lineno))
        except ValueError:
            raise DataSourceError(f"{where}:{lineno}: expected 'path label' with an integer label, "
                                  f"got {line!r}") from None
    if not entries:
        raise DataSourceError(f"{where}: the list names no images")
    return entries


@dataclasses.dataclass
class ImageListSource:
    """Converter source for an ImageData list file.

    Attributes:
        url: the list file.
        root_folder: prefix of every image path (concatenated as is, like Caffe).
        new_height, new_width: resize target (both or neither).
        is_color: 3-channel BGR images when true, 1-channel grayscale when false.
        codec: ``auto`` = ``source`` without resize, ``raw`` with; ``source`` keeps each file's bytes
            (decoded at read time); ``raw`` stores decoded C×H×W uint8; ``png`` re-encodes losslessly.
    """

    url: str
    root_folder: str = ""
    new_height: int = 0
    new_width: int = 0
    is_color: bool = True
    codec: str = "auto"
    base_dir: str | None = None
    kind = "imagelist"

    def __post_init__(self):
        if self.codec not in CODECS:
            raise DataSourceError(f"{self.url}: codec {self.codec!r} is not one of {CODECS} for image lists")
        if bool(self.new_height) != bool(self.new_width):
            raise DataSourceError(f"{self.url}: new_height and new_width must be set together "
                                  f"(got {self.new_height} and {self.new_width})")
        if self.codec == "source" and self.new_height:
            raise DataSourceError(f"{self.url}: codec 'source' keeps the files' bytes, so it cannot "
                                  f"resize to {self.new_height}x{self.new_width}; use raw or png")

    @property
    def stored_codec(self) -> str:
        if self.codec == "auto":
            return "raw" if self.new_height else "source"
        return self.codec

    def options(self) -> dict[str, Any]:
        return {"root_folder": self.root_folder, "new_height": self.new_height, "new_width": self.new_width,
                "is_color": self.is_color, "codec": self.codec}

    def inputs(self) -> list[str]:
        return [self.url]

    def entries(self) -> list[ListEntry]:
        loc = require(self.url, self.base_dir, what="image list")
        return parse_list(loc.read_bytes().decode("utf-8"), self.url)

    def image_url(self, entry: ListEntry) -> str:
        return self.root_folder + entry.path

    def plan(self, per_task: int | None) -> SourcePlan:
        entries = self.entries()
        first = resolve(self.image_url(entries[0]), self.base_dir)
        size = first.info().size if first.exists() else 0
        n_task = records_per_task(len(entries), size or 50_000, per_task)
        tasks = [entries[s:s + n] for s, n in split_ranges(len(entries), n_task)]
        channels = 3 if self.is_color else 1
        color = "color" if self.is_color else "gray"
        shape = (channels, self.new_height or None, self.new_width or None)
        codec = {"raw": "ndarray", "png": "image", "source": "image"}[self.stored_codec]
        data = image_field("data", codec, shape, color=color if self.stored_codec == "source" else "unchanged")
        return SourcePlan(fields=[data, scalar_field("label", "int32"), scalar_field("id", "str")],
                          tasks=tasks, count=len(entries), channel_order="BGR" if self.is_color else "gray",
                          tops=["data", "label"], record_bytes=size or 50_000)

    def missing(self, entries: list[ListEntry]) -> list[str]:
        """Local image files the list names that do not exist (remote ones are checked when read)."""
        out = []
        for e in entries:
            loc = resolve(self.image_url(e), self.base_dir)
            if loc.is_local and not os.path.isfile(loc.path):
                out.append(f"{self.url}:{e.line}: {loc.path}")
        return out

    def read(self, task: list[ListEntry]) -> Iterator[Record | RecordError]:
        for e in task:
            where = f"{self.url}:{e.line}: {self.image_url(e)}"
            try:
                data = resolve(self.image_url(e), self.base_dir).read_bytes()
            except DataSourceError as exc:
                yield RecordError(where, str(exc))
                continue
            try:
                yield Record(e.path, {"data": self._image(data), "label": e.label})
            except ValueError as exc:
                yield RecordError(where, str(exc))

    def _image(self, data: bytes):
        if self.stored_codec == "source":
            return Encoded(data)  # validated (and measured) by the writer
        img = codecs.decode_image(data, "color" if self.is_color else "gray")
        if self.new_height:
            import cv2

            hwc = img[0] if img.shape[0] == 1 else img.transpose(1, 2, 0)
            hwc = cv2.resize(hwc, (self.new_width, self.new_height), interpolation=cv2.INTER_LINEAR)
            img = hwc[None] if hwc.ndim == 2 else hwc.transpose(2, 0, 1)
        return np.ascontiguousarray(img)
