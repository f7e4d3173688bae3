"""Run one step's command as a child process and stream its output into the run log.

The child runs in its own session (so the runner decides which signals it gets), is armed to
receive SIGTERM if the runner dies (see `_child`), and is stopped with SIGTERM - then SIGKILL
after a grace period - on a timeout or when the runner itself is asked to stop. Its exit code
is reported as is: the runner never guesses success.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, IO

KILL_GRACE_S = 60.0


@dataclass
class ProcessResult:
    """How a step's command ended.

    Attributes:
        returncode: the exit status (negative: killed by that signal), None if it never started.
        reason: "" for a normal exit, "timeout", "interrupted" or "not started: ...".
        seconds: wall time.
    """

    returncode: int | None
    reason: str
    seconds: float


def _pump(stream: IO[bytes], on_line: Callable[[str], None]) -> None:
    # Carriage returns (progress bars) end a line too, so the log shows their updates in order.
    pending = b""
    for chunk in iter(lambda: stream.read1(65536), b""):
        pending += chunk.replace(b"\r\n", b"\n").replace(b"\r", b"\n")
        *lines, pending = pending.split(b"\n")
        for line in lines:
            if line:
                on_line(line.decode("utf-8", "replace"))
    if pending:
        on_line(pending.decode("utf-8", "replace"))


def run_command(argv: list[str], *, cwd: Path, env: dict[str, str], on_line: Callable[[str], None],
                on_start: Callable[[int], None] = lambda pid: None, timeout: float | None = None,
                stop: threading.Event | None = None, kill_grace: float = KILL_GRACE_S) -> ProcessResult:
    """Run `argv` to completion, calling `on_line` for each output line (stdout and stderr).

    Args:
        argv: program and arguments.
        cwd: working directory.
        env: the complete environment.
        on_line: receives each line of output (without the newline).
        on_start: receives the child's pid once it runs.
        timeout: seconds before the child is stopped (SIGTERM, then SIGKILL).
        stop: when set, the child is stopped the same way (the runner got SIGTERM / SIGINT).
        kill_grace: seconds between SIGTERM and SIGKILL.
    """
    start = time.monotonic()
    launcher = [sys.executable, "-m", "hovcaffe.jobs._child", str(os.getpid()), "--", *argv]
    try:
        proc = subprocess.Popen(launcher, cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True)
    except OSError as exc:
        return ProcessResult(None, f"not started: {exc}", 0.0)
    on_start(proc.pid)
    reader = threading.Thread(target=_pump, args=(proc.stdout, on_line), name="hovcaffe-job-output",
                              daemon=True)
    reader.start()
    reason, term_at = "", None
    deadline = None if timeout is None else start + timeout
    while True:
        try:
            returncode = proc.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        now = time.monotonic()
        if term_at is None:
            if stop is not None and stop.is_set():
                reason = "interrupted"
            elif deadline is not None and now > deadline:
                reason = "timeout"
            if reason:
                _signal_group(proc.pid, signal.SIGTERM)
                term_at = now
        elif now - term_at > kill_grace:
            _signal_group(proc.pid, signal.SIGKILL)
    reader.join(timeout=10)
    return ProcessResult(returncode, reason, time.monotonic() - start)


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass
