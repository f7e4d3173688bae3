"""The contract between a converter's source (LMDB, list file, idx...) and the Parquet writer.

A source is a small picklable object. On the driver, :meth:`Source.plan` looks at the source once
(keys, lines, header) and returns a :class:`SourcePlan`: the dataset's fields and a list of tasks,
each a contiguous run of records. On the executors, :meth:`Source.read` turns one task into
:class:`Record` / :class:`RecordError` items in source order, so concatenating the tasks' outputs in
task order reproduces the source order exactly (the conversion is deterministic).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator, Protocol

from hovcaffe.data.schema import FieldSpec


@dataclasses.dataclass
class Encoded:
    """An image still in its file encoding (PNG/JPEG bytes)."""

    data: bytes


@dataclasses.dataclass
class Record:
    """One converted row: values by field name (images as C×H×W arrays or :class:`Encoded`)."""

    id: str
    values: dict[str, Any]


@dataclasses.dataclass
class RecordError:
    """A record that could not be read; `id` names it (key, line number + path, index)."""

    id: str
    reason: str


@dataclasses.dataclass
class SourcePlan:
    """What the driver learnt about a source.

    Attributes:
        fields: the dataset's columns; image shapes may hold None until the writers report them.
        tasks: picklable task descriptions, in source order.
        count: number of records in the source (before any are skipped).
        channel_order: "BGR", "RGB", "gray" or None.
        tops: default top names for a Caffe data layer.
        record_bytes: typical encoded row size, used to size files and row groups.
    """

    fields: list[FieldSpec]
    tasks: list[Any]
    count: int
    channel_order: str | None = None
    tops: list[str] = dataclasses.field(default_factory=list)
    record_bytes: int = 1024


class Source(Protocol):
    kind: str
    url: str

    def options(self) -> dict[str, Any]:
        """The options that change the converted rows (recorded; a change means reconvert)."""

    def inputs(self) -> list[str]:
        """URLs whose modification times decide whether a conversion is out of date."""

    def plan(self, records_per_task: int | None) -> SourcePlan: ...

    def read(self, task: Any) -> Iterator[Record | RecordError]: ...


def split_ranges(count: int, per_task: int) -> list[tuple[int, int]]:
    """[(start, n), ...] covering range(count) in order, each n <= per_task."""
    per_task = max(1, per_task)
    return [(s, min(per_task, count - s)) for s in range(0, count, per_task)]


def records_per_task(count: int, record_bytes: int, requested: int | None,
                     target_bytes: int = 64 << 20) -> int:
    """Records per task (= per Parquet file): as requested, else about `target_bytes` of data.

    Depends only on the source, never on the cluster, so the files come out the same everywhere.
    """
    if requested:
        return requested
    return max(256, min(count, target_bytes // max(1, record_bytes)) or 1)
