"""`hovcaffe doctor` end to end: real local Spark, real Horovod ranks over Gloo and MPI, the torch
barrier stage and local torch.distributed processes (loopback) - all in one doctor run."""
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
    # printed in SMOKE_TESTS order, although the local one runs next to the Spark ones
    lines = [ln for ln in out.splitlines() if "allreduce 2 ranks" in ln]
    assert [ln.split("(")[1].split(")")[0] for ln in lines] == ["gloo", "mpi", "torch", "local"]
    assert out.rstrip().endswith("all checks passed")
    assert "horovod" in out and "mpi yes" in out and "gloo yes" in out


def test_doctor_fails_with_a_fix_when_a_piece_is_missing(tmp_path, monkeypatch):
    # A PATH without java: the java check fails, names the fix, and the exit code is 1. In this
    # process (the same click command as the console script; no interpreter start, ~4 s).
    from click.testing import CliRunner

    from hovcaffe.commands.doctor import cli

    monkeypatch.setenv("PATH", str(tmp_path))
    result = CliRunner().invoke(cli, ["--no-spark"])
    assert result.exit_code == 1, result.output
    assert "FAIL java" in result.output and "openjdk-17-jre-headless" in result.output
    assert "allreduce" not in result.output  # --no-spark: no smoke test
