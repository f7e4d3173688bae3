"""Training metrics: Caffe's smoothed loss, the CSV log and TensorBoard events.

CSV columns (stable - `hovcaffe plot` and other tools read them by name):

* `iteration` - Caffe's iteration index i (the update about to be applied; 0-based);
* `lr` - the rate used for update i;
* `loss` - iteration i's raw training loss (averaged over `iter_size`), as Caffe's net holds it;
* `smoothed_loss` - Caffe's running mean over the last `average_loss` iteration losses;
* `seconds` - wall time since training started (continued across a resume);
* `test/<output>` (first test net) / `test<k>/<output>` (test net k > 0) - mean of each test-net
  output over `test_iter` batches, on rows where a test ran at that iteration (before update i);
  `test/objective` when `test_compute_loss` is set. Non-scalar outputs get `/<index>` suffixes.

The row after the last update (iteration = max_iter) holds the final test and Caffe's final
display loss, with no lr. Rows are written as they happen and flushed.
"""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np

log = logging.getLogger(__name__)

f32 = np.float32
BASE_COLUMNS = ("iteration", "lr", "loss", "smoothed_loss", "seconds")


class SmoothedLoss:
    """Caffe's `UpdateSmoothedLoss`, in float32: a running mean over a window of losses.

    Args:
        window: `average_loss` (>= 1).
        start_iter: the iteration at which the window (re)starts (Caffe: at each Step() call).
    """

    def __init__(self, window: int, start_iter: int = 0) -> None:
        self.window = max(1, int(window))
        self.start_iter = start_iter
        self.losses: list[f32] = []
        self.value = f32(0)

    def update(self, loss: float, iteration: int) -> float:
        loss = f32(loss)
        if len(self.losses) < self.window:
            self.losses.append(loss)
            size = len(self.losses)
            self.value = f32((self.value * f32(size - 1) + loss) / f32(size))
        else:
            idx = (iteration - self.start_iter) % self.window
            self.value = f32(self.value + (loss - self.losses[idx]) / f32(self.window))
            self.losses[idx] = loss
        return float(self.value)

    def state_dict(self) -> dict[str, Any]:
        return {"window": self.window, "start_iter": self.start_iter,
                "losses": [float(x) for x in self.losses], "value": float(self.value)}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        self.start_iter = int(state["start_iter"])
        self.losses = [f32(x) for x in state["losses"]]
        self.value = f32(state["value"])


def test_columns(test_outputs: Sequence[Sequence[tuple[str, int]]],
                 compute_loss: bool = False) -> list[str]:
    """Column names for the test nets' outputs: one list of (name, element count) per net."""
    cols: list[str] = []
    for k, outputs in enumerate(test_outputs):
        prefix = "test" if k == 0 else f"test{k}"
        for name, count in outputs:
            cols += [f"{prefix}/{name}"] if count == 1 else [f"{prefix}/{name}/{j}"
                                                             for j in range(count)]
        if compute_loss:
            cols.append(f"{prefix}/objective")
    return cols


class MetricsCSV:
    """Appends one row per iteration to a CSV file, flushing each row.

    Args:
        path: the CSV file.
        extra_columns: the `test/...` columns (see `test_columns`).
        resume_from: when resuming at this iteration, rows of an existing file with
            `iteration >= resume_from` (written after the snapshot by the interrupted run) are
            dropped and the file continues; None starts a new file.
    """

    def __init__(self, path: str | os.PathLike, extra_columns: Iterable[str] = (),
                 resume_from: int | None = None) -> None:
        self.path = Path(path)
        self.columns = list(BASE_COLUMNS) + [c for c in extra_columns if c not in BASE_COLUMNS]
        self.path.parent.mkdir(parents=True, exist_ok=True)
        kept = self._kept_rows(resume_from) if resume_from is not None else []
        self._fh = open(self.path, "w", newline="")
        self._writer = csv.DictWriter(self._fh, fieldnames=self.columns, extrasaction="ignore")
        self._writer.writeheader()
        for row in kept:
            self._writer.writerow(row)
        self._fh.flush()

    def _kept_rows(self, resume_from: int) -> list[dict[str, str]]:
        if not self.path.exists():
            return []
        with open(self.path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        return [r for r in rows if r.get("iteration", "").isdigit()
                and int(r["iteration"]) < resume_from]

    def write(self, row: Mapping[str, Any]) -> None:
        self._writer.writerow({k: _fmt(v) for k, v in row.items()})
        self._fh.flush()

    def close(self) -> None:
        if not self._fh.closed:
            self._fh.close()


def _fmt(value: Any) -> Any:
    if value is None:
        return ""
    if isinstance(value, (float, np.floating)):
        return repr(float(value))  # shortest round-trip form: float32 values read back exactly
    return value


class TensorBoardLog:
    """Scalars to TensorBoard event files (a no-op when `tensorboard` is not installed)."""

    def __init__(self, log_dir: str | os.PathLike, purge_step: int | None = None) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as exc:  # tensorboard is optional
            log.info("TensorBoard events disabled: %s", exc)
            self._writer = None
            return
        self._writer = SummaryWriter(log_dir=str(log_dir), purge_step=purge_step)

    @property
    def enabled(self) -> bool:
        return self._writer is not None

    def write(self, row: Mapping[str, Any]) -> None:
        if self._writer is None:
            return
        step = int(row["iteration"])
        for key, value in row.items():
            if key in ("iteration", "seconds") or value is None:
                continue
            if isinstance(value, (int, float, np.floating)) and math.isfinite(float(value)):
                tag = key if "/" in key else f"train/{key}"
                self._writer.add_scalar(tag, float(value), step)

    def close(self) -> None:
        if self._writer is not None:
            self._writer.flush()
            self._writer.close()


class MetricsCallback:
    """Training-loop callback writing the CSV log (and TensorBoard events when `tb_dir` is set).

    Test scores are computed before an iteration's update, so they are held until that
    iteration's row is written.
    """

    def __init__(self, csv_path: str | os.PathLike, tb_dir: str | os.PathLike | None = None):
        self.csv_path, self.tb_dir = csv_path, tb_dir
        self.csv: MetricsCSV | None = None
        self.tb: TensorBoardLog | None = None

    def on_start(self, trainer) -> None:
        # A detection test pass scores each output with one number, its mAP.
        detection = trainer.sp.eval_type == "detection"
        outputs = [[(name, 1 if detection else _count(net, name)) for name in net.output_names]
                   for net in trainer.test_nets]
        cols = test_columns(outputs, bool(trainer.sp.test_compute_loss))
        resume = trainer.iter if trainer.config.resume else None
        self.csv = MetricsCSV(self.csv_path, cols, resume_from=resume)
        if self.tb_dir:
            self.tb = TensorBoardLog(self.tb_dir, purge_step=resume)

    def on_test(self, iteration: int, scores: Mapping[str, float]) -> None:
        pass

    def on_iteration(self, record) -> None:
        row = {"iteration": record.iteration, "lr": record.lr, "loss": record.loss,
               "smoothed_loss": record.smoothed_loss, "seconds": round(record.seconds, 4),
               **(record.test or {})}
        if self.csv:
            self.csv.write(row)
        if self.tb:
            self.tb.write(row)

    def on_snapshot(self, iteration: int, paths: Mapping[str, str]) -> None:
        pass

    def on_end(self, result) -> None:
        if self.csv:
            self.csv.close()
        if self.tb:
            self.tb.close()


def _count(net, name: str) -> int:
    shape = net.blob_shapes.get(name, ())
    return int(np.prod(shape)) if shape else 1
