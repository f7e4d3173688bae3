"""Pieces of the step types that need no subprocess: snapshot discovery and test-score parsing."""
from __future__ import annotations

import json

from hovcaffe.jobs.steps.commands import parse_scores
from hovcaffe.jobs.steps.train import complete_snapshots


def test_only_complete_snapshot_sets_count(tmp_path):
    for name in ["snap_iter_10.caffemodel", "snap_iter_10.solverstate",  # complete
                 "snap_iter_20.caffemodel",                              # no solverstate yet
                 "snap_iter_25.solverstate",                             # caffemodel missing
                 "snap_iter_30.caffemodel", ".tmp-snap_iter_30.solverstate.x1",  # rename pending
                 "other_iter_40.caffemodel", "other_iter_40.solverstate",  # another prefix
                 "snap_iter_5.caffemodel", "snap_iter_5.solverstate"]:
        (tmp_path / name).touch()
    found = complete_snapshots(tmp_path, "snap")
    assert found == {5: tmp_path / "snap_iter_5.solverstate", 10: tmp_path / "snap_iter_10.solverstate"}
    assert max(found) == 10  # numeric, not lexicographic
    assert complete_snapshots(tmp_path / "missing", "snap") == {}


def test_parse_scores_reads_the_last_json_line():
    lines = ["12:00:00 I hovcaffe.net] building", "Loss: 0.5",
             json.dumps({"iterations": 2, "loss": 0.25, "outputs": {"accuracy": 0.75, "prob": [0.1, 0.9]}}),
             "done"]
    assert parse_scores(lines) == {"accuracy": 0.75, "loss": 0.25}
    assert parse_scores(["no json here", "{not json"]) == {}
