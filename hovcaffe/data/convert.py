"""Convert a Caffe data source (LMDB, image list, HDF5 list, MNIST, CIFAR-10) to a Parquet dataset.

``convert_source(source, dest)`` is the one entry point the CLI (`hovcaffe convert`), the
``converters/*.py`` spark-submit scripts and the first-use conversions of data layers share:

1. if `dest` holds a complete conversion (``_SUCCESS``) of the same source with the same options,
   and it is newer than the source, nothing is done;
2. the driver plans tasks (contiguous runs of records, a function of the source only);
3. each task writes one Parquet file into a temporary folder next to `dest` (in parallel on Spark,
   or here with :class:`~hovcaffe.data.spark.LocalExecutor`);
4. bad records are counted; with ``on_error="fail"`` any bad record aborts the conversion, with
   ``"skip"`` they are left out and reported;
5. metadata and ``_SUCCESS`` are written, then the folder is renamed onto `dest`.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import logging
import time
from typing import Any

from hovcaffe.data import storage, writer
from hovcaffe.data.schema import INFO_FILE, SUCCESS_FILE, DatasetInfo
from hovcaffe.data.sources import SOURCES, Source
from hovcaffe.data.spark import Executor, LocalExecutor
from hovcaffe.errors import DataSourceError, UserInputError

log = logging.getLogger(__name__)
ON_ERROR = ("fail", "skip")


@dataclasses.dataclass
class ConversionReport:
    """What a conversion did.

    Attributes:
        up_to_date: nothing was converted because `dest` already held this conversion.
        count: rows in the dataset; skipped: bad source records left out; errors: the first
            (record, reason) pairs of those.
    """

    dest: str
    source: str
    kind: str
    count: int = 0
    skipped: int = 0
    errors: list[tuple[str, str]] = dataclasses.field(default_factory=list)
    files: int = 0
    row_groups: int = 0
    seconds: float = 0.0
    up_to_date: bool = False

    def summary(self) -> str:
        if self.up_to_date:
            return f"{self.dest}: up to date with {self.source} ({self.count} rows), nothing to do"
        text = (f"{self.dest}: {self.count} rows from {self.kind} {self.source} in {self.files} file(s), "
                f"{self.row_groups} row group(s), {self.seconds:.1f} s")
        if self.skipped:
            text += f"; {self.skipped} bad record(s) skipped"
        return text


def make_source(kind: str, src: str, **options: Any) -> Source:
    """The converter source of `kind` for `src` (options as in each source class)."""
    try:
        cls = SOURCES[kind]
    except KeyError:
        raise UserInputError(f"unknown source kind {kind!r}; known: {', '.join(sorted(SOURCES))}") from None
    return cls(src, **{k: v for k, v in options.items() if v is not None})


def read_info(dest: str | storage.Location) -> DatasetInfo | None:
    """The dataset info at `dest` if it holds a complete dataset, else None."""
    loc = dest if isinstance(dest, storage.Location) else storage.resolve(dest)
    if not loc.child(SUCCESS_FILE).exists() or not loc.child(INFO_FILE).exists():
        return None
    return DatasetInfo.from_json(loc.child(INFO_FILE).read_bytes(), loc.child(INFO_FILE).url)


def source_mtime_ns(source: Source) -> int:
    base = getattr(source, "base_dir", None)
    return max(storage.newest_mtime_ns(storage.require(u, base)) for u in source.inputs())


def is_up_to_date(source: Source, dest: str | storage.Location, *, ignore: tuple[str, ...] = ()
                  ) -> DatasetInfo | None:
    """The existing dataset's info when `dest` is a complete, newer conversion of `source`.

    Args:
        ignore: option names whose values may differ (e.g. ``("codec",)``: the storage codec
            does not change the pixels a reader gets).
    """
    loc = dest if isinstance(dest, storage.Location) else storage.resolve(dest)
    info = read_info(loc)
    if info is None or info.kind != source.kind or not _same_url(info.source, source.url):
        return None
    wanted = {k: v for k, v in _jsonable(source.options()).items() if k not in ignore}
    if {k: v for k, v in info.options.items() if k not in ignore} != wanted:
        return None
    done_ns = loc.child(SUCCESS_FILE).info().mtime_ns or 0
    current = source_mtime_ns(source)
    return info if current <= info.source_mtime_ns and current <= done_ns else None


def convert_source(source: Source, dest: str, *, executor: Executor | None = None, on_error: str = "fail",
                   records_per_file: int | None = None, options: writer.WriteOptions | None = None,
                   force: bool = False) -> ConversionReport:
    """Convert `source` into a Parquet dataset at `dest` (see the module docstring).

    Args:
        source: from :func:`make_source`.
        dest: the dataset folder URL.
        executor: where tasks run; default: in this process.
        on_error: ``"fail"`` or ``"skip"`` for corrupt / unreadable records.
        records_per_file: records per task and Parquet file (default: about 64 MiB of data).
        options: row-group size and compression.
        force: convert even when `dest` is up to date.

    Raises:
        DataSourceError: the source cannot be read, or it has bad records and on_error is "fail".
    """
    if on_error not in ON_ERROR:
        raise UserInputError(f"on_error must be one of {ON_ERROR}, got {on_error!r}")
    started = time.perf_counter()
    dest_loc = storage.resolve(dest)
    mtime = source_mtime_ns(source)  # also fails early when the source is missing
    if not force:
        info = is_up_to_date(source, dest_loc)
        if info is not None:
            log.info("%s is up to date with %s; not converting", dest, source.url)
            return ConversionReport(dest, source.url, source.kind, count=info.count, skipped=info.skipped,
                                    files=len(info.files), up_to_date=True)
    plan = source.plan(records_per_file)
    if on_error == "fail" and hasattr(source, "missing"):
        _refuse_missing(source, plan)
    options = dataclasses.replace(options or writer.WriteOptions(), on_error=on_error)
    tmp = writer.temp_folder_for(dest_loc)
    try:
        task_fn = functools.partial(_write_task, source, plan.fields, tmp.url, options)
        parts: list[writer.PartResult] = (executor or LocalExecutor()).map(
            task_fn, list(enumerate(plan.tasks)))
        errors = [e for p in parts for e in p.errors]
        n_errors = sum(p.error_count for p in parts)
        if n_errors and on_error == "fail":
            raise DataSourceError(_error_text(source.url, n_errors, errors, fail=True))
        fields = writer.settle_fields(plan.fields, parts)
        info = DatasetInfo(fields=fields, kind=source.kind, source=source.url, source_mtime_ns=mtime,
                           options=_jsonable(source.options()), channel_order=plan.channel_order
                           or _channel_order(fields), count=sum(p.count for p in parts),
                           skipped=n_errors, tops=plan.tops,
                           files=[{"name": p.file, "row_groups": p.row_groups} for p in parts if p.file])
        if info.count == 0:
            why = ("\n" + _error_text(source.url, n_errors, errors, fail=False) if n_errors
                   else " (the source has no records)")
            raise DataSourceError(f"{source.url}: no record could be converted{why}")
        writer.finalize(tmp, info)
        writer.commit(tmp, dest_loc)
    except BaseException:
        writer.remove_tree(tmp.fs, tmp.path)
        raise
    report = ConversionReport(dest, source.url, source.kind, count=info.count, skipped=n_errors,
                              errors=errors, files=len(info.files),
                              row_groups=sum(len(f["row_groups"]) for f in info.files),
                              seconds=time.perf_counter() - started)
    if n_errors:
        log.warning(_error_text(source.url, n_errors, errors, fail=False))
    return report  # callers report its summary (the CLI prints it, a data feed logs it): once


def _write_task(source, fields, folder_url, options, task_index, task):
    # Module-level so Spark ships it by reference (hovcaffe must be importable on the executors).
    return writer.write_part(source, fields, folder_url, task_index, task, options)


def _refuse_missing(source, plan) -> None:
    entries = [e for task in plan.tasks for e in task]
    missing = source.missing(entries)
    if missing:
        shown = "\n  ".join(missing[:5])
        more = f"\n  ... and {len(missing) - 5} more" if len(missing) > 5 else ""
        raise DataSourceError(f"{source.url}: {len(missing)} listed image(s) do not exist:\n  {shown}{more}\n"
                              f"(use --on-error skip to convert the others)")


def _error_text(url: str, count: int, errors: list[tuple[str, str]], *, fail: bool) -> str:
    lines = "\n  ".join(f"{ident}: {reason}" for ident, reason in errors[:10])
    more = f"\n  ... {count - min(count, 10)} more" if count > 10 else ""
    head = (f"{url}: {count} bad record(s); the conversion stopped (use --on-error skip to leave them out)"
            if fail else f"{url}: {count} bad record(s) left out")
    return f"{head}:\n  {lines}{more}"


def _channel_order(fields) -> str | None:
    data = next((f for f in fields if f.codec in ("ndarray", "image") and len(f.shape) == 3), None)
    if data is None or data.shape[0] is None:
        return None
    return "gray" if data.shape[0] == 1 else "BGR" if data.shape[0] == 3 else None


def _same_url(a: str, b: str) -> bool:
    return a == b or storage.resolve(a).path == storage.resolve(b).path


def _jsonable(options: dict[str, Any]) -> dict[str, Any]:
    return json.loads(json.dumps(options))
