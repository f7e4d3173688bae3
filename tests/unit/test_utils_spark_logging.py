"""py4j's recovered-send tracebacks stay out of hovcaffe's output; HOVCAFFE_DEBUG brings them back."""
from __future__ import annotations

import os
import subprocess
import sys

from conftest import REPO

_EMIT = """
import logging
from hovcaffe.utils.spark import quiet_py4j
quiet_py4j()
try:
    raise ConnectionResetError(104, "Connection reset by peer")
except ConnectionResetError:
    # what py4j's clientserver logs before it sends the command again on a new connection
    logging.getLogger("py4j.clientserver").exception("Exception while sending command.")
"""


def _stderr(**env: str) -> str:
    clean = {k: v for k, v in os.environ.items() if k != "HOVCAFFE_DEBUG"}
    out = subprocess.run([sys.executable, "-c", _EMIT], cwd=REPO, env={**clean, **env},
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stderr


def test_py4j_records_do_not_reach_stderr():
    assert "Exception while sending command" not in _stderr()


def test_hovcaffe_debug_shows_them():
    err = _stderr(HOVCAFFE_DEBUG="1")
    assert "Exception while sending command." in err and "ConnectionResetError" in err
