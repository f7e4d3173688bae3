"""The job lock: one run of a job at a time, even when cron starts it again.

`<state_dir>/lock` is a small JSON file naming the holder (pid, host, process start time, run,
and the step process it is waiting on). It is created atomically (hard link of a complete temp
file: it exists whole or not at all) and refreshed by a heartbeat (its mtime) while the run
lasts. A lock left behind by a crash is *stale* and is taken over with a warning when:

- it was written on this host and neither the holder nor its step process is alive (a pid
  that now belongs to another process - different start time - counts as dead);
- it was written on another host (whose processes we cannot see) and its heartbeat is older
  than the job's `lock.stale_after` seconds.

Deciding and replacing happen under an `flock` on `<state_dir>/lock.guard`, so two runs that
both find a stale lock cannot both take it over.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import socket
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

from hovcaffe.errors import JobLockedError
from hovcaffe.utils.fileio import atomic_write_text

log = logging.getLogger(__name__)

LOCK_NAME = "lock"
GUARD_NAME = "lock.guard"
# A lock file that cannot be parsed (written by something else) counts as stale after this long.
UNREADABLE_GRACE_S = 10.0
_START_TOLERANCE_S = 1.0


def process_start_time(pid: int) -> float | None:
    """Start time (epoch seconds) of a live process, or None if there is none (zombies count as dead)."""
    try:
        import psutil
    except ImportError:  # psutil is a runtime dependency; this keeps the lock usable without it
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:
            pass
        return 0.0
    try:
        proc = psutil.Process(pid)
        if proc.status() == psutil.STATUS_ZOMBIE:
            return None
        return proc.create_time()
    except (psutil.NoSuchProcess, psutil.ZombieProcess):
        return None
    except psutil.AccessDenied:
        return 0.0


def same_process_alive(pid: int | None, recorded_start: float | None) -> bool:
    """Whether `pid` is alive and is still the process that was recorded (not a reused pid)."""
    if not pid:
        return False
    start = process_start_time(int(pid))
    if start is None:
        return False
    if recorded_start and start and abs(start - float(recorded_start)) > _START_TOLERANCE_S:
        return False
    return True


@dataclass
class LockInfo:
    """What a lock file says, plus its heartbeat (file mtime)."""

    data: dict[str, Any]
    heartbeat: float

    @property
    def host(self) -> str:
        return str(self.data.get("host", "?"))

    @property
    def pid(self) -> int:
        return int(self.data.get("pid") or 0)

    def describe(self) -> str:
        started = self.data.get("started")
        when = _dt.datetime.fromtimestamp(started).isoformat(timespec="seconds") if started else "?"
        text = (f"pid {self.pid} on host {self.host}, run {self.data.get('run_key', '?')} "
                f"(run id {self.data.get('run_id', '?')}), started {when}")
        child = self.data.get("child")
        if child:
            text += f", running step {child.get('step')} as pid {child.get('pid')}"
        return text

    def judge(self, stale_after: float, now: float | None = None) -> tuple[bool, str]:
        """(live?, why) for this lock as seen from this host."""
        now = time.time() if now is None else now
        age = now - self.heartbeat
        if self.host != socket.gethostname():
            if age > stale_after:
                return False, f"no heartbeat from host {self.host} for {age:.0f} s (> stale_after {stale_after:g} s)"
            return True, (f"held on another host; it becomes stale after {stale_after:g} s without a "
                          f"heartbeat (last one {age:.0f} s ago)")
        if same_process_alive(self.pid, self.data.get("proc_start")):
            return True, "the holder is running"
        child = self.data.get("child") or {}
        if same_process_alive(child.get("pid"), child.get("proc_start")):
            return True, (f"the holder (pid {self.pid}) is gone but its step process (pid {child['pid']}) "
                          "is still running; wait for it to end or stop it")
        return False, f"process {self.pid} on this host is no longer running"


def read_lock(state_dir: Path) -> LockInfo | None:
    """The current lock of a job's state folder, or None when it is free."""
    path = Path(state_dir) / LOCK_NAME
    try:
        heartbeat = path.stat().st_mtime
        text = path.read_text()
    except FileNotFoundError:
        return None
    try:
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("not a JSON object")
    except ValueError:
        data = {"unreadable": text[:200]}
    return LockInfo(data, heartbeat)


@contextlib.contextmanager
def _guard(state_dir: Path) -> Iterator[None]:
    fd = os.open(state_dir / GUARD_NAME, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
        except OSError as exc:  # e.g. a file system without locks: the hard link still protects creation
            log.debug("flock on %s failed (%s); continuing without the guard", state_dir / GUARD_NAME, exc)
        yield
    finally:
        os.close(fd)  # closing drops the flock


class JobLock:
    """Exclusive lock of one job's state folder, held for a whole run.

    Args:
        state_dir: the job's state folder (created if needed).
        stale_after: seconds without a heartbeat after which another host's lock is stale.
        info: extra fields written into the lock (run_id, run_key, spec...).
        heartbeat_s: how often the holder refreshes the lock's mtime.
    """

    def __init__(self, state_dir: Path, *, stale_after: float, info: dict[str, Any] | None = None,
                 heartbeat_s: float | None = None):
        self.state_dir = Path(state_dir)
        self.path = self.state_dir / LOCK_NAME
        self.stale_after = stale_after
        self.heartbeat_s = heartbeat_s or max(1.0, min(30.0, stale_after / 4))
        self.data: dict[str, Any] = {
            "pid": os.getpid(), "host": socket.gethostname(), "started": time.time(),
            "proc_start": process_start_time(os.getpid()), "child": None, **(info or {})}
        self.token = f"{self.data['host']}:{self.data['pid']}:{self.data['started']}"
        self.data["token"] = self.token
        self.held = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ acquire / release
    def acquire(self) -> None:
        """Take the lock, taking over a stale one with a warning.

        Raises:
            JobLockedError: a live run holds it (the message names the holder).
        """
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / f".tmp-lock.{os.getpid()}"
        tmp.write_text(json.dumps(self.data, indent=1))
        try:
            with _guard(self.state_dir):
                if not self._create(tmp):
                    holder = read_lock(self.state_dir)
                    if holder is not None:
                        self._judge_or_raise(holder)
                    os.replace(tmp, self.path)
        finally:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
        self.held = True
        self._thread = threading.Thread(target=self._beat, name="hovcaffe-job-heartbeat", daemon=True)
        self._thread.start()

    def _create(self, tmp: Path) -> bool:
        try:
            os.link(tmp, self.path)
            return True
        except FileExistsError:
            return False
        except OSError:  # no hard links here: exclusive create (under the guard) instead
            try:
                fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "w") as fh:
                fh.write(tmp.read_text())
            return True

    def _judge_or_raise(self, holder: LockInfo) -> None:
        if "unreadable" in holder.data:
            age = time.time() - holder.heartbeat
            if age < UNREADABLE_GRACE_S:
                raise JobLockedError(f"the lock file {self.path} is being written by another run; "
                                     "try again in a few seconds")
            log.warning("taking over the lock %s: its content is not a hovcaffe lock (%r)",
                        self.path, holder.data["unreadable"][:60])
            return
        live, why = holder.judge(self.stale_after)
        if live:
            raise JobLockedError(f"job is already running: {holder.describe()} ({why}); lock file "
                                 f"{self.path}. If you are sure that run is gone, delete the lock file.")
        log.warning("taking over a stale lock %s (%s): %s", self.path, holder.describe(), why)

    def release(self) -> None:
        """Give the lock back (only if it is still ours)."""
        if not self.held:
            return
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)
        with _guard(self.state_dir):
            current = read_lock(self.state_dir)
            if current is not None and current.data.get("token") == self.token:
                self.path.unlink()
            else:
                log.warning("the lock %s was taken over by another run while this one ran: %s",
                            self.path, current.describe() if current else "(no lock file)")
        self.held = False

    def set_child(self, pid: int | None, step: str | None = None) -> None:
        """Record (or clear) the step process this run waits on, so a crash of the runner alone
        does not let a second run start while the step still writes."""
        self.data["child"] = None if pid is None else {
            "pid": pid, "step": step, "proc_start": process_start_time(pid)}
        with _guard(self.state_dir):
            current = read_lock(self.state_dir)
            if current is None or current.data.get("token") != self.token:
                log.warning("lock %s is no longer held by this run", self.path)
                return
            atomic_write_text(self.path, json.dumps(self.data, indent=1))

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            with contextlib.suppress(OSError):
                os.utime(self.path)

    def __enter__(self) -> "JobLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()
