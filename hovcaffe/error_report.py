"""How both entry points (`hovcaffe` and `hovcaffe/launch.py`) end on an error: one line on
stderr and an exit code, or the traceback when ``HOVCAFFE_DEBUG`` is set (to anything but 0).

hovcaffe's own errors exit with their class's code (2: bad input, 1: runtime); an interrupt
exits 130; anything else is a bug or an environment failure: exit 1, traceback on request.
Errors that name an option (:class:`~hovcaffe.options.NamesOptions`) are rendered in the entry
point's spelling of the options (its flags).
"""
from __future__ import annotations

import os
import sys
from typing import Mapping

from hovcaffe.errors import EXIT_RUNTIME, HovcaffeError

EXIT_INTERRUPTED = 130


def debug_requested() -> bool:
    """Whether ``HOVCAFFE_DEBUG`` asks for tracebacks (set and not "0")."""
    return os.environ.get("HOVCAFFE_DEBUG", "") not in ("", "0")


def handle_error(exc: BaseException, names: Mapping[str, str]) -> int:
    """Report `exc` on stderr and return the exit code (re-raises it when debugging).

    Args:
        names: option name -> how this entry point spells it (e.g. ``-num-proc``).
    """
    from hovcaffe.options import NamesOptions

    if isinstance(exc, KeyboardInterrupt):
        print("hovcaffe: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    if debug_requested():
        raise exc
    if isinstance(exc, NamesOptions):
        exc = exc.spelled(names)
    if isinstance(exc, HovcaffeError):
        print(f"hovcaffe: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"hovcaffe: error: {type(exc).__name__}: {exc}\n"
          f"(set HOVCAFFE_DEBUG=1 to see the traceback)", file=sys.stderr)
    return EXIT_RUNTIME
