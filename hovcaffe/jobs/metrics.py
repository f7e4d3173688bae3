"""Read the training metrics CSV(s) of `hovcaffe train` and boil them down for the summary.

`hovcaffe train --metrics-csv` writes one row per iteration with `iteration, lr, loss,
smoothed_loss, seconds` and `test/<output>` columns on test iterations. A job that was
resumed has one CSV per attempt; `merge_rows` joins them by iteration (a later attempt wins,
which is what happens when a crash lost some iterations after the last snapshot).
"""
from __future__ import annotations

import csv
import io
import math
from pathlib import Path
from typing import Any, Iterable

BASE_COLUMNS = ("iteration", "lr", "loss", "smoothed_loss", "seconds")


def read_rows(path: Path) -> list[dict[str, str]]:
    """Rows of one metrics CSV (missing file: no rows)."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        return []
    return list(csv.DictReader(io.StringIO(text)))


def merge_rows(files: Iterable[Path]) -> list[dict[str, str]]:
    """Join the rows of several CSVs by iteration; non-empty cells of later files win."""
    merged: dict[int, dict[str, str]] = {}
    for path in files:
        for row in read_rows(path):
            try:
                it = int(float(row.get("iteration") or "nan"))
            except ValueError:
                continue
            target = merged.setdefault(it, {})
            target.update({k: v for k, v in row.items() if k and v not in (None, "")})
    return [merged[k] for k in sorted(merged)]


def to_csv(rows: list[dict[str, str]]) -> str:
    """Rows back to CSV text: the base columns first, then the others in first-seen order."""
    columns = [c for c in BASE_COLUMNS if any(c in r for r in rows)]
    for row in rows:
        columns += [c for c in row if c not in columns]
    out = io.StringIO()
    writer = csv.DictWriter(out, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return out.getvalue()


def _number(text: str | None) -> float | None:
    try:
        value = float(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return value if math.isfinite(value) else None


def summarize(rows: list[dict[str, str]]) -> dict[str, Any]:
    """Last logged iteration, last loss / smoothed loss / lr, and the last value of each test column."""
    out: dict[str, Any] = {}
    if not rows:
        return out
    out["last_logged_iteration"] = max(int(float(r["iteration"])) for r in rows)
    columns = {c for r in rows for c in r}
    for name in ["lr", "loss", "smoothed_loss"] + sorted(c for c in columns if c.startswith("test/")):
        values = [v for v in (_number(r.get(name)) for r in rows) if v is not None]
        if values:
            out[f"final_{name}" if "/" not in name else name] = values[-1]
    losses = [v for v in (_number(r.get("loss")) for r in rows) if v is not None]
    if losses:
        out["min_loss"] = min(losses)
    return out
