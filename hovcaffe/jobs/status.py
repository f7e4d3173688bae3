"""`hovcaffe job status`: the last runs of a job and who holds its lock (read-only)."""
from __future__ import annotations

import datetime as _dt
from typing import Any

from hovcaffe.jobs.lock import read_lock
from hovcaffe.jobs.runner import run_dir
from hovcaffe.jobs.spec import JobSpec
from hovcaffe.jobs.state import JobState


def job_status(spec: JobSpec, limit: int = 10) -> dict[str, Any]:
    """The lock holder (if any) and the `limit` most recent runs, newest first.

    A run recorded as running whose runner no longer holds the lock is reported as `crashed`
    (the next `job run` for that date resumes it).
    """
    lock = read_lock(spec.state_dir)
    lock_info = None
    if lock is not None:
        live, why = lock.judge(spec.stale_after)
        lock_info = {**lock.data, "live": live, "why": why, "description": lock.describe(),
                     "heartbeat": _dt.datetime.fromtimestamp(lock.heartbeat).astimezone()
                     .isoformat(timespec="seconds")}
    state = JobState(spec.state_dir, spec.name, readonly=True)
    order = {step.name: i for i, step in enumerate(spec.steps)}
    runs = []
    for key, run in state.recent_runs(limit):
        last = run["attempts"][-1] if run.get("attempts") else {}
        status = run.get("status", "?")
        if status == "running" and not (lock_info and lock_info["live"] and lock_info.get("run_key") == key):
            status = "crashed"
        summary = run_dir(spec, key) / "summary.json"
        runs.append({"run_key": key, "status": status, "exit_code": run.get("exit_code"),
                     "attempts": len(run.get("attempts", [])), "started": last.get("started"),
                     "finished": last.get("finished"), "log": last.get("log"),
                     "summary": str(summary) if summary.exists() else None,
                     "steps": {name: {"status": rec.get("status"), "duration_s": rec.get("duration_s"),
                                      "message": rec.get("message") or ""}
                               for name, rec in sorted(run.get("steps", {}).items(),
                                                       key=lambda item: order.get(item[0], len(order)))}})
    return {"job": spec.name, "spec": str(spec.path), "state_dir": str(spec.state_dir),
            "lock": lock_info, "runs": runs}
