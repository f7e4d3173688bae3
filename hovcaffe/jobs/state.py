"""The job's memory across runs: `<state_dir>/state.json`, rewritten atomically after each change.

Layout (format 1)::

    {"format": 1, "job": NAME, "runs": {RUN_KEY: {
        "status": "running" | "succeeded" | "failed" | "interrupted" | "crashed",
        "exit_code": int | null,
        "attempts": [{"run_id", "pid", "host", "started", "finished", "status", "exit_code", "log"}],
        "steps": {STEP: {"status", "fingerprint", "attempts", "started", "finished", "duration_s",
                         "exit_code", "message", "metrics",
                         "outputs": {NAME: {"url", "staged", "published"}}}}}}}

A run key is the run's date. Only the runner holding the lock writes; `job status` only reads.
"""
from __future__ import annotations

import datetime as _dt
import json
import logging
from pathlib import Path
from typing import Any

from hovcaffe.utils.fileio import atomic_write_text

log = logging.getLogger(__name__)

STATE_NAME = "state.json"
FORMAT = 1


def now_iso() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


class JobState:
    """Read-modify-write access to one job's state file."""

    def __init__(self, state_dir: Path, job: str, *, readonly: bool = False):
        self.path = Path(state_dir) / STATE_NAME
        self.data: dict[str, Any] = {"format": FORMAT, "job": job, "runs": {}}
        try:
            loaded = json.loads(self.path.read_text())
        except FileNotFoundError:
            return
        except ValueError as exc:
            if readonly:
                log.warning("state file %s is not valid JSON (%s)", self.path, exc)
                return
            # Written atomically, so this means someone edited it; keep it for inspection.
            backup = self.path.with_name(f"{STATE_NAME}.corrupt-{_dt.datetime.now():%Y%m%dT%H%M%S}")
            self.path.rename(backup)
            log.warning("state file %s is not valid JSON (%s); moved to %s and starting afresh",
                        self.path, exc, backup)
            return
        if isinstance(loaded, dict) and loaded.get("format") == FORMAT:
            self.data = loaded
            self.data.setdefault("runs", {})

    def run(self, run_key: str) -> dict[str, Any]:
        """The record of one run key (created empty on first use)."""
        return self.data["runs"].setdefault(run_key, {"status": "new", "exit_code": None,
                                                      "attempts": [], "steps": {}})

    def step(self, run_key: str, name: str) -> dict[str, Any]:
        return self.run(run_key)["steps"].setdefault(name, {"status": "new", "attempts": 0})

    def save(self) -> None:
        atomic_write_text(self.path, json.dumps(self.data, indent=1, sort_keys=True) + "\n")

    def recent_runs(self, limit: int = 10) -> list[tuple[str, dict[str, Any]]]:
        """The latest run keys (by their last attempt's start), newest first."""
        def started(item: tuple[str, dict[str, Any]]) -> str:
            attempts = item[1].get("attempts") or [{}]
            return str(attempts[-1].get("started", "")) + item[0]
        return sorted(self.data["runs"].items(), key=started, reverse=True)[:limit]
