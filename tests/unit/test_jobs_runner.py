"""`hovcaffe job run` machinery with `shell` steps: exit codes, skipping, publishing, locking, crashes.

Every run goes through the real CLI in a subprocess, so exit codes are the ones cron would see.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path


from hovcaffe.jobs.lock import process_start_time, read_lock

DATE = "2024-05-01"
TOOL = """\
import pathlib, sys, time
cmd, args = sys.argv[1], sys.argv[2:]
if cmd == "write":      # write PATH TEXT [COUNTER]
    pathlib.Path(args[0]).write_text(args[1])
    if len(args) > 2:
        with open(args[2], "a") as fh: fh.write("x")
    print("wrote", args[0])
elif cmd == "count":    # count COUNTER
    with open(args[0], "a") as fh: fh.write("x")
elif cmd == "wait":     # wait FLAG: until FLAG exists
    print("waiting for", args[0], flush=True)
    while not pathlib.Path(args[0]).exists():
        time.sleep(0.05)
elif cmd == "need":     # need FLAG [COUNTER]: fail with code 7 unless FLAG exists
    if len(args) > 1:
        with open(args[1], "a") as fh: fh.write("x")
    if not pathlib.Path(args[0]).exists():
        print("flag missing, failing", flush=True)
        sys.exit(7)
"""


def make_job(tmp_path: Path, steps: str, extra: str = "") -> Path:
    (tmp_path / "tool.py").write_text(TOOL)
    spec = tmp_path / "job.yaml"
    spec.write_text(f"name: t\nstate_dir: state\n{extra}steps:\n" + textwrap.indent(textwrap.dedent(steps), "  "))
    return spec


def job(*args: str, wait: bool = True, env: dict | None = None):
    argv = [sys.executable, "-m", "hovcaffe.cli", "job", *args]
    if not wait:
        return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    return subprocess.run(argv, capture_output=True, text=True, timeout=120, env=env)


def summary(tmp_path: Path) -> dict:
    return json.loads((tmp_path / "state" / "runs" / DATE / "summary.json").read_text())


def counter(tmp_path: Path, name: str) -> int:
    path = tmp_path / name
    return len(path.read_text()) if path.exists() else 0


def wait_for_child(state_dir: Path, timeout: float = 30) -> int:
    deadline = time.time() + timeout
    while time.time() < deadline:
        info = read_lock(state_dir)
        if info and info.data.get("child"):
            return int(info.data["child"]["pid"])
        time.sleep(0.05)
    raise AssertionError("the job never started its step")


def wait_gone(pid: int, timeout: float = 20) -> bool:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process_start_time(pid) is None:
            return True
        time.sleep(0.05)
    return False


PY = sys.executable
TWO_STEPS = f"""\
- name: make
  type: shell
  argv: [{PY}, tool.py, write, "{{outputs.data}}", "made {{date}}", made.count]
  outputs:
    data: out/{{date}}/data.txt
- name: check
  type: shell
  argv: [{PY}, tool.py, need, fixed.flag, check.count]
"""


def test_success_publishes_outputs_and_writes_log_and_summary(tmp_path):
    spec = make_job(tmp_path, TWO_STEPS)
    (tmp_path / "fixed.flag").touch()
    out = job("run", str(spec), "--date", DATE)
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "out" / DATE / "data.txt").read_text() == f"made {DATE}"
    assert not list((tmp_path / "out" / DATE).glob(".tmp-*"))
    s = summary(tmp_path)
    assert s["status"] == "succeeded" and s["exit_code"] == 0 and s["run_key"] == DATE
    assert [(x["name"], x["outcome"]) for x in s["steps"]] == [("make", "succeeded"), ("check", "succeeded")]
    assert s["steps"][0]["outputs"] == {"data": str(tmp_path / "out" / DATE / "data.txt")}
    assert all(x["duration_s"] >= 0 for x in s["steps"]) and s["duration_s"] > 0
    log = Path(s["log"]).read_text()
    assert "[make] wrote" in log and "published make.data" in log
    assert "[make] wrote" in out.stdout  # step output is echoed too
    status = json.loads(job("status", str(spec), "--json").stdout)
    assert list(status["runs"][0]["steps"]) == ["make", "check"]  # spec order
    assert status["runs"][0]["summary"] == str(tmp_path / "state" / "runs" / DATE / "summary.json")


def test_failing_step_exits_1_and_publishes_nothing(tmp_path):
    spec = make_job(tmp_path, TWO_STEPS)
    out = job("run", str(spec), "--date", DATE)
    assert out.returncode == 1
    assert not (tmp_path / "out" / DATE / "data.txt").exists()  # the earlier step's output too
    s = summary(tmp_path)
    assert s["status"] == "failed" and s["exit_code"] == 1
    check = s["steps"][1]
    assert check["outcome"] == "failed" and check["exit_code"] == 7
    assert "exited with code 7" in check["message"] and "flag missing" in check["message"]
    assert "step check" in out.stderr and "exited with code 7" in out.stderr


def test_rerun_after_failure_skips_finished_steps_then_everything(tmp_path):
    spec = make_job(tmp_path, TWO_STEPS)
    assert job("run", str(spec), "--date", DATE).returncode == 1
    assert counter(tmp_path, "made.count") == 1
    (tmp_path / "fixed.flag").touch()
    out = job("run", str(spec), "--date", DATE)
    assert out.returncode == 0, out.stderr
    assert counter(tmp_path, "made.count") == 1  # not run again
    assert [x["outcome"] for x in summary(tmp_path)["steps"]] == ["skipped", "succeeded"]
    assert (tmp_path / "out" / DATE / "data.txt").read_text() == f"made {DATE}"
    out = job("run", str(spec), "--date", DATE)
    assert out.returncode == 0 and counter(tmp_path, "made.count") == 1
    # Another date is another run.
    assert job("run", str(spec), "--date", "2024-05-02").returncode == 0
    assert counter(tmp_path, "made.count") == 2 and (tmp_path / "out/2024-05-02/data.txt").exists()


def test_force_step_and_spec_change_run_steps_again(tmp_path):
    spec = make_job(tmp_path, TWO_STEPS)
    (tmp_path / "fixed.flag").touch()
    assert job("run", str(spec), "--date", DATE).returncode == 0
    assert job("run", str(spec), "--date", DATE, "--force-step", "make").returncode == 0
    assert counter(tmp_path, "made.count") == 2
    spec.write_text(spec.read_text().replace("made {date}", "made again {date}"))
    assert job("run", str(spec), "--date", DATE).returncode == 0
    assert counter(tmp_path, "made.count") == 3
    assert (tmp_path / "out" / DATE / "data.txt").read_text() == f"made again {DATE}"
    out = job("run", str(spec), "--date", DATE, "--force-step", "nope")
    assert out.returncode == 2 and "no step named 'nope'" in out.stderr


def test_missing_published_output_makes_the_step_run_again(tmp_path):
    spec = make_job(tmp_path, TWO_STEPS)
    (tmp_path / "fixed.flag").touch()
    assert job("run", str(spec), "--date", DATE).returncode == 0
    assert counter(tmp_path, "check.count") == 1
    (tmp_path / "out" / DATE / "data.txt").unlink()
    assert job("run", str(spec), "--date", DATE).returncode == 0
    assert counter(tmp_path, "made.count") == 2 and (tmp_path / "out" / DATE / "data.txt").exists()
    assert counter(tmp_path, "check.count") == 2  # a step after one that ran again runs again


WAITING = f"""\
- name: slow
  type: shell
  argv: [{PY}, tool.py, wait, go.flag]
- name: after
  type: shell
  argv: [{PY}, tool.py, write, "{{outputs.data}}", done]
  outputs:
    data: out/done.txt
"""


def test_second_run_while_one_runs_exits_3_naming_the_holder(tmp_path):
    spec = make_job(tmp_path, WAITING)
    first = job("run", str(spec), "--date", DATE, wait=False)
    try:
        wait_for_child(tmp_path / "state")
        second = job("run", str(spec), "--date", DATE)
        assert second.returncode == 3
        assert f"already running: pid {first.pid}" in second.stderr and "run 2024-05-01" in second.stderr
        status = json.loads(job("status", str(spec), "--json").stdout)
        assert status["lock"]["live"] and status["lock"]["pid"] == first.pid
        assert status["runs"][0]["status"] == "running"
        text = job("status", str(spec)).stdout
        assert "lock: held" in text and f"pid {first.pid}" in text
    finally:
        (tmp_path / "go.flag").touch()
        first.communicate(timeout=60)
    assert first.returncode == 0 and (tmp_path / "out" / "done.txt").exists()
    status = json.loads(job("status", str(spec), "--json").stdout)
    assert status["lock"] is None and status["runs"][0]["status"] == "succeeded"


def test_stale_lock_of_a_dead_runner_is_taken_over(tmp_path):
    spec = make_job(tmp_path, WAITING)
    (tmp_path / "go.flag").touch()
    dead = subprocess.Popen([PY, "-c", "pass"])
    dead.wait()
    (tmp_path / "state").mkdir()
    import socket
    (tmp_path / "state" / "lock").write_text(json.dumps(
        {"pid": dead.pid, "host": socket.gethostname(), "started": time.time() - 60, "run_key": DATE}))
    out = job("run", str(spec), "--date", DATE)
    assert out.returncode == 0, out.stderr
    assert "taking over a stale lock" in out.stderr and f"process {dead.pid}" in out.stderr
    assert not (tmp_path / "state" / "lock").exists()


def test_kill_9_of_the_runner_stops_its_step_and_the_rerun_recovers(tmp_path):
    spec = make_job(tmp_path, WAITING)
    first = job("run", str(spec), "--date", DATE, wait=False)
    child = wait_for_child(tmp_path / "state")
    first.kill()
    first.communicate()
    assert wait_gone(child), "the step process outlived its killed runner"
    status = json.loads(job("status", str(spec), "--json").stdout)
    assert status["runs"][0]["status"] == "crashed" and not status["lock"]["live"]
    (tmp_path / "go.flag").touch()
    out = job("run", str(spec), "--date", DATE)
    assert out.returncode == 0, out.stderr
    assert "taking over a stale lock" in out.stderr
    state = json.loads((tmp_path / "state" / "state.json").read_text())
    assert [a["status"] for a in state["runs"][DATE]["attempts"]] == ["crashed", "succeeded"]


def test_sigterm_to_the_runner_stops_the_step_cleanly(tmp_path):
    spec = make_job(tmp_path, WAITING)
    first = job("run", str(spec), "--date", DATE, wait=False)
    child = wait_for_child(tmp_path / "state")
    first.send_signal(signal.SIGTERM)
    first.communicate(timeout=60)
    assert first.returncode == 1 and wait_gone(child)
    s = summary(tmp_path)
    assert s["status"] == "interrupted" and s["steps"][0]["outcome"] == "interrupted"
    assert not (tmp_path / "state" / "lock").exists() and not (tmp_path / "out" / "done.txt").exists()


def test_timeout_fails_the_step(tmp_path):
    spec = make_job(tmp_path, WAITING.replace("  argv: [" + PY + ", tool.py, wait", "  timeout: 1\n  argv: [" + PY + ", tool.py, wait", 1))
    out = job("run", str(spec), "--date", DATE)
    assert out.returncode == 1
    assert "timeout of 1 s" in summary(tmp_path)["steps"][0]["message"]


def test_missing_input_and_unwritten_output_fail_the_step(tmp_path):
    spec = make_job(tmp_path, f"""\
    - name: use
      type: shell
      inputs: {{raw: "in/{{date}}.txt"}}
      argv: [{PY}, tool.py, count, "{{inputs.raw}}.count", "{{outputs.data}}"]
      outputs: {{data: out/data.txt}}
    """)
    out = job("run", str(spec), "--date", DATE)
    assert out.returncode == 1 and f"input raw not found: in/{DATE}.txt" in out.stderr
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"{DATE}.txt").touch()
    out = job("run", str(spec), "--date", DATE)
    assert out.returncode == 1 and "did not write output data" in out.stderr
    assert counter(tmp_path, f"in/{DATE}.txt.count") == 1
    assert not (tmp_path / "out" / "data.txt").exists()


def test_unset_environment_variable_at_run_time_is_a_spec_error(tmp_path):
    spec = make_job(tmp_path, f"""\
    - name: use
      type: shell
      argv: [{PY}, tool.py, count, "{{env.H6_SURELY_UNSET}}"]
    """)
    env = {k: v for k, v in os.environ.items() if k != "H6_SURELY_UNSET"}
    out = job("run", str(spec), "--date", DATE, env=env)
    assert out.returncode == 2 and "H6_SURELY_UNSET is not set" in out.stderr
    env["H6_SURELY_UNSET"] = str(tmp_path / "c.count")
    assert job("run", str(spec), "--date", DATE, env=env).returncode == 0
    assert counter(tmp_path, "c.count") == 1


def test_job_env_and_run_variables_reach_the_step(tmp_path):
    spec = make_job(tmp_path, f"""\
    - name: show
      type: shell
      env: {{GREETING: "hi {{job}} {{date:%d.%m.%Y}}"}}
      argv: [{PY}, -c, "import os; print(os.environ['GREETING'], os.environ['HOVCAFFE_RUN_KEY'], os.environ['FROM_JOB'])"]
    """, extra="env:\n  FROM_JOB: '{vars.v}'\nvars:\n  v: '{run_key}!'\n")
    out = job("run", str(spec), "--date", DATE)
    assert out.returncode == 0, out.stderr
    assert f"hi t 01.05.2024 {DATE} {DATE}!" in out.stdout
