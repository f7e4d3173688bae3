"""Executors whose Python lacks hovcaffe (or runs other versions) stop fit/transform/features at
once with the fix (ship the venv with venv-pack), not deep inside a Spark worker traceback.

The real case: a local Spark session whose executors run a bare virtualenv's Python (created
here, nothing installed in it), started from a folder where hovcaffe is not importable.
"""
from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hovcaffe.utils.executors import FIX, mismatch

pytestmark = pytest.mark.spark

REPO = Path(__file__).resolve().parents[2]
NET = """
name: "tiny"
layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 4 dim: 4 } } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
  inner_product_param { num_output: 2 weight_filler { type: "xavier" } } }
"""
DRIVER = {"python": "/venv/bin/python", "python_version": "3.11.7", "hovcaffe": "0.1.0",
          "hovcaffe_error": None, "torch": "2.13.0+cpu"}


def test_the_same_stack_is_no_mismatch():
    assert mismatch(DRIVER, {**DRIVER, "python": "/other/bin/python", "python_version": "3.11.2"}) is None


@pytest.mark.parametrize("executor, expected", [
    ({"hovcaffe": None, "hovcaffe_error": "ModuleNotFoundError: No module named 'hovcaffe'"},
     "the Spark executors run /usr/bin/python3 (Python 3.11.7) without hovcaffe "
     "(ModuleNotFoundError: No module named 'hovcaffe')"),
    ({"torch": None}, "the Spark executors run /usr/bin/python3 (Python 3.11.7) without torch"),
    ({"python_version": "3.12.1", "torch": "2.12.0"},
     "the Spark executors run /usr/bin/python3 (Python 3.12.1) with Python 3.12.1 "
     "(driver: 3.11.7), torch 2.12.0 (driver: 2.13.0+cpu)"),
])
def test_mismatches_name_what_the_executor_runs(executor, expected):
    assert mismatch(DRIVER, {**DRIVER, "python": "/usr/bin/python3", **executor}) == expected


@pytest.fixture(scope="module")
def bare_python(tmp_path_factory) -> str:
    """A virtualenv of the system's Python with nothing installed (no hovcaffe, torch, numpy)."""
    folder = tmp_path_factory.mktemp("bare")
    base = getattr(sys, "_base_executable", sys.executable)
    subprocess.run([base, "-m", "venv", "--without-pip", str(folder / "venv")], check=True)
    return str(folder / "venv" / "bin" / "python")


def _run(code: str, bare_python: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYSPARK_PYTHON": bare_python, "SPARK_LOCAL_IP": "127.0.0.1",
           "HOVCAFFE_SPARK_MASTER": "local[1]", "PYTHONPATH": ""}
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def _check_message(line: str, bare_python: str) -> None:
    assert "\n" not in line.strip()
    assert f"the Spark executors run {bare_python} (Python " in line
    assert " without hovcaffe (ModuleNotFoundError: No module named 'hovcaffe')" in line
    assert line.strip().endswith(FIX)
    assert "venv-pack -o env.tar.gz" in FIX and "--archives env.tar.gz#env" in FIX
    assert "spark.pyspark.python=./env/bin/python" in FIX


def test_transform_and_fit_stop_with_the_fix(bare_python, tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    code = f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        import numpy as np, torch
        from hovcaffe.caffe import caffe_pb2
        from hovcaffe.caffe.io import read_net
        from hovcaffe.net import CaffeNet
        from hovcaffe.weights import save_caffemodel
        from hovcaffe.ml import CaffeEstimator, CaffeModel
        from hovcaffe.utils.executors import ExecutorEnvironmentError
        from hovcaffe.utils.spark import get_spark

        save_caffemodel(CaffeNet(read_net("net.prototxt"), caffe_pb2.TEST), "net.caffemodel")
        spark = get_spark()
        df = spark.createDataFrame([(1, [0.5] * 16, 0)], ["id", "image", "label"])
        model = CaffeModel.from_files("net.prototxt", "net.caffemodel")
        for name, call in [("transform", lambda: model.transform(df)),
                           ("fit", lambda: CaffeEstimator(solver="solver.prototxt", modelDir="m",
                                                          numProc=1).fit(df))]:
            try:
                call()
                print(name, "RAN")
            except ExecutorEnvironmentError as exc:
                print(name, "|", exc)
    """
    proc = _run(code, bare_python, tmp_path)
    lines = dict(line.split(" | ", 1) for line in proc.stdout.splitlines() if " | " in line)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert set(lines) == {"transform", "fit"}, proc.stdout
    for line in lines.values():
        _check_message(line, bare_python)


def test_features_command_exits_2_with_the_fix(bare_python, tmp_path):
    (tmp_path / "net.prototxt").write_text(NET)
    code = f"""
        import sys
        sys.path.insert(0, {str(REPO)!r})
        from hovcaffe.cli import main
        main(["features", "-model", "net.prototxt", "-weights", "absent.caffemodel",
              "-features", "ip", "-output", "out"])
    """
    proc = _run(code, bare_python, tmp_path)
    assert proc.returncode == 2, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "Spark executors run" in line]
    assert len(errors) == 1, proc.stderr[-3000:]
    _check_message(errors[0], bare_python)
