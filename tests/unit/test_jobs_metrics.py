"""Merging and summarising the training metrics CSVs of a (resumed) train step."""
from __future__ import annotations

import csv
import io

from hovcaffe.jobs.metrics import merge_rows, summarize, to_csv

FIRST = """iteration,lr,loss,smoothed_loss,seconds,test/accuracy
0,0.01,2.3,2.3,0.1,0.1
1,0.01,2.1,2.2,0.2,
2,0.01,1.9,2.1,0.3,
"""
# Resumed from the snapshot at iteration 2: iteration 2 is not repeated, 3 and 4 are new.
SECOND = """iteration,lr,loss,smoothed_loss,seconds,test/accuracy
3,0.009,1.5,1.8,0.1,
4,,1.2,1.6,0.2,0.8
"""


def test_merge_and_summarize(tmp_path):
    (tmp_path / "a.csv").write_text(FIRST)
    (tmp_path / "b.csv").write_text(SECOND.replace("3,0.009,1.5", "3,0.009,1.4") + "")
    (tmp_path / "c.csv").write_text(SECOND)  # a third attempt redid 3-4: it wins
    rows = merge_rows([tmp_path / "a.csv", tmp_path / "b.csv", tmp_path / "c.csv", tmp_path / "missing.csv"])
    assert [r["iteration"] for r in rows] == ["0", "1", "2", "3", "4"]
    assert rows[3]["loss"] == "1.5"
    summary = summarize(rows)
    assert summary == {"last_logged_iteration": 4, "final_lr": 0.009, "final_loss": 1.2, "final_smoothed_loss": 1.6,
                       "test/accuracy": 0.8, "min_loss": 1.2}
    back = list(csv.DictReader(io.StringIO(to_csv(rows))))
    assert list(back[0]) == ["iteration", "lr", "loss", "smoothed_loss", "seconds", "test/accuracy"]
    assert [r["loss"] for r in back] == ["2.3", "2.1", "1.9", "1.5", "1.2"]


def test_empty():
    assert summarize([]) == {}
