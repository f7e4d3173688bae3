"""Writing a dataset: one Parquet file per task (on the executors), then metadata and commit (driver).

Every task writes ``part-NNNNN.parquet`` into a temporary folder next to the destination. When all
tasks are done the driver writes ``_common_metadata`` (Petastorm's Unischema and row-group counts,
plus our :class:`~hovcaffe.data.schema.DatasetInfo`), ``_hovcaffe.json`` and, last, ``_SUCCESS``;
then it renames the temporary folder onto the destination. A crash at any point leaves the previous
destination (or nothing) in place, never a half-written dataset under the real name.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import posixpath
import uuid
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from hovcaffe.data import codecs
from hovcaffe.data.petastorm_format import ROW_GROUPS_KEY, UNISCHEMA_KEY, unischema_bytes
from hovcaffe.data.schema import INFO_FILE, PARQUET_INFO_KEY, SUCCESS_FILE, DatasetInfo, FieldSpec
from hovcaffe.data.sources.base import Encoded, Record, RecordError, Source
from hovcaffe.data.storage import Location, resolve

log = logging.getLogger(__name__)

MAX_REPORTED_ERRORS = 20
MAX_TRACKED_SHAPES = 4


@dataclasses.dataclass
class WriteOptions:
    """How rows are laid out in Parquet.

    Attributes:
        row_group_bytes: a row group is closed once its encoded rows reach this size. Smaller groups
            shard and shuffle at a finer grain; larger ones read faster.
        compression: Parquet compression codec for the files.
        on_error: ``"fail"`` stops a task at its first bad record; ``"skip"`` leaves it out.
    """

    row_group_bytes: int = 4 << 20
    compression: str = "snappy"
    on_error: str = "fail"


@dataclasses.dataclass
class PartResult:
    """What one task wrote (returned to the driver)."""

    task_index: int
    file: str | None = None
    row_groups: list[int] = dataclasses.field(default_factory=list)
    count: int = 0
    error_count: int = 0
    errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    shapes: dict[str, list[tuple]] = dataclasses.field(default_factory=dict)
    formats: dict[str, list[str]] = dataclasses.field(default_factory=dict)
    stopped: bool = False


def part_name(task_index: int) -> str:
    return f"part-{task_index:05d}.parquet"


def write_part(source: Source, fields: list[FieldSpec], folder_url: str, task_index: int, task: Any,
               options: WriteOptions) -> PartResult:
    """Convert one task of `source` into ``folder_url/part-NNNNN.parquet`` (runs on an executor)."""
    folder = resolve(folder_url)
    result = PartResult(task_index)
    schema = _arrow_schema(fields)
    columns: dict[str, list] = {f.name: [] for f in fields}
    buffered = 0
    writer: pq.ParquetWriter | None = None
    path = posixpath.join(folder.path, part_name(task_index))

    def flush():
        nonlocal writer, buffered
        n = len(columns[fields[0].name])
        if n == 0:
            return
        if writer is None:
            writer = pq.ParquetWriter(path, schema, filesystem=folder.fs, compression=options.compression,
                                      use_dictionary=False, write_statistics=False)
        table = pa.table({f.name: pa.array(columns[f.name], schema.field(f.name).type) for f in fields},
                         schema=schema)
        writer.write_table(table, row_group_size=n)
        result.row_groups.append(n)
        for v in columns.values():
            v.clear()
        buffered = 0

    try:
        for item in source.read(task):
            if isinstance(item, Record):
                try:
                    row = {f.name: _coerce(f, item.id if f.name == "id" else item.values.get(f.name), result)
                           for f in fields}
                except (ValueError, TypeError) as exc:
                    item = RecordError(item.id, str(exc))
                else:
                    for name, value in row.items():
                        columns[name].append(value)
                        buffered += len(value) if isinstance(value, (bytes, bytearray)) else 8
                    result.count += 1
                    if buffered >= options.row_group_bytes:
                        flush()
                    continue
            result.error_count += 1
            if len(result.errors) < MAX_REPORTED_ERRORS:
                result.errors.append((item.id, item.reason))
            if options.on_error == "fail":
                result.stopped = True
                break
        flush()
    finally:
        if writer is not None:
            writer.close()
    result.file = part_name(task_index) if result.row_groups else None
    return result


def _arrow_schema(fields: list[FieldSpec]) -> pa.Schema:
    types = {"ndarray": pa.binary(), "image": pa.binary(), "string": pa.string()}

    def arrow_type(f: FieldSpec) -> pa.DataType:
        number = pa.from_numpy_dtype(np.dtype(f.dtype))
        return pa.list_(number) if f.codec == "list" else types.get(f.codec) or number

    return pa.schema([(f.name, arrow_type(f)) for f in fields])


def _coerce(field: FieldSpec, value: Any, result: PartResult):
    """The Parquet value of `value` for `field`; raises ValueError for a corrupt record."""
    if value is None:
        raise ValueError(f"no value for field {field.name!r}")
    if field.codec == "ndarray":
        if isinstance(value, Encoded):
            value = codecs.decode_image(value.data, field.color)
        value = np.asarray(value)
        if value.dtype != np.dtype(field.dtype):
            value = value.astype(field.dtype)
        _check_shape(field, value.shape)
        _track(result.shapes, field.name, value.shape)
        return codecs.encode_ndarray(value)
    if field.codec == "image":
        if isinstance(value, Encoded):
            decoded = codecs.decode_image(value.data, field.color)  # validates the bytes
            fmt, data = codecs.image_format(value.data), value.data
        else:
            decoded = np.asarray(value, dtype=np.uint8)
            fmt, data = "png", codecs.encode_png(decoded)
        _check_shape(field, decoded.shape)
        _track(result.shapes, field.name, decoded.shape)
        _track(result.formats, field.name, fmt)
        return data
    if field.codec == "string":
        return str(value)
    if field.codec == "list":   # ragged rows (e.g. the boxes of an image), flattened
        return np.asarray(value, dtype=field.dtype).reshape(-1).tolist()
    return np.dtype(field.dtype).type(value).item()


def _check_shape(field: FieldSpec, shape: tuple[int, ...]) -> None:
    if len(shape) != len(field.shape) or any(d is not None and d != s for d, s in zip(field.shape, shape)):
        want = "x".join("?" if d is None else str(d) for d in field.shape)
        raise ValueError(f"field {field.name!r}: shape {'x'.join(map(str, shape))}, expected {want}")


def _track(seen: dict[str, list], name: str, value) -> None:
    values = seen.setdefault(name, [])
    if value not in values and len(values) < MAX_TRACKED_SHAPES:
        values.append(value)


# ----------------------------------------------------------------------------- driver side

def settle_fields(fields: list[FieldSpec], parts: list[PartResult]) -> list[FieldSpec]:
    """Fields with the shapes/formats the writers saw (None where rows differ)."""
    out = []
    for f in fields:
        shapes = {tuple(s) for p in parts for s in p.shapes.get(f.name, [])}
        formats = {fmt for p in parts for fmt in p.formats.get(f.name, [])}
        if shapes:
            dims = list(zip(*shapes)) if len({len(s) for s in shapes}) == 1 else None
            shape = tuple(d[0] if len(set(d)) == 1 else None for d in dims) if dims else f.shape
            f = dataclasses.replace(f, shape=shape)
        if formats:
            f = dataclasses.replace(f, image_format=formats.pop() if len(formats) == 1 else "mixed")
        out.append(f)
    return out


def temp_folder_for(dest: Location) -> Location:
    """A fresh sibling of `dest` (same filesystem, so the final rename is cheap and atomic)."""
    parent, name = posixpath.split(dest.path.rstrip("/"))
    tmp = posixpath.join(parent, f".{name}.tmp-{uuid.uuid4().hex[:12]}")
    dest.fs.create_dir(tmp, recursive=True)
    return Location(dest.fs, tmp, tmp if dest.is_local else _sibling_url(dest.url, posixpath.basename(tmp)))


def _sibling_url(url: str, name: str) -> str:
    return url.rstrip("/").rsplit("/", 1)[0] + "/" + name


def finalize(tmp: Location, info: DatasetInfo) -> None:
    """Write the metadata files into `tmp`; ``_SUCCESS`` goes last."""
    if info.files:
        with tmp.fs.open_input_file(posixpath.join(tmp.path, info.files[0]["name"])) as fh:
            schema = pq.read_schema(fh)
    else:
        schema = _arrow_schema(info.fields)
    meta = dict(schema.metadata or {})
    meta[PARQUET_INFO_KEY] = info.to_json().encode()
    meta[ROW_GROUPS_KEY] = json.dumps({f["name"]: len(f["row_groups"]) for f in info.files}).encode()
    unischema = unischema_bytes(info, tmp.url)
    if unischema is not None:
        meta[UNISCHEMA_KEY] = unischema
    with tmp.fs.open_output_stream(posixpath.join(tmp.path, "_common_metadata")) as fh:
        pq.write_metadata(schema.with_metadata(meta), fh)
    tmp.child(INFO_FILE).write_bytes(info.to_json().encode())
    tmp.child(SUCCESS_FILE).write_bytes(b"")


def commit(tmp: Location, dest: Location) -> None:
    """Move `tmp` onto `dest`, replacing an older dataset there."""
    old = None
    if dest.exists():
        old = posixpath.join(posixpath.dirname(dest.path.rstrip("/")),
                             f".{posixpath.basename(dest.path.rstrip('/'))}.old-{uuid.uuid4().hex[:12]}")
        _move_tree(dest.fs, dest.path, old)
    _move_tree(dest.fs, tmp.path, dest.path)
    if old is not None:
        remove_tree(dest.fs, old)


def _move_tree(fs: pafs.FileSystem, src: str, dst: str) -> None:
    """Rename folder `src` to `dst`; on object stores that cannot rename a prefix (pyarrow's S3),
    copy it file by file, the success marker last, then delete `src`."""
    try:
        fs.move(src, dst)
        return
    except OSError:
        if fs.get_file_info(dst).type != pafs.FileType.NotFound:
            raise
    files = [i.path for i in fs.get_file_info(pafs.FileSelector(src, recursive=True))
             if i.type == pafs.FileType.File]
    for path in sorted(files, key=lambda p: posixpath.basename(p) == SUCCESS_FILE):
        fs.copy_file(path, posixpath.join(dst, posixpath.relpath(path, src)))
    fs.delete_dir(src)


def remove_tree(fs: pafs.FileSystem, path: str) -> None:
    try:
        fs.delete_dir(path)
    except (FileNotFoundError, OSError) as exc:
        log.warning("could not remove %s: %s", path, exc)
