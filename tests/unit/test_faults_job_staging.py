"""Failed job runs that are never rerun must not leave `.tmp-*` staging next to destinations
forever: the next run of the job deletes staging of other dates whose last attempt ended more
than STALE_STAGING_S ago; younger staging stays so a rerun of that date can reuse it."""
from __future__ import annotations

import datetime as dt
import json

from test_jobs_runner import PY, counter, job, make_job

from hovcaffe.jobs.runner import STALE_STAGING_S

OLD, NEW = "2024-05-01", "2024-05-02"
STEPS = f"""\
- name: make
  type: shell
  argv: [{PY}, tool.py, write, "{{outputs.data}}", "made {{date}}", made.count]
  outputs:
    data: out/{{date}}/data.txt
- name: check
  type: shell
  argv: [{PY}, tool.py, need, fixed.flag]
"""


def staging(tmp_path, date: str) -> list[str]:
    folder = tmp_path / "out" / date
    return sorted(p.name for p in folder.glob(".tmp-*")) if folder.exists() else []


def age_run(tmp_path, date: str, seconds: float) -> None:
    """Move the run's attempts `seconds` into the past, as if that much time went by."""
    path = tmp_path / "state" / "state.json"
    state = json.loads(path.read_text())
    for attempt in state["runs"][date]["attempts"]:
        for key in ("started", "finished"):
            then = dt.datetime.fromisoformat(attempt[key]) - dt.timedelta(seconds=seconds)
            attempt[key] = then.isoformat(timespec="seconds")
    path.write_text(json.dumps(state))


def test_staging_of_a_failed_date_is_kept_for_a_while_then_deleted(tmp_path):
    spec = make_job(tmp_path, STEPS)
    assert job("run", str(spec), "--date", OLD).returncode == 1   # check fails: nothing published
    assert staging(tmp_path, OLD) == [f".tmp-data.{OLD}.txt"]
    # a run of another date soon after leaves it: rerunning OLD may still reuse it
    assert job("run", str(spec), "--date", NEW).returncode == 1
    assert staging(tmp_path, OLD) == [f".tmp-data.{OLD}.txt"]
    # once it is older than the limit, the next run of the job deletes it (and says so)
    age_run(tmp_path, OLD, STALE_STAGING_S + 60)
    out = job("run", str(spec), "--date", NEW)
    assert out.returncode == 1
    assert staging(tmp_path, OLD) == []
    assert f"deleted stale staging {tmp_path / 'out' / OLD / f'.tmp-data.{OLD}.txt'} (run {OLD}, " \
           "step make, output data, never published)" in out.stderr
    assert staging(tmp_path, NEW) == [f".tmp-data.{NEW}.txt"]   # the current date's is its own
    # rerunning the old date now makes its output again and publishes it
    (tmp_path / "fixed.flag").touch()
    made = counter(tmp_path, "made.count")
    out = job("run", str(spec), "--date", OLD)
    assert out.returncode == 0, out.stderr
    assert counter(tmp_path, "made.count") == made + 1
    assert (tmp_path / "out" / OLD / "data.txt").read_text() == f"made {OLD}"
    assert staging(tmp_path, OLD) == []
