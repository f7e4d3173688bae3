"""Opening a Parquet dataset for reading: its fields and its row groups in a fixed global order.

Three kinds of folders are accepted:

* hovcaffe datasets (``_hovcaffe.json``): everything is in the sidecar, no footer is read;
* other Petastorm datasets (Unischema in ``_common_metadata``): fields from the Unischema;
* plain Parquet (e.g. a DataFrame Spark wrote, CaffeOnSpark's DataFrame sources): fields from the
  Arrow schema, refined by ``fields`` given by the caller (what a CoSData layer declares).

Rows are numbered globally in file-name order, then row-group order, then row order; every
shard and shuffle is a function of those numbers.
"""
from __future__ import annotations

import dataclasses
import threading
from typing import Iterable

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from hovcaffe.data.petastorm_format import UNISCHEMA_KEY, fields_from_unischema, read_unischema
from hovcaffe.data.schema import INFO_FILE, SUCCESS_FILE, DatasetInfo, FieldSpec
from hovcaffe.data.storage import Location, require
from hovcaffe.errors import DataSourceError



@dataclasses.dataclass
class ParquetDataset:
    """A dataset folder opened for reading.

    Attributes:
        loc: where it is.
        info: its description (synthesised for non-hovcaffe folders).
        group_files: file name of each row group (global group order).
        group_index: index of each row group inside its file.
        group_sizes: rows of each row group.
        group_starts: global index of each row group's first row (plus the total at the end).
    """

    loc: Location
    info: DatasetInfo
    group_files: list[str]
    group_index: list[int]
    group_sizes: np.ndarray
    group_starts: np.ndarray

    def __post_init__(self):
        self._local = threading.local()

    def __getstate__(self):
        state = dict(self.__dict__)
        state.pop("_local", None)
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        self._local = threading.local()

    @property
    def num_rows(self) -> int:
        return int(self.group_starts[-1])

    def read_group(self, group: int, columns: Iterable[str]) -> pa.Table:
        """The given columns of one row group (thread-safe: each thread keeps its own file handles)."""
        files = getattr(self._local, "files", None)
        if files is None:
            files = self._local.files = {}
        name = self.group_files[group]
        pf = files.get(name)
        try:
            if pf is None:
                pf = files[name] = pq.ParquetFile(self.loc.fs.open_input_file(self.loc.child(name).path))
            return pf.read_row_group(self.group_index[group], columns=list(columns), use_threads=False)
        except (OSError, pa.ArrowException) as exc:
            raise DataSourceError(f"{self.loc.url}/{name}: cannot read row group "
                                  f"{self.group_index[group]}: {exc}") from exc


def open_dataset(url: str, base_dir: str | None = None, *, fields: list[FieldSpec] | None = None
                 ) -> ParquetDataset:
    """Open the dataset at `url`.

    Args:
        url: the dataset folder.
        base_dir: folder for resolving a relative `url` (see :func:`hovcaffe.data.storage.resolve`).
        fields: field descriptions that replace those found in the folder (by name); needed for
            plain Parquet columns whose meaning the schema cannot tell (raw image bytes).

    Raises:
        DataSourceError: nothing there, an unfinished conversion, or no Parquet files.
    """
    loc = require(url, base_dir, what="dataset")
    if not loc.is_dir():
        raise DataSourceError(f"dataset {url!r} is a file; expected a folder of Parquet files")
    if loc.child(INFO_FILE).exists():
        if not loc.child(SUCCESS_FILE).exists():
            raise DataSourceError(f"dataset {url!r} is incomplete (no {SUCCESS_FILE}): an interrupted "
                                  f"conversion; convert it again")
        info = DatasetInfo.from_json(loc.child(INFO_FILE).read_bytes(), loc.child(INFO_FILE).url)
    else:
        info = _infer_info(loc)
    if fields:
        by_name = {f.name: f for f in fields}
        info.fields = [by_name.pop(f.name, f) for f in info.fields] + list(by_name.values())
    group_files, group_index, sizes = [], [], []
    for entry in info.files:
        for i, n in enumerate(entry["row_groups"]):
            if n:
                group_files.append(entry["name"])
                group_index.append(i)
                sizes.append(n)
    if not sizes:
        raise DataSourceError(f"dataset {url!r} has no rows")
    sizes_arr = np.asarray(sizes, dtype=np.int64)
    return ParquetDataset(loc, info, group_files, group_index, sizes_arr,
                          np.concatenate([[0], np.cumsum(sizes_arr)]))


def _infer_info(loc: Location) -> DatasetInfo:
    parquet = [i for i in loc.list_files()
               if i.base_name.endswith(".parquet") or (i.base_name.startswith("part-") and not
                                                       i.base_name.endswith(".crc"))]
    if not parquet:
        raise DataSourceError(f"dataset {loc.url!r}: no Parquet files in the folder (and no {INFO_FILE})")
    files, schema = [], None
    for i in parquet:
        with loc.fs.open_input_file(i.path) as fh:
            try:
                meta = pq.read_metadata(fh)
            except (OSError, pa.ArrowException) as exc:
                raise DataSourceError(f"{loc.url}/{i.base_name}: not a Parquet file ({exc})") from exc
        schema = schema or meta.schema.to_arrow_schema()
        files.append({"name": i.base_name, "row_groups": [meta.row_group(g).num_rows
                                                          for g in range(meta.num_row_groups)]})
    fields = _fields_from_unischema(loc) or [_field_from_arrow(f) for f in schema]
    return DatasetInfo(fields=[f for f in fields if f is not None], files=files, kind="parquet",
                       source=loc.url, count=sum(sum(f["row_groups"]) for f in files),
                       tops=[f.name for f in fields if f is not None])


def _fields_from_unischema(loc: Location) -> list[FieldSpec] | None:
    """Fields from the Petastorm Unischema in ``_common_metadata``, read without running code."""
    common = loc.child("_common_metadata")
    if not common.exists():
        return None
    with loc.fs.open_input_file(common.path) as fh:
        meta = pq.read_schema(fh).metadata or {}
    if UNISCHEMA_KEY not in meta:
        return None
    return fields_from_unischema(read_unischema(meta[UNISCHEMA_KEY], common.url), common.url)


def _field_from_arrow(field: pa.Field) -> FieldSpec | None:
    t = field.type
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_boolean(t):
        return FieldSpec(field.name, "scalar", np.dtype(t.to_pandas_dtype()).name)
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        return FieldSpec(field.name, "string", "str")
    if pa.types.is_list(t) or pa.types.is_large_list(t):
        return FieldSpec(field.name, "list", "float32", (None,))
    if pa.types.is_binary(t) or pa.types.is_large_binary(t):
        # Unknown meaning: assume an encoded image; a layer declaring raw bytes overrides it.
        return FieldSpec(field.name, "image", "uint8", (None, None, None))
    return None
