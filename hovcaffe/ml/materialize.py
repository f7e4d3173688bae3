"""A DataFrame written once as a hovcaffe (Petastorm) Parquet dataset, for the training ranks to shard.

``fit`` never streams DataFrame rows into the ranks: it writes the feature and label columns into
``modelDir/datasets/<fingerprint>/`` with the data room's writer (one Parquet file per partition,
written by that partition's task of a ``mapInArrow``, which receives the rows as Arrow batches;
``_hovcaffe.json`` + Petastorm ``_common_metadata``, temp folder then rename), and the ranks read it
with the data room's reader like any converted dataset. Rows are validated while they are written
(decodable, the expected shape, numeric label), so bad input fails before any training starts, with
the column, the row and what was expected.

Reuse: fitting the same DataFrame again (another param map of a grid, a re-run) finds the dataset
by its *fingerprint*, a SHA-256 of

* Spark's canonicalised analysed plan (classic sessions) and its ``semanticHash`` - for a
  DataFrame built from local data or an RDD this identifies that very DataFrame (the RDD object),
  for file sources the files;
* the row count;
* each input file's path, size and modification time (``DataFrame.inputFiles()``), so a rewritten
  Parquet/CSV source is written again;
* the column roles and the decoding settings (blob names, expected shape, label type).

So "the same DataFrame" means: the same DataFrame object (or a filter/select of it with the same
plan), or a DataFrame over the same unchanged files. A DataFrame rebuilt from scratch in a new
session is written again.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import pickle
from typing import Any, Iterator

from hovcaffe.data import storage, writer
from hovcaffe.data.schema import SUCCESS_FILE, DatasetInfo, FieldSpec, image_field, scalar_field
from hovcaffe.data.sources.base import Record, RecordError
from hovcaffe.ml.columns import (ColumnError, EmptyDataFrameError, decode_feature, format_shape,
                                 label_value)

log = logging.getLogger(__name__)
FORMAT = 1  # bump when the written rows change, so old caches are not reused
MAX_SHOWN_ERRORS = 5


@dataclasses.dataclass(frozen=True)
class ColumnPlan:
    """How DataFrame columns become dataset fields (shipped to the executors).

    Attributes:
        features_col, feature_kind: the feature column and its kind (see ``hovcaffe.ml.columns``).
        input_blob: field (= data-layer top) name of the features.
        sample_shape: per-row shape the net needs (None entries: any size, as long as all rows
            agree); None: anything the rows carry.
        color: decoding of encoded images ("color", "gray", "unchanged").
        label_col, label_blob, label_dtype: the label column, its field name and dtype.
    """

    features_col: str
    feature_kind: str
    input_blob: str
    sample_shape: tuple[int | None, ...] | None
    color: str
    label_col: str
    label_blob: str
    label_dtype: str

    @property
    def feature_dtype(self) -> str:
        return "uint8" if self.feature_kind in ("binary", "image") else "float32"

    def fields(self) -> list[FieldSpec]:
        shape = self.sample_shape or (None, None, None)
        return [image_field(self.input_blob, "ndarray", shape, dtype=self.feature_dtype),
                scalar_field(self.label_blob, self.label_dtype)]

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


class _RowsSource:
    """The data room's Source protocol over one partition's rows (used only on executors)."""

    kind = "dataframe"

    def __init__(self, plan: ColumnPlan, index: int, rows: Iterator[Any]):
        self.plan, self.index, self.rows, self.url = plan, index, rows, f"partition {index}"

    def read(self, task: Any) -> Iterator[Record | RecordError]:
        p = self.plan
        for i, row in enumerate(self.rows):
            ident = f"partition {self.index} row {i}"
            try:
                image = decode_feature(p.feature_kind, row[0], _fixed(p.sample_shape), p.color)
            except ValueError as exc:
                yield RecordError(ident, f"features column {p.features_col!r}: {exc}")
                continue
            try:
                label = label_value(row[1], p.label_dtype)
            except ValueError as exc:
                yield RecordError(ident, f"label column {p.label_col!r}: {exc}")
                continue
            yield Record(ident, {p.input_blob: image, p.label_blob: label})


def _fixed(shape):
    return None if shape is None or any(d is None for d in shape) else shape


def _write_partition(plan: ColumnPlan, folder_url: str, options: writer.WriteOptions,
                     batches: Iterator[Any]) -> Iterator[Any]:
    """mapInArrow function: one partition's (feature, label) record batches -> one Parquet file.

    Yields one record batch holding the pickled :class:`writer.PartResult`. Module-level so Spark
    ships it by reference (hovcaffe is importable on the executors).
    """
    import pickle

    import pyarrow as pa
    from pyspark import TaskContext

    index = TaskContext.get().partitionId()
    rows = (row for batch in batches
            for row in zip(batch.column(0).to_pylist(), batch.column(1).to_pylist()))
    part = writer.write_part(_RowsSource(plan, index, rows), plan.fields(), folder_url, index, None, options)
    yield pa.RecordBatch.from_arrays([pa.array([pickle.dumps(part)], pa.binary())], names=["part"])


def _plan_text(df) -> str | None:
    """Spark's canonicalised analysed plan (classic sessions; Spark Connect exposes no JVM plan,
    and its semanticHash already covers local data, which travels inside the plan)."""
    from hovcaffe.utils.spark import is_connect

    return None if is_connect(df.sparkSession) else \
        df._jdf.queryExecution().analyzed().canonicalized().toString()


def fingerprint(df, plan: ColumnPlan, count: int, extra: dict[str, Any] | None = None) -> str:
    """The dataset key of `df` written with `plan` (see the module docstring)."""
    files = []
    for url in sorted(df.inputFiles()):
        try:
            info = storage.resolve(url).info()
            files.append((url, info.size, info.mtime_ns))
        except Exception as exc:  # an unreachable file makes the key unique: no stale reuse
            files.append((url, repr(exc)))
    key = {"format": FORMAT, "plan": _plan_text(df),
           "semantic_hash": df.semanticHash(), "count": count, "files": files,
           "columns": plan.to_json(), "extra": extra or {}}
    return hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()


def existing(dest_url: str, key: str) -> DatasetInfo | None:
    """The dataset at `dest_url` if it is complete and was written for fingerprint `key`."""
    loc = storage.resolve(dest_url)
    if not loc.child(SUCCESS_FILE).exists():
        return None
    from hovcaffe.data.schema import INFO_FILE

    info = DatasetInfo.from_json(loc.child(INFO_FILE).read_bytes(), loc.child(INFO_FILE).url)
    return info if info.options.get("fingerprint") == key else None


def materialize(df, plan: ColumnPlan, dest_url: str, key: str) -> DatasetInfo:
    """Write `df`'s feature and label columns to a dataset at `dest_url`, or reuse it.

    Raises:
        ColumnError: rows that do not decode, have another shape than the net needs (or than each
            other), or have null / non-numeric labels; the message names the column and rows.
        EmptyDataFrameError: `df` has no rows.
    """
    found = existing(dest_url, key)
    if found is not None:
        log.info("reusing the dataset written for this DataFrame at %s (%d rows)", dest_url, found.count)
        return found
    dest = storage.resolve(dest_url)
    tmp = writer.temp_folder_for(dest)
    options = writer.WriteOptions(on_error="fail")
    try:
        rows = df.select(plan.features_col, plan.label_col).mapInArrow(
            functools.partial(_write_partition, plan, tmp.url, options), "part binary")
        # Pickled by hovcaffe's own writer task (above) on this session's executors.
        parts = [pickle.loads(row["part"]) for row in rows.collect()]
        _raise_row_errors(parts)
        fields = writer.settle_fields(plan.fields(), parts)
        _check_uniform(fields[0], parts, plan)
        count = sum(p.count for p in parts)
        if count == 0:
            raise EmptyDataFrameError("fit was given a DataFrame without rows; nothing to train on")
        info = DatasetInfo(fields=fields, files=[{"name": p.file, "row_groups": p.row_groups}
                                                 for p in sorted(parts, key=lambda p: p.task_index)
                                                 if p.file],
                           kind="dataframe", source=f"DataFrame {key[:16]}",
                           options={"fingerprint": key, "columns": plan.to_json()},
                           channel_order=_channel_order(fields[0], plan), count=count,
                           tops=[plan.input_blob, plan.label_blob])
        writer.finalize(tmp, info)
        writer.commit(tmp, dest)
    except BaseException:
        writer.remove_tree(tmp.fs, tmp.path)
        raise
    log.info("wrote %d rows of the DataFrame to %s", info.count, dest_url)
    return info


def _raise_row_errors(parts: list[writer.PartResult]) -> None:
    errors = [e for p in parts for e in p.errors]
    if not errors:
        return
    total = sum(p.error_count for p in parts)
    shown = "\n  ".join(f"{ident}: {reason}" for ident, reason in errors[:MAX_SHOWN_ERRORS])
    more = (f"\n  ... and {total - MAX_SHOWN_ERRORS} more" if total > MAX_SHOWN_ERRORS else "") + \
        "\n(each partition stops at its first bad row)"
    raise ColumnError(f"the DataFrame has rows the net cannot take; fix them before fitting:\n  "
                      f"{shown}{more}")


def _check_uniform(field: FieldSpec, parts: list[writer.PartResult], plan: ColumnPlan) -> None:
    if field.fixed_shape:
        return
    seen = sorted({tuple(s) for p in parts for s in p.shapes.get(field.name, [])})
    raise ColumnError(f"features column {plan.features_col!r} holds images of different sizes "
                      f"({', '.join(format_shape(s) for s in seen)}); a net takes one size; resize "
                      "them first")


def _channel_order(field: FieldSpec, plan: ColumnPlan) -> str | None:
    if plan.feature_kind not in ("binary", "image") or len(field.shape) != 3:
        return None
    return {1: "gray", 3: "BGR"}.get(field.shape[0])
