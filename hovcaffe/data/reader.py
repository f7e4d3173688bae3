"""Batches of named tensors from a Parquet dataset: sharded, shuffled, transformed, resumable.

``make_batch_iterator`` is the reader every training rank uses. Reading is split in two stages:

* *windows* (a few row groups, see :mod:`hovcaffe.data.order`) are read and decoded by a pool of
  ``workers`` threads, in order, a few windows ahead (Parquet reads and OpenCV decoding release
  the GIL; raw images decode as one numpy view per column);
* *batches* are cut from the decoded windows and transformed (``transform_param``) — in a
  background thread that keeps ``prefetch`` batches ready, or in the caller when ``prefetch=0``.

The position is counted in samples delivered to the caller, so ``state_dict()`` taken after any
batch restores exactly the same following batches — including the random crops and mirrors, which
are drawn from a generator keyed by (seed, rank, phase, pass, batch number).

TEST iterators make one pass per ``for`` loop: the last batch of a pass is *short* (fewer than
``batch_size`` rows, never padded, never dropped); after it, ``next()`` raises StopIteration once
and the next call starts the following pass. Ranks may get one batch more or less than each other,
so sum metrics per sample and reduce across ranks after the pass.
"""
from __future__ import annotations

import atexit
import collections
import logging
import queue
import threading
import weakref
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Iterator, Mapping, Sequence

import numpy as np
import pyarrow as pa
import torch

from hovcaffe.data.codecs import decode_column
from hovcaffe.data.dataset import ParquetDataset, open_dataset
from hovcaffe.data.order import TEST, TRAIN, ShardPlan, Window
from hovcaffe.data.schema import FieldSpec
from hovcaffe.data.transform import Transformer, TransformSpec
from hovcaffe.errors import DataSourceError

log = logging.getLogger(__name__)

# Chosen with benchmarks/reader_throughput.py on the 2-core development machine (numbers in its
# docstring): one decoding thread already reads raw rows ~100x faster than LeNet / CIFAR-10 quick
# train; two prefetched batches hide the decode + transform from the training thread.
DEFAULT_WORKERS = 1
DEFAULT_PREFETCH = 2
DEFAULT_WINDOW_GROUPS = 4
STATE_VERSION = 1


def make_batch_iterator(url: str | ParquetDataset, *, rank: int = 0, world_size: int = 1, phase: int = TRAIN,
                        batch_size: int, tops: Sequence[str] | Mapping[str, str] | None = None,
                        seed: int | None = None,
                        transform: TransformSpec | Mapping[str, TransformSpec] | None = None,
                        workers: int = DEFAULT_WORKERS, prefetch: int = DEFAULT_PREFETCH,
                        shuffle: bool | None = None, shard: str = "rows",
                        window_groups: int = DEFAULT_WINDOW_GROUPS, fields: list[FieldSpec] | None = None,
                        top_shapes: Mapping[str, tuple[int, ...]] | None = None, color: str | None = None,
                        base_dir: str | None = None) -> "BatchIterator":
    """A batch iterator over the dataset at `url`.

    Args:
        url: dataset folder URL (or an already opened :class:`ParquetDataset`).
        rank, world_size: this rank's shard.
        phase: 0 = TRAIN (infinite, shuffled by default), 1 = TEST (one pass per loop, file order).
        batch_size: samples per batch (per rank).
        tops: top names in order (each maps to the field of the same name, else to the dataset's
            default tops by position), or an explicit {top: field} mapping. Default: the dataset's.
        seed: shuffle/crop/mirror seed, the same on all ranks; None draws one (kept in state_dict).
        transform: a transform_param for the first top, or one per top name.
        workers: decoding threads (0: decode in the calling thread).
        prefetch: batches prepared ahead in a background thread (0: prepare on demand).
        shuffle: TRAIN only; default True. TEST never shuffles.
        shard: TRAIN sharding, ``"rows"`` or ``"row_groups"`` (see :mod:`hovcaffe.data.order`).
        window_groups: row groups per shuffle window (the shuffle buffer).
        fields: field descriptions overriding the dataset's (plain Parquet DataFrames).
        top_shapes: per-sample shape to give a top (e.g. ``(1, 1, 1)`` for CoSData scalars).
        color: decode flag for encoded images (``"color"``/``"gray"``; transform_param force_*).
        base_dir: folder for resolving a relative `url`.

    Returns:
        A :class:`BatchIterator` yielding ``dict[top, torch.Tensor]`` (float32, like Caffe's blobs;
        string fields as lists of str).
    """
    dataset = url if isinstance(url, ParquetDataset) else open_dataset(url, base_dir, fields=fields)
    return BatchIterator(dataset, rank=rank, world_size=world_size, phase=phase, batch_size=batch_size,
                         tops=tops, seed=seed, transform=transform, workers=workers, prefetch=prefetch,
                         shuffle=(phase == TRAIN) if shuffle is None else bool(shuffle and phase == TRAIN),
                         shard=shard, window_groups=window_groups, top_shapes=top_shapes, color=color)


def map_tops(dataset: ParquetDataset, tops: Sequence[str] | Mapping[str, str] | None) -> dict[str, str]:
    """{top: field}: same-named field, else the dataset's default tops by position."""
    info = dataset.info
    names = {f.name for f in info.fields}
    if tops is None:
        return {t: t for t in (info.tops or [f.name for f in info.fields])}
    if isinstance(tops, Mapping):
        mapping = dict(tops)
    else:
        defaults = [t for t in (info.tops or [f.name for f in info.fields])]
        mapping = {}
        for i, top in enumerate(tops):
            if top in names:
                mapping[top] = top
            elif i < len(defaults):
                mapping[top] = defaults[i]
            else:
                raise DataSourceError(f"dataset {dataset.loc.url!r} has no field for top {top!r} "
                                      f"(fields: {', '.join(sorted(names))})")
    for top, field in mapping.items():
        info.field(field)  # raises naming the fields when missing
    return mapping


class BatchIterator:
    """Iterator of batches with an exact, resumable position (see the module docstring)."""

    def __init__(self, dataset: ParquetDataset, *, rank: int, world_size: int, phase: int, batch_size: int,
                 tops, seed: int | None, transform, workers: int, prefetch: int, shuffle: bool, shard: str,
                 window_groups: int, top_shapes=None, color: str | None = None):
        if batch_size <= 0:
            raise DataSourceError(f"batch_size must be positive, got {batch_size}")
        self.dataset, self.phase, self.batch_size = dataset, phase, batch_size
        self.rank, self.world_size = rank, world_size
        if seed is None:
            # Sharding by rows needs one shuffle order on every rank: without a seed, ranks > 1
            # agree on 0; a single process draws one.
            seed = 0 if world_size > 1 else int(np.random.SeedSequence().entropy % (1 << 31))
        self.seed = int(seed)
        self.top_fields = map_tops(dataset, tops)
        self.specs = {f: dataset.info.field(f) for f in set(self.top_fields.values())}
        self.top_shapes = dict(top_shapes or {})
        self.color = color
        self.transformers = self._transformers(transform)
        self.workers, self.prefetch = max(0, workers), max(0, prefetch)
        self.plan = ShardPlan(dataset.group_sizes, rank=rank, world_size=world_size, phase=phase,
                              shuffle=shuffle, seed=self.seed, shard=shard, window_groups=window_groups)
        self._position = 0   # samples delivered in this pass (TEST) / in total (TRAIN)
        self._batch = 0      # batches delivered in this pass (TEST) / in total (TRAIN)
        self._pass = 0
        self._pipe: _Pipeline | None = None

    # ------------------------------------------------------------------------- public API

    @property
    def num_samples(self) -> int:
        """TEST: this rank's samples per pass. TRAIN: this rank's samples per epoch."""
        return self.plan.samples_per_pass

    def pass_samples(self) -> int | None:
        """TEST: this rank's samples per pass (its last batch is short); TRAIN: None (endless)."""
        return self.num_samples if self.phase == TEST else None

    def shapes(self) -> dict[str, tuple[int, ...]]:
        """Shape of each top's batches (batch axis first), without moving the position.

        From the dataset's description when it fixes every size; otherwise (images of varying size
        without a crop) from one batch read and then rewound.
        """
        out = self.declared_shapes()
        if all(d is not None for s in out.values() for d in s):
            return out  # type: ignore[return-value]
        state = self.state_dict()
        batch = next(self)
        self.load_state_dict(state)
        return {k: tuple(v.shape) for k, v in batch.items() if isinstance(v, torch.Tensor)}

    def declared_shapes(self) -> dict[str, tuple[int | None, ...]]:
        """Nominal shape of each top from the dataset's fields (None where rows differ in size)."""
        out = {}
        for top, field in self.top_fields.items():
            shape = tuple(self.specs[field].shape)
            if top in self.transformers and len(shape) == 3 and self.transformers[top].spec.crop_size:
                k = self.transformers[top].spec.crop_size
                shape = (shape[0], k, k)
            if top in self.top_shapes:
                shape = tuple(self.top_shapes[top])
            out[top] = (self.batch_size,) + shape
        return out

    def __len__(self) -> int:
        """Batches per pass (TEST) or per epoch (TRAIN) on this rank."""
        return -(-self.num_samples // self.batch_size)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return self

    def __next__(self) -> dict[str, Any]:
        if self.phase == TEST and self._position >= self.plan.samples_per_pass:
            self._close_pipe()
            self._position, self._batch, self._pass = 0, 0, self._pass + 1
            raise StopIteration
        if self._pipe is None:
            self._pipe = _Pipeline(self, self._position, self._batch)
        batch = self._pipe.next()
        self._position += self._batch_len(self._position)
        self._batch += 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"version": STATE_VERSION, "phase": self.phase, "position": self._position,
                "batch": self._batch, "pass": self._pass, "seed": self.seed, "rank": self.rank,
                "world_size": self.world_size, "batch_size": self.batch_size}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        if state.get("phase", self.phase) != self.phase:
            raise DataSourceError(f"reader state is for phase {state['phase']}, this reader is phase {self.phase}")
        for key in ("world_size", "batch_size"):
            if state.get(key, getattr(self, key)) != getattr(self, key):
                log.warning("resuming a reader saved with %s=%s as %s=%s: positions keep their meaning "
                            "per rank, but the sample order differs from an uninterrupted run",
                            key, state[key], key, getattr(self, key))
        self._close_pipe()
        self.seed = int(state["seed"])
        self.plan.seed = self.seed
        self._position, self._batch, self._pass = int(state["position"]), int(state["batch"]), int(state["pass"])

    def close(self) -> None:
        self._close_pipe()

    def __del__(self):
        try:
            self._close_pipe()
        except Exception:  # interpreter shutdown: modules may already be torn down
            pass

    # ------------------------------------------------------------------------- internals

    def _close_pipe(self) -> None:
        pipe, self._pipe = getattr(self, "_pipe", None), None
        if pipe is not None:
            pipe.close()

    def _batch_len(self, position: int) -> int:
        if self.phase == TEST:
            return min(self.batch_size, self.plan.samples_per_pass - position)
        return self.batch_size

    def _transformers(self, transform) -> dict[str, Transformer]:
        if transform is None:
            return {}
        if isinstance(transform, TransformSpec):
            transform = {next(iter(self.top_fields)): transform}
        out = {}
        for top, spec in transform.items():
            if top not in self.top_fields:
                raise DataSourceError(f"transform_param given for {top!r}, which is not one of the tops "
                                      f"{list(self.top_fields)}")
            if not spec.is_identity:
                out[top] = Transformer(spec, self.phase)
        return out

    def decode_window(self, window: Window) -> dict[str, Any]:
        """Decode the rows of one window: {field: array (n, ...) or list}."""
        fields = list(self.specs)
        tables = [self.dataset.read_group(g, fields) for g in window.groups]
        table = tables[0] if len(tables) == 1 else pa.concat_tables(tables)
        out = {}
        for name in fields:
            spec = self.specs[name]
            color = self.color if spec.codec == "image" else None
            out[name] = decode_column(table.column(name), spec, window.rows, color)
        return out

    def make_batch(self, columns: dict[str, Any], batch_index: int) -> dict[str, Any]:
        """Tensors for the tops from one batch of decoded field values."""
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(
            [self.seed, self.rank, self.phase, self._pass, batch_index])))
        out = {}
        for top, field in self.top_fields.items():
            values = columns[field]
            spec = self.specs[field]
            if spec.dtype == "str":
                out[top] = [str(v) for v in values]
                continue
            if top in self.transformers:
                tensor = self.transformers[top](values, rng)
            else:
                if isinstance(values, list):
                    raise DataSourceError(f"top {top!r}: rows of field {field!r} have different shapes "
                                          f"({values[0].shape} and others); resize them when converting")
                tensor = torch.from_numpy(np.array(values, dtype=np.float32, order="C"))  # NumPy: one thread
            if top in self.top_shapes:
                tensor = tensor.reshape((tensor.shape[0],) + tuple(self.top_shapes[top]))
            out[top] = tensor
        return out


_LIVE_PIPELINES: "weakref.WeakSet[_Pipeline]" = weakref.WeakSet()


@atexit.register
def _close_live_pipelines() -> None:
    # Stop producer threads before the interpreter tears down: a daemon thread still inside
    # torch/Arrow C++ code at that point aborts the process ("terminate called ...").
    for pipe in list(_LIVE_PIPELINES):
        pipe.close()


class _Pipeline:
    """Decoded windows (thread pool) -> batches (background thread or on demand)."""

    def __init__(self, reader: BatchIterator, position: int, batch_index: int):
        # A weak reference: a reader dropped without close() is collected, which stops this pipeline.
        self._reader = weakref.ref(reader)
        self._workers = reader.workers
        self._windows = reader.plan.windows(position)
        self._pool = ThreadPoolExecutor(reader.workers, thread_name_prefix="hovcaffe-read") \
            if reader.workers else None
        self._pending: collections.deque[Future] = collections.deque()
        self._chunks: collections.deque[dict[str, Any]] = collections.deque()
        self._position, self._batch = position, batch_index
        self._stop = threading.Event()
        self._queue: queue.Queue | None = None
        self._thread = None
        _LIVE_PIPELINES.add(self)
        if reader.prefetch:
            self._queue = queue.Queue(maxsize=reader.prefetch)
            self._thread = threading.Thread(target=self._produce, name="hovcaffe-batches", daemon=True)
            self._thread.start()

    def next(self) -> dict[str, Any]:
        if self._queue is None:
            return self._build()
        while True:
            try:
                kind, value = self._queue.get(timeout=1.0)
            except queue.Empty:
                if self._thread is not None and not self._thread.is_alive():
                    raise DataSourceError("the batch reader thread stopped unexpectedly") from None
                continue
            if kind == "error":
                raise value
            return value

    def _produce(self) -> None:
        while not self._stop.is_set():
            try:
                item = ("batch", self._build())
            except StopIteration:
                return
            except BaseException as exc:  # handed to the consumer, raised in its thread
                item = ("error", exc)
            while not self._stop.is_set():
                try:
                    self._queue.put(item, timeout=0.5)
                    break
                except queue.Full:
                    continue
            if item[0] == "error":
                return

    @property
    def reader(self) -> BatchIterator:
        reader = self._reader()
        if reader is None:
            raise StopIteration  # the reader is gone: the producer thread ends
        return reader

    def _build(self) -> dict[str, Any]:
        reader = self.reader
        n = reader._batch_len(self._position)
        if n <= 0:
            raise StopIteration
        columns = self._take(n)
        batch = reader.make_batch(columns, self._batch)
        self._position += n
        self._batch += 1
        return batch

    def _take(self, n: int) -> dict[str, Any]:
        parts: list[dict[str, Any]] = []
        need = n
        while need:
            if not self._chunks:
                self._chunks.append(self._next_window())
            chunk = self._chunks[0]
            size = _length(chunk)
            if size <= need:
                parts.append(self._chunks.popleft())
                need -= size
            else:
                parts.append({k: v[:need] for k, v in chunk.items()})
                self._chunks[0] = {k: v[need:] for k, v in chunk.items()}
                need = 0
        if len(parts) == 1:
            return parts[0]
        return {k: _concat([p[k] for p in parts]) for k in parts[0]}

    def _next_window(self) -> dict[str, Any]:
        if self._pool is None:
            window = next(self._windows, None)
            if window is None:
                raise DataSourceError("the reader ran out of data before the end of the pass")
            return self.reader.decode_window(window)
        while len(self._pending) < self._workers + 1:
            window = next(self._windows, None)
            if window is None:
                break
            self._pending.append(self._pool.submit(self.reader.decode_window, window))
        if not self._pending:
            raise DataSourceError("the reader ran out of data before the end of the pass")
        return self._pending.popleft().result()

    def close(self) -> None:
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            while self._thread.is_alive():
                try:  # unblock a producer waiting on a full queue
                    self._queue.get_nowait()
                except queue.Empty:
                    pass
                self._thread.join(timeout=0.05)
        for f in self._pending:
            f.cancel()
        if self._pool is not None:
            self._pool.shutdown(wait=False, cancel_futures=True)


def _length(chunk: dict[str, Any]) -> int:
    return len(next(iter(chunk.values())))


def _concat(values: list) -> Any:
    if all(isinstance(v, np.ndarray) for v in values) and len({v.shape[1:] for v in values}) == 1:
        return np.concatenate(values)
    out: list = []
    for v in values:
        out.extend(list(v))
    return out
