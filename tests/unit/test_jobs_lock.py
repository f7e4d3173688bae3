"""The job lock: exclusive, names its holder, and takes over only locks that are really stale."""
from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import sys
import time

import pytest

from hovcaffe.errors import JobLockedError
from hovcaffe.jobs.lock import JobLock, process_start_time, read_lock


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def write_lock(state_dir, **fields):
    state_dir.mkdir(parents=True, exist_ok=True)
    data = {"pid": 1, "host": socket.gethostname(), "started": time.time(), "run_key": "2024-05-01",
            "run_id": "r1", **fields}
    (state_dir / "lock").write_text(json.dumps(data))
    return state_dir / "lock"


def test_second_holder_is_refused_with_the_holders_identity(tmp_path):
    first = JobLock(tmp_path, stale_after=60, info={"run_key": "2024-05-01", "run_id": "r1"})
    first.acquire()
    try:
        with pytest.raises(JobLockedError) as info:
            JobLock(tmp_path, stale_after=60).acquire()
        message = str(info.value)
        assert f"pid {os.getpid()} on host {socket.gethostname()}" in message
        assert "run 2024-05-01" in message and str(tmp_path / "lock") in message
        assert info.value.exit_code == 3
    finally:
        first.release()
    assert not (tmp_path / "lock").exists()
    with JobLock(tmp_path, stale_after=60):  # free again
        assert read_lock(tmp_path).pid == os.getpid()


def test_lock_file_records_owner(tmp_path):
    with JobLock(tmp_path, stale_after=60, info={"run_id": "abc"}) as lock:
        data = json.loads((tmp_path / "lock").read_text())
        assert data["pid"] == os.getpid() and data["host"] == socket.gethostname()
        assert data["run_id"] == "abc" and abs(data["started"] - time.time()) < 60
        assert data["proc_start"] == pytest.approx(process_start_time(os.getpid()))
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
        try:
            lock.set_child(child.pid, "train")
            assert json.loads((tmp_path / "lock").read_text())["child"]["pid"] == child.pid
        finally:
            child.kill()
            child.wait()


def test_stale_lock_of_a_dead_pid_is_taken_over_with_a_warning(tmp_path, caplog):
    pid = dead_pid()
    write_lock(tmp_path, pid=pid)
    with caplog.at_level(logging.WARNING, logger="hovcaffe.jobs.lock"):
        with JobLock(tmp_path, stale_after=3600):
            assert read_lock(tmp_path).pid == os.getpid()
    assert f"process {pid} on this host is no longer running" in caplog.text


def test_reused_pid_counts_as_dead(tmp_path):
    # Our own pid is alive, but the recorded start time says it was another process.
    write_lock(tmp_path, pid=os.getpid(), proc_start=process_start_time(os.getpid()) - 1000)
    with JobLock(tmp_path, stale_after=3600):
        assert read_lock(tmp_path).data["proc_start"] == pytest.approx(process_start_time(os.getpid()))


def test_live_step_process_keeps_the_lock_of_a_dead_runner(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        write_lock(tmp_path, pid=dead_pid(), child={"pid": child.pid, "step": "train",
                                                    "proc_start": process_start_time(child.pid)})
        with pytest.raises(JobLockedError, match=f"step process \\(pid {child.pid}\\) is still running"):
            JobLock(tmp_path, stale_after=3600).acquire()
    finally:
        child.kill()
        child.wait()
    with JobLock(tmp_path, stale_after=3600):
        pass


def test_other_host_is_stale_only_after_max_age(tmp_path):
    lock = write_lock(tmp_path, host="some-other-host", pid=dead_pid())
    with pytest.raises(JobLockedError, match="another host"):
        JobLock(tmp_path, stale_after=600).acquire()
    old = time.time() - 601
    os.utime(lock, (old, old))
    with JobLock(tmp_path, stale_after=600):
        assert read_lock(tmp_path).host == socket.gethostname()


def test_heartbeat_refreshes_the_lock(tmp_path):
    with JobLock(tmp_path, stale_after=60, heartbeat_s=0.05):
        old = time.time() - 100
        os.utime(tmp_path / "lock", (old, old))
        time.sleep(0.5)
        assert time.time() - (tmp_path / "lock").stat().st_mtime < 10


def test_unreadable_lock(tmp_path):
    lock = tmp_path / "lock"
    lock.write_text("garbage")
    with pytest.raises(JobLockedError, match="being written"):
        JobLock(tmp_path, stale_after=60).acquire()
    old = time.time() - 100
    os.utime(lock, (old, old))
    with JobLock(tmp_path, stale_after=60):
        pass


def test_release_leaves_a_lock_that_was_taken_over(tmp_path):
    lock = JobLock(tmp_path, stale_after=60)
    lock.acquire()
    write_lock(tmp_path, pid=12345, run_id="someone-else")
    lock.release()
    assert read_lock(tmp_path).data["run_id"] == "someone-else"


RACER = """
import sys, time
from hovcaffe.errors import JobLockedError
from hovcaffe.jobs.lock import JobLock
while time.time() < float(sys.argv[2]):
    time.sleep(0.001)
try:
    lock = JobLock(sys.argv[1], stale_after=3600)
    lock.acquire()
except JobLockedError:
    print("LOCKED")
else:
    print("GOT")
    time.sleep(3)
    lock.release()
"""


def test_racing_takeovers_of_one_stale_lock_leave_one_winner(tmp_path):
    write_lock(tmp_path, pid=dead_pid())
    start = time.time() + 1.5
    procs = [subprocess.Popen([sys.executable, "-c", RACER, str(tmp_path), str(start)],
                              stdout=subprocess.PIPE, text=True) for _ in range(4)]
    results = sorted(p.communicate(timeout=60)[0].strip() for p in procs)
    assert results == ["GOT", "LOCKED", "LOCKED", "LOCKED"]
