"""The training history of a fitted model, read from the training loop's metrics CSV.

The CSV (``hovcaffe.metrics``) has one row per iteration with ``iteration, lr, loss, smoothed_loss,
seconds`` and ``test/<output>`` columns filled on rows where a test ran. The model keeps the CSV text
as a file next to its weights; this class only reads it.
"""
from __future__ import annotations

import csv
import io
import math
from typing import Iterator

TRAIN_COLUMNS = ("iteration", "lr", "loss", "smoothed_loss", "seconds")


class TrainingHistory:
    """Per-iteration training loss and test outputs of one fit.

    Attributes:
        rows: one dict per CSV row; missing values are None, numbers are floats (iteration int).
    """

    def __init__(self, rows: list[dict[str, float | int | None]]):
        self.rows = rows

    @classmethod
    def from_csv(cls, text: str) -> "TrainingHistory":
        rows = []
        for raw in csv.DictReader(io.StringIO(text)):
            row: dict[str, float | int | None] = {}
            for key, value in raw.items():
                if value in ("", None):
                    row[key] = None
                elif key == "iteration":
                    row[key] = int(value)
                else:
                    try:
                        row[key] = float(value)
                    except ValueError:
                        row[key] = None
            rows.append(row)
        return cls(rows)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, float | int | None]]:
        return iter(self.rows)

    def column(self, name: str) -> list[tuple[int, float]]:
        """(iteration, value) for every row where `name` has a value."""
        return [(int(r["iteration"]), float(r[name])) for r in self.rows
                if r.get(name) is not None and r.get("iteration") is not None]

    @property
    def loss(self) -> list[tuple[int, float]]:
        """(iteration, training loss) per iteration."""
        return self.column("loss")

    @property
    def test_names(self) -> list[str]:
        """The test-output columns (``test/accuracy``, ``test/loss``...)."""
        names = {k for r in self.rows for k in r if k.startswith("test")}
        return sorted(names)

    @property
    def test_outputs(self) -> dict[str, list[tuple[int, float]]]:
        """Test-output name -> (iteration, value) for each test run."""
        return {name: self.column(name) for name in self.test_names}

    def final(self, name: str) -> float | None:
        """The last recorded value of column `name`, or None."""
        values = self.column(name)
        return values[-1][1] if values and math.isfinite(values[-1][1]) else None

    def __repr__(self) -> str:
        last = self.rows[-1].get("iteration") if self.rows else None
        return f"TrainingHistory({len(self.rows)} rows, last iteration {last}, tests {self.test_names})"
