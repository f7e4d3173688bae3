"""Annotated detection data (`hovcaffe convert annoset`): SSD's AnnotatedDatum LMDBs, VOC-style
image lists with per-image XML, or a JSON list of boxes.

Inputs, told apart by what SRC is:

* an LMDB folder (or ``data.mdb``) of SSD's ``AnnotatedDatum`` records (``convert_annoset``'s
  output): the image (encoded, or raw C x H x W pixels) and ``annotation_group``s of normalized
  boxes, each group holding one label; records in key order;
* a ``.json`` file: a list of ``{"image": path, "boxes": [{"label": name or number,
  "bbox": [xmin, ymin, xmax, ymax], "difficult": 0/1}]}`` with boxes in [0, 1] units;
* any other file: SSD's list of ``image annotation.xml`` pairs, one per line, with VOC XML
  (``size/width``, ``size/height``, ``object/name``, ``object/difficult``, ``object/bndbox``
  in pixels, divided by the XML's size as SSD does).

Paths in lists are prefixed with ``root_folder`` and found by hovcaffe's path rule. Label names
are looked up in the label map (SSD's ``LabelMap`` prototxt, ``--labels``); numbers are taken as
they are and, with a label map, must be in it.

Rows: ``data`` (the image bytes), ``labels`` (int32 per box), ``boxes`` (float32, 4 per box,
xmin ymin xmax ymax), ``difficult`` (int32 per box) and ``id``; boxes are in annotation-group
order. The label map is kept in the dataset's options (``label_map``: [name, label,
display_name] triples). A record whose box lies outside [0, 1] or is empty, whose annotation
group is empty, or whose label is not in the label map is an error naming the record (with
``--on-error skip``: left out and counted).
"""
from __future__ import annotations

import dataclasses
import json
import os
import posixpath
from typing import Any, Iterator
from xml.etree import ElementTree

import numpy as np

from hovcaffe.data.schema import FieldSpec, image_field, scalar_field
from hovcaffe.data.sources.base import (Encoded, Record, RecordError, SourcePlan, records_per_task,
                                        split_ranges)
from hovcaffe.data.storage import require
from hovcaffe.errors import DataSourceError

f32 = np.float32


def read_label_map(url: str) -> list[tuple[str, int, str]]:
    """(name, label, display_name) of each item of a LabelMap prototxt, in file order."""
    from google.protobuf import text_format

    from hovcaffe.caffe import caffe_pb2

    text = require(url, what="label map").read_bytes().decode("utf-8")
    try:
        lm = text_format.Parse(text, caffe_pb2.LabelMap())
    except text_format.ParseError as exc:
        raise DataSourceError(f"{url}:{exc}") from None
    return [(it.name, int(it.label), it.display_name or it.name) for it in lm.item]


@dataclasses.dataclass
class AnnosetSource:
    """Converter source for annotated detection data (see the module docstring)."""

    url: str
    label_map: str | None = None
    root_folder: str = ""
    kind = "annoset"

    def __post_init__(self) -> None:
        self.items = read_label_map(self.label_map) if self.label_map else []
        self.by_name = {name: label for name, label, _ in self.items}
        self.labels = {label for _, label, _ in self.items}

    def options(self) -> dict[str, Any]:
        return {"label_map": [list(item) for item in self.items], "root_folder": self.root_folder}

    def inputs(self) -> list[str]:
        return [self.url]

    @property
    def form(self) -> str:
        loc = require(self.url, what="annoset source")
        if loc.is_local and (os.path.isdir(loc.path) or loc.path.endswith(".mdb")):
            return "lmdb"
        return "json" if self.url.lower().endswith(".json") else "list"

    # ------------------------------------------------------------------ plan / read
    def plan(self, per_task: int | None) -> SourcePlan:
        entries = self._entries()
        if not entries:
            raise DataSourceError(f"{self.url}: no records")
        n = records_per_task(len(entries), 64 << 10, per_task)
        fields = [image_field("data", "image", (None, None, None)),
                  FieldSpec("labels", "list", "int32", (None,)),
                  FieldSpec("boxes", "list", "float32", (None,)),
                  FieldSpec("difficult", "list", "int32", (None,)),
                  scalar_field("id", "str")]
        return SourcePlan(fields=fields, tasks=split_ranges(len(entries), n), count=len(entries),
                          channel_order="BGR", tops=["data", "label"], record_bytes=64 << 10)

    def _entries(self) -> list[Any]:
        """What one record is read from: LMDB keys, JSON items or list lines."""
        form = self.form
        if form == "lmdb":
            from hovcaffe.data.sources.lmdb_source import LmdbSource

            env = LmdbSource(self.url)._open()
            try:
                with env.begin(buffers=False) as txn:
                    return [bytes(k) for k in txn.cursor().iternext(keys=True, values=False)]
            finally:
                env.close()
        text = require(self.url, what="annoset source").read_bytes().decode("utf-8")
        if form == "json":
            try:
                items = json.loads(text)
            except json.JSONDecodeError as exc:
                raise DataSourceError(f"{self.url}:{exc.lineno}:{exc.colno}: {exc.msg}") from None
            if not isinstance(items, list):
                raise DataSourceError(f"{self.url}: expected a JSON list of images with boxes")
            return [(i, item) for i, item in enumerate(items)]
        lines = []
        for lineno, line in enumerate(text.splitlines(), 1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 2:
                raise DataSourceError(f"{self.url}:{lineno}: expected 'image annotation.xml', got "
                                      f"{line.strip()!r}")
            lines.append((lineno, parts[0], parts[1]))
        return lines

    def read(self, task: tuple[int, int]) -> Iterator[Record | RecordError]:
        start, stop = task
        entries = self._entries()[start:stop]
        if self.form == "lmdb":
            yield from self._read_lmdb(entries)
            return
        for entry in entries:
            ident = (f"{self.url}[{entry[0]}]" if self.form == "json"
                     else f"{self.url}:{entry[0]}")
            try:
                values = self._json_values(entry[1]) if self.form == "json" else \
                    self._xml_values(entry[1], entry[2])
                yield Record(ident, values)
            except (ValueError, KeyError, TypeError, DataSourceError, ElementTree.ParseError) as exc:
                yield RecordError(ident, str(exc))

    # ------------------------------------------------------------------ one record
    def _label(self, value: Any) -> int:
        if isinstance(value, str) and not value.lstrip("-").isdigit():
            if value not in self.by_name:
                raise ValueError(f"label {value!r} is not in the label map"
                                 + ("" if self.items else " (give one with --labels)"))
            return self.by_name[value]
        label = int(value)
        if self.items and label not in self.labels:
            raise ValueError(f"label {label} is not in the label map {self.label_map}")
        return label

    @staticmethod
    def _values(data: Any, boxes: list[list[float]], labels: list[int], difficult: list[int]
                ) -> dict[str, Any]:
        arr = np.asarray(boxes, dtype=f32).reshape(-1, 4)
        for k, b in enumerate(arr):
            shown = np.round(b.astype(np.float64), 6).tolist()
            if not np.isfinite(b).all() or b.min() < 0 or b.max() > 1:
                raise ValueError(f"box {k} {shown} is outside [0, 1]")
            if b[2] <= b[0] or b[3] <= b[1]:
                raise ValueError(f"box {k} {shown} has no area (xmax <= xmin or ymax <= ymin)")
        return {"data": data, "boxes": arr.reshape(-1), "labels": np.asarray(labels, np.int32),
                "difficult": np.asarray(difficult, np.int32)}

    def _image(self, name: str) -> Encoded:
        return Encoded(require(self.root_folder + name, posixpath.dirname(self.url),
                               what="image").read_bytes())

    def _json_values(self, item: Any) -> dict[str, Any]:
        if not isinstance(item, dict) or "image" not in item:
            raise ValueError("each item needs an 'image' and a list of 'boxes'")
        objects = item.get("boxes", [])
        return self._values(self._image(item["image"]), [o["bbox"] for o in objects],
                            [self._label(o["label"]) for o in objects],
                            [int(bool(o.get("difficult", 0))) for o in objects])

    def _xml_values(self, image: str, xml_name: str) -> dict[str, Any]:
        xml = require(self.root_folder + xml_name, posixpath.dirname(self.url),
                      what="annotation").read_bytes()
        root = ElementTree.fromstring(xml)
        width, height = float(root.findtext("size/width")), float(root.findtext("size/height"))
        boxes, labels, difficult = [], [], []
        for obj in root.iter("object"):
            bb = obj.find("bndbox")
            boxes.append([float(bb.findtext("xmin")) / width, float(bb.findtext("ymin")) / height,
                          float(bb.findtext("xmax")) / width, float(bb.findtext("ymax")) / height])
            labels.append(self._label(obj.findtext("name").strip()))
            difficult.append(int(obj.findtext("difficult", "0").strip() or 0))
        return self._values(self._image(image), boxes, labels, difficult)

    def _read_lmdb(self, keys: list[bytes]) -> Iterator[Record | RecordError]:
        from hovcaffe.caffe import caffe_pb2
        from hovcaffe.data.sources.lmdb_source import LmdbSource, datum_values

        env = LmdbSource(self.url)._open()
        try:
            with env.begin(buffers=False) as txn:
                for key in keys:
                    ident = f"{self.url} key {key.decode('utf-8', 'backslashreplace')}"
                    try:
                        anno = caffe_pb2.AnnotatedDatum.FromString(txn.get(key))
                        boxes, labels, difficult = [], [], []
                        for g, group in enumerate(anno.annotation_group):
                            if not len(group.annotation):
                                raise ValueError(f"annotation group {g} (label {group.group_label}) "
                                                 f"is empty")
                            for a in group.annotation:
                                b = a.bbox
                                boxes.append([b.xmin, b.ymin, b.xmax, b.ymax])
                                labels.append(self._label(group.group_label))
                                difficult.append(int(b.difficult))
                        yield Record(ident, self._values(datum_values(anno.datum)["data"], boxes,
                                                         labels, difficult))
                    except Exception as exc:  # DecodeError and friends: a corrupt record
                        yield RecordError(ident, f"{exc}")
        finally:
            env.close()
