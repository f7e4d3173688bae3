"""Fault-injection hooks for the failure tests, switched on only by environment variables.

* ``HOVCAFFE_FAULT=raise:RANK:ITER`` makes rank RANK raise :class:`InjectedFault` when it starts
  iteration ITER (0-based, Caffe's counter), e.g. ``raise:1:5``. The rank environment carries it
  to every rank; only the named rank acts on it.
* ``HOVCAFFE_FAULT=kill:RANK:ITER`` makes rank RANK send itself SIGKILL at that point instead: a
  rank that dies without a word, at an exact iteration (no race between a test and the rank).
  With ``HOVCAFFE_PID_DIR`` set it fires once (it leaves ``rank<R>.killed`` there first), so a
  restarted run (``max_restarts``) gets past that iteration, as after a transient failure.
* ``HOVCAFFE_PID_DIR=/some/dir`` makes every rank write ``rank<R>.pid`` (its process id) there,
  and ``rank<R>.iter`` (the last iteration it started) as it goes, so a test can kill one rank's
  Python process by pid at a known point.
* ``HOVCAFFE_SLOW_ITER_S=0.2`` makes every rank sleep that long per iteration, so such a point
  can be hit reliably.

Both cost one dict lookup per iteration when unset.
"""
from __future__ import annotations

import os
import signal
import time

from hovcaffe.errors import HovcaffeError

FAULT_ENV = "HOVCAFFE_FAULT"
PID_DIR_ENV = "HOVCAFFE_PID_DIR"
SLOW_ENV = "HOVCAFFE_SLOW_ITER_S"


class InjectedFault(HovcaffeError):
    """Raised on purpose by ``HOVCAFFE_FAULT`` (tests only)."""


def parse_fault(spec: str) -> tuple[str, int, int] | None:
    """``"raise:1:5"`` -> ("raise", 1, 5), ``"kill:1:7"`` -> ("kill", 1, 7); None for an empty spec.

    Raises:
        ValueError: a malformed spec (so a typo in a test does not pass silently).
    """
    if not spec:
        return None
    parts = spec.split(":")
    if len(parts) != 3 or parts[0] not in ("raise", "kill"):
        raise ValueError(f"{FAULT_ENV}={spec!r}: expected raise:RANK:ITER or kill:RANK:ITER")
    return parts[0], int(parts[1]), int(parts[2])


class FaultHook:
    """Per-rank fault injection state (built once per rank from the environment)."""

    def __init__(self, rank: int, environ: dict[str, str] | None = None) -> None:
        env = os.environ if environ is None else environ
        self.rank = rank
        self.fault = parse_fault(env.get(FAULT_ENV, ""))
        self.pid_dir = env.get(PID_DIR_ENV) or None
        self.slow_s = float(env.get(SLOW_ENV) or 0)
        if self.pid_dir:
            _write(os.path.join(self.pid_dir, f"rank{rank}.pid"), str(os.getpid()))

    @property
    def active(self) -> bool:
        return self.fault is not None or self.pid_dir is not None or self.slow_s > 0

    def on_iteration(self, iteration: int) -> None:
        """Call at the start of each training iteration."""
        if self.slow_s:
            time.sleep(self.slow_s)
        if self.pid_dir:
            _write(os.path.join(self.pid_dir, f"rank{self.rank}.iter"), str(iteration))
        if self.fault and self.fault[1] == self.rank and self.fault[2] == iteration:
            if self.fault[0] == "kill":
                self._kill()
                return
            raise InjectedFault(f"injected failure on rank {self.rank} at iteration {iteration} "
                                f"({FAULT_ENV}={os.environ.get(FAULT_ENV, '')})")

    def _kill(self) -> None:
        if self.pid_dir:
            marker = os.path.join(self.pid_dir, f"rank{self.rank}.killed")
            if os.path.exists(marker):
                return  # fired once already: this is the restarted run
            _write(marker, "")
        os.kill(os.getpid(), signal.SIGKILL)  # no handler, no report: as `kill -9` from outside


def _write(path: str, text: str) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as fh:
        fh.write(text)
    os.replace(tmp, path)
