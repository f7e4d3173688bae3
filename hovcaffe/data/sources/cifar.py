"""CIFAR-10 binary batches (``data_batch_1.bin`` ... ``test_batch.bin``).

Each record is 1 label byte and 3072 pixel bytes: the red, green and blue 32×32 planes. Caffe's
``convert_cifar_data`` copies those bytes into the Datum unchanged, so channel 0 is *red* (RGB
order, unlike images read through OpenCV); we keep them the same way, so Caffe's CIFAR mean files
and trained models apply.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Iterator

import numpy as np

from hovcaffe.data.schema import image_field, scalar_field
from hovcaffe.data.sources.base import Record, RecordError, SourcePlan, records_per_task
from hovcaffe.data.storage import require
from hovcaffe.errors import DataSourceError

RECORD = 1 + 3 * 32 * 32
SPLITS = {"train": [f"data_batch_{i}.bin" for i in range(1, 6)], "test": ["test_batch.bin"]}


@dataclasses.dataclass
class CifarSource:
    """Converter source for CIFAR-10 binary files.

    Attributes:
        url: one ``.bin`` file, a comma-separated list of them, or the folder holding them
            (then `split` picks ``train`` = data_batch_1..5 or ``test`` = test_batch).
    """

    url: str
    split: str = "train"
    kind = "cifar"

    def options(self) -> dict[str, Any]:
        return {"split": self.split}

    def inputs(self) -> list[str]:
        return self.files()

    def files(self) -> list[str]:
        urls = [u for u in self.url.split(",") if u]
        if len(urls) == 1 and require(urls[0], what="CIFAR-10 source").is_dir():
            if self.split not in SPLITS:
                raise DataSourceError(f"{self.url}: split must be one of {sorted(SPLITS)}, got {self.split!r}")
            base = urls[0].rstrip("/")
            urls = [f"{base}/{name}" for name in SPLITS[self.split]]
        for u in urls:
            size = require(u, what="CIFAR-10 file").info().size
            if size % RECORD:
                raise DataSourceError(f"{u}: {size} bytes is not a whole number of {RECORD}-byte "
                                      f"CIFAR-10 records")
        return urls

    def plan(self, per_task: int | None) -> SourcePlan:
        files = self.files()
        counts = [require(u).info().size // RECORD for u in files]
        total = sum(counts)
        n_task = records_per_task(total, RECORD, per_task)
        tasks = [(u, s, min(n_task, c - s)) for u, c in zip(files, counts) for s in range(0, c, n_task)]
        return SourcePlan(fields=[image_field("data", "ndarray", (3, 32, 32)), scalar_field("label", "int32")],
                          tasks=tasks, count=total, channel_order="RGB", tops=["data", "label"],
                          record_bytes=RECORD)

    def read(self, task: tuple[str, int, int]) -> Iterator[Record | RecordError]:
        url, start, n = task
        loc = require(url)
        with loc.fs.open_input_file(loc.path) as fh:
            fh.seek(start * RECORD)
            block = np.frombuffer(fh.read(n * RECORD), np.uint8)
        if block.size != n * RECORD:
            raise DataSourceError(f"{url}: file shrank during the conversion")
        block = block.reshape(n, RECORD)
        name = url.rstrip("/").rsplit("/", 1)[-1]
        for i in range(n):
            yield Record(f"{name}:{start + i}", {"data": block[i, 1:].reshape(3, 32, 32),
                                                 "label": int(block[i, 0])})
