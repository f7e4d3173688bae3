"""`hovcaffe doctor` end to end: real local Spark, real Horovod ranks over Gloo and MPI (loopback)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

pytestmark = [pytest.mark.spark, pytest.mark.distributed]


def test_doctor_passes_and_reports_allreduce():
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable)
    proc = subprocess.run([sys.executable, "-m", "hovcaffe.cli", "doctor", "--nics", "lo"],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    # every launcher backend: Horovod on Spark over both transports, the torch barrier stage,
    # local torch.distributed - each one's allreduce of ranks 1 + 2
    for name in ("gloo", "mpi", "torch", "local"):
        line = next((ln for ln in out.splitlines() if f"allreduce 2 ranks ({name})" in ln), "")
        assert "sum over ranks = 3.0 (expected 3)" in line, out
    assert out.count("sum over ranks = 3.0 (expected 3)") == 4
    assert "horovod" in out and "mpi yes" in out and "gloo yes" in out


def test_doctor_fails_with_a_fix_when_a_piece_is_missing(tmp_path):
    # A PATH without java: the java check fails, names the fix, and the exit code is non-zero.
    env = dict(os.environ, PATH=str(tmp_path))
    proc = subprocess.run([sys.executable, "-m", "hovcaffe.cli", "doctor", "--no-spark"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 1
    assert "FAIL java" in proc.stdout and "openjdk-17-jre-headless" in proc.stdout
