"""HDF5 list files (HDF5Data's ``source``): one ``.h5`` path per line, every root dataset a column.

All datasets of a file must have the same number of rows (Caffe's rule); all files must hold the
same datasets with the same per-row shapes. Rows keep Caffe's order: file by file, row by row.
Values are stored as float32, the type Caffe loads them into.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from hovcaffe.data.schema import FieldSpec
from hovcaffe.data.sources.base import Record, RecordError, SourcePlan, records_per_task
from hovcaffe.data.storage import require
from hovcaffe.errors import DataSourceError


def _open_h5(url: str, base_dir: str | None):
    import h5py

    loc = require(url, base_dir, what="HDF5 file")
    try:
        if loc.is_local:
            return h5py.File(loc.path, "r")
        return h5py.File(loc.fs.open_input_file(loc.path), "r")
    except OSError as exc:
        raise DataSourceError(f"{url}: not a readable HDF5 file ({exc})") from exc


def file_layout(url: str, base_dir: str | None = None) -> tuple[int, dict[str, tuple[int, ...]]]:
    """(rows, {dataset: per-row shape}) of one HDF5 file's root datasets."""
    import h5py

    with _open_h5(url, base_dir) as f:
        shapes = {name: obj.shape for name, obj in f.items() if isinstance(obj, h5py.Dataset)}
    if not shapes:
        raise DataSourceError(f"{url}: no datasets at the root of the file")
    rows = {s[0] if s else 0 for s in shapes.values()}
    if len(rows) != 1:
        raise DataSourceError(f"{url}: datasets have different numbers of rows: "
                              + ", ".join(f"{k}={v[0] if v else 0}" for k, v in sorted(shapes.items())))
    return rows.pop(), {k: tuple(v[1:]) for k, v in shapes.items()}


@dataclasses.dataclass
class Hdf5ListSource:
    """Converter source for an HDF5Data list file (or a single ``.h5`` file)."""

    url: str
    base_dir: str | None = None
    kind = "hdf5"

    def options(self) -> dict[str, Any]:
        return {}

    def inputs(self) -> list[str]:
        files = self.files()
        return files if files == [self.url] else [self.url, *files]

    def files(self) -> list[str]:
        loc = require(self.url, self.base_dir, what="HDF5 list")
        if self.url.endswith((".h5", ".hdf5")):
            return [self.url]
        lines = [ln.strip() for ln in loc.read_bytes().decode("utf-8").splitlines()]
        files = [ln for ln in lines if ln]
        if not files:
            raise DataSourceError(f"{self.url}: the list names no HDF5 files")
        return files

    def plan(self, per_task: int | None) -> SourcePlan:
        files = self.files()
        layouts = [file_layout(u, self.base_dir) for u in files]
        shapes = layouts[0][1]
        for u, (_, other) in zip(files[1:], layouts[1:]):
            if other != shapes:
                raise DataSourceError(f"{u}: datasets {other} differ from {files[0]}'s {shapes}")
        row_bytes = 4 * sum(int(np.prod(s)) for s in shapes.values())
        total = sum(n for n, _ in layouts)
        n_task = records_per_task(total, row_bytes, per_task)
        tasks = [(u, s, min(n_task, n - s)) for u, (n, _) in zip(files, layouts) for s in range(0, n, n_task)]
        fields = [FieldSpec(name, "ndarray", "float32", shape) for name, shape in sorted(shapes.items())]
        return SourcePlan(fields=fields, tasks=tasks, count=total, tops=[f.name for f in fields],
                          record_bytes=row_bytes)

    def read(self, task: tuple[str, int, int]) -> Iterator[Record | RecordError]:
        url, start, n = task
        with _open_h5(url, self.base_dir) as f:
            block = {name: np.asarray(ds[start:start + n], dtype=np.float32) for name, ds in f.items()}
        for i in range(n):
            yield Record(f"{url}:{start + i}", {name: arr[i] for name, arr in block.items()})
