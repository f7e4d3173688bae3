"""Starts a step's command so that it dies with the job runner (Linux `PR_SET_PDEATHSIG`).

Usage: `python -m hovcaffe.jobs._child RUNNER_PID -- PROGRAM ARGS...`. The death signal is
SIGTERM, so a killed runner gives `hovcaffe train` its chance to snapshot and exit; without it,
a `kill -9` of the runner would leave training running while the next run starts. Setting it
here (then exec) avoids `preexec_fn`, which is unsafe while the runner has threads.
"""
from __future__ import annotations

import os
import signal
import sys

PR_SET_PDEATHSIG = 1


def main(args: list[str]) -> None:
    runner_pid, argv = int(args[0]), args[2:]
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, int(signal.SIGTERM))
    except (OSError, AttributeError):  # not Linux: the runner's lock still records this process
        pass
    if os.getppid() != runner_pid:  # the runner died before the death signal was armed
        sys.exit(143)
    os.execvp(argv[0], argv)


if __name__ == "__main__":
    main(sys.argv[1:])
