"""The `HDF5Data` feed, with Caffe's `HDF5DataLayer` row order; also .npz arrays for `Input` nets.

Caffe's cursor (reproduced here, docs/caffe-semantics.md#hdf5data):

* the source is a text file listing .h5 files (whitespace-separated tokens); each top reads the
  dataset named like the top, all datasets of a file have the same first dimension;
* rows are served file by file in list order; a batch that reaches the end of a file continues with
  the next one (batches span file boundaries) and the list wraps around forever;
* `shuffle: true` shuffles the file order at start and at each wrap-around, and the row order of a
  file when it is loaded and again each time its rows are exhausted; files are never mixed.
  Shuffles use NumPy's generator seeded with (seed, rank), not Caffe's RNG.

Sharding for several ranks is Caffe's multi-GPU rule: a global sample counter runs over the
stream and rank r keeps sample i iff `i % world_size == r` (round-robin). Unlike Caffe, which runs
test nets on rank 0 only, TEST feeds are sharded the same way so that the ranks' averaged test
scores count each sample once.

`state_dict()` is JSON-safe (plain ints, lists and the generator state) for exact resume.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from hovcaffe.data.registry import FeedContext, register_feed
from hovcaffe.errors import DataSourceError, UserInputError
from hovcaffe.utils.paths import resolve_path

log = logging.getLogger(__name__)

Loader = Callable[[str, Sequence[str]], dict[str, np.ndarray]]
H5_SUFFIXES = (".h5", ".hdf5", ".he5")


def load_h5(path: str, tops: Sequence[str]) -> dict[str, np.ndarray]:
    """The datasets named like `tops` from one HDF5 file, as float32 arrays."""
    import h5py

    try:
        with h5py.File(path, "r") as fh:
            missing = [t for t in tops if t not in fh]
            if missing:
                raise DataSourceError(
                    f"HDF5 file {path!r} has no dataset {missing[0]!r} (HDF5Data reads one dataset "
                    f"per top, named like the top); datasets in the file: {sorted(fh.keys())}")
            return {t: np.asarray(fh[t], dtype=np.float32) for t in tops}
    except OSError as exc:
        raise DataSourceError(f"cannot read HDF5 file {path!r}: {exc}") from exc


def load_npz(path: str, tops: Sequence[str]) -> dict[str, np.ndarray]:
    """Arrays named like `tops` from an .npz file (never unpickles)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            missing = [t for t in tops if t not in data.files]
            if missing:
                raise DataSourceError(f"{path!r} has no array {missing[0]!r}; the net's inputs "
                                      f"are {list(tops)}, the file holds {data.files}")
            return {t: np.asarray(data[t], dtype=np.float32) for t in tops}
    except DataSourceError:
        raise
    except (OSError, ValueError) as exc:
        raise DataSourceError(f"cannot read {path!r} as .npz: {exc}") from exc


def read_file_list(list_path: str) -> list[str]:
    """The .h5 paths of a source list; relative entries resolved by `resolve_path`."""
    try:
        tokens = Path(list_path).read_text().split()
    except OSError as exc:
        raise DataSourceError(f"cannot read HDF5 source list {list_path!r}: {exc}") from exc
    if not tokens:
        raise DataSourceError(f"HDF5 source list {list_path!r} names no files")
    base = os.path.dirname(os.path.abspath(list_path))
    return [resolve_path(t, base, what="HDF5 file", named_in=list_path) for t in tokens]


class ArrayFileFeed:
    """Caffe's HDF5DataLayer cursor over a list of array files (see the module docstring).

    Args:
        files: array files in list order.
        tops: top names (= dataset names), in the layer's top order.
        batch_size: rows per batch.
        loader: reads one file -> {top: float32 array}.
        shuffle: Caffe's `shuffle` option.
        rank, world_size: round-robin shard of the sample stream.
        seed: seed of the shuffles (None: nondeterministic).
        transform: optional function applied to each assembled batch (dict of arrays).
    """

    def __init__(self, files: Sequence[str], tops: Sequence[str], batch_size: int, *,
                 loader: Loader = load_h5, shuffle: bool = False, rank: int = 0,
                 world_size: int = 1, seed: int | None = None,
                 transform: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]] | None = None):
        if batch_size < 1:
            raise UserInputError(f"batch_size must be >= 1, got {batch_size}")
        if not 0 <= rank < world_size:
            raise ValueError(f"rank {rank} outside world_size {world_size}")
        self.files, self.tops, self.batch_size = list(files), list(tops), int(batch_size)
        self.loader, self.shuffle, self.transform = loader, shuffle, transform
        self.rank, self.world_size = rank, world_size
        self.rng = np.random.default_rng(None if seed is None else [seed, rank])
        self.file_permutation = list(range(len(self.files)))
        if shuffle:
            self.rng.shuffle(self.file_permutation)
        self.current_file = 0
        self.current_row = 0
        self.offset = 0  # samples passed over by the cursor, kept or skipped (Caffe's offset_)
        self._load(self.file_permutation[0])

    # -- Caffe's cursor ------------------------------------------------------------------------
    def _load(self, index: int, shuffle: bool = True) -> None:
        path = self.files[index]
        arrays = self.loader(path, self.tops)
        rows = {t: a.shape[0] if a.ndim else None for t, a in arrays.items()}
        if any(r is None for r in rows.values()) or len(set(rows.values())) != 1:
            raise DataSourceError(f"{path!r}: every top's dataset needs the same first dimension "
                                  f"(rows); got {rows}")
        self.rows = next(iter(rows.values()))
        if self.rows == 0:
            raise DataSourceError(f"{path!r} holds no rows")
        self.arrays = arrays
        self.data_permutation = np.arange(self.rows)
        if self.shuffle and shuffle:
            self.rng.shuffle(self.data_permutation)

    def _next(self) -> None:
        self.current_row += 1
        if self.current_row == self.rows:
            if len(self.files) > 1:
                self.current_file += 1
                if self.current_file == len(self.files):
                    self.current_file = 0
                    if self.shuffle:
                        self.rng.shuffle(self.file_permutation)
                self._load(self.file_permutation[self.current_file])
            self.current_row = 0
            if self.shuffle:
                self.rng.shuffle(self.data_permutation)
        self.offset += 1

    def _skip(self) -> bool:
        return self.offset % self.world_size != self.rank

    def next_arrays(self) -> dict[str, np.ndarray]:
        """The next batch as float32 arrays (rows gathered across file boundaries)."""
        pieces: list[dict[str, np.ndarray]] = []
        arrays, rows = self.arrays, []
        for _ in range(self.batch_size):
            while self._skip():
                self._next()
            if self.arrays is not arrays:  # crossed into another file: close the segment
                pieces.append({t: a[rows] for t, a in arrays.items()})
                arrays, rows = self.arrays, []
            rows.append(int(self.data_permutation[self.current_row]))
            self._next()
        pieces.append({t: a[rows] for t, a in arrays.items()})
        batch = pieces[0] if len(pieces) == 1 else {
            t: np.concatenate([p[t] for p in pieces]) for t in self.tops}
        return self.transform(batch) if self.transform else batch

    def pass_samples(self) -> int:
        """This rank's round-robin share of one pass over all files' rows."""
        total = sum(_file_rows(path, self.tops[0], self.loader) for path in self.files)
        return len(range(self.rank, total, self.world_size))

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Batch shape of every top, from the file currently loaded (no data consumed)."""
        return {t: (self.batch_size,) + tuple(a.shape[1:]) for t, a in self.arrays.items()}

    # -- Feed protocol ---------------------------------------------------------------------------
    def __iter__(self) -> "ArrayFileFeed":
        return self

    def __next__(self) -> dict[str, torch.Tensor]:
        return {t: torch.from_numpy(np.ascontiguousarray(a)) for t, a in self.next_arrays().items()}

    def state_dict(self) -> dict[str, Any]:
        return {
            "files": list(self.files),
            "file_permutation": [int(i) for i in self.file_permutation],
            "current_file": self.current_file,
            "current_row": self.current_row,
            "offset": self.offset,
            "data_permutation": (None if not self.shuffle
                                 else [int(i) for i in self.data_permutation]),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        if list(state["files"]) != self.files:
            log.warning("resuming an array feed whose file list changed (%s -> %s); positions "
                        "are applied by index", state["files"], self.files)
        self.file_permutation = [int(i) for i in state["file_permutation"]]
        self.current_file = int(state["current_file"])
        self._load(self.file_permutation[self.current_file], shuffle=False)
        self.rng.bit_generator.state = state["rng"]
        if state.get("data_permutation") is not None:
            self.data_permutation = np.asarray(state["data_permutation"], dtype=np.int64)
        self.current_row = int(state["current_row"])
        self.offset = int(state["offset"])


def _file_rows(path: str, top: str, loader: Loader) -> int:
    """Rows of one array file: from the HDF5 header when possible, else by loading it."""
    if path.lower().endswith(H5_SUFFIXES):
        import h5py

        try:
            with h5py.File(path, "r") as f:
                return int(f[top].shape[0])
        except (OSError, KeyError):
            pass  # let the loader report the problem in its own words
    return int(loader(path, [top])[top].shape[0])


def source_files(source: str, base_dir: str, *, what: str) -> list[str]:
    """A list file's entries, or the file itself when `source` is an .h5/.npz file."""
    path = resolve_path(source, base_dir, what=what)
    if path.lower().endswith(H5_SUFFIXES + (".npz",)):
        return [path]
    return read_file_list(path)


@register_feed("HDF5Data")
def make_hdf5_feed(layer, ctx: FeedContext) -> ArrayFileFeed:
    """The feed of an `HDF5Data` layer (caffe_pb2.LayerParameter).

    `ctx.source_override` replaces `hdf5_data_param.source` (a list file or one .h5 file).
    """
    if layer.HasField("transform_param"):
        raise UserInputError(f"HDF5Data layer {layer.name!r} has a transform_param; Caffe refuses "
                             "transformations for HDF5Data (store the data already transformed)")
    param = layer.hdf5_data_param
    files = source_files(ctx.source_override or param.source, ctx.base_dir,
                         what=f"HDF5 source of layer {layer.name!r}")
    return ArrayFileFeed(files, list(layer.top), param.batch_size, shuffle=param.shuffle,
                         rank=ctx.rank, world_size=ctx.world_size, seed=ctx.seed)
