"""`pip install .` into a fresh virtualenv: hovcaffe and its runtime dependencies, no Horovod, no
compiler, and the one-process commands work there.

pip uses this machine's configuration (index, find-links, cache); torch goes in first as
`torch==2.13.0` the way scripts/install.sh installs it (with $HOVCAFFE_TORCH_INDEX when set), so
the resolver keeps that build instead of fetching another.
"""
from __future__ import annotations

import io
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO, ZOO

pytestmark = pytest.mark.slow


def run(cmd: list[str], cwd=None, timeout: int = 900) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHONPATH")}
    env["SPARK_LOCAL_IP"] = "127.0.0.1"
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{' '.join(map(str, cmd))}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result


def write_mnist(folder, n: int):
    """MNIST idx files (magic 2051 / 2049, big-endian sizes) of random digits."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, n).astype(np.uint8)
    folder.mkdir(parents=True)
    (folder / "train-images-idx3-ubyte").write_bytes(struct.pack(">iiii", 2051, n, 28, 28) + images.tobytes())
    (folder / "train-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, n) + labels.tobytes())
    return images, labels


@pytest.fixture(scope="module")
def fresh_venv(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipinstall")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", str(venv)])
    # --no-compile: pip would byte-compile every module of torch, pyspark and the rest (most of
    # the install's time); Python compiles what it imports on first use. The files are the same.
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "-q",
           "--no-compile"]
    index = os.environ.get("HOVCAFFE_TORCH_INDEX")
    run(pip + (["--index-url", index] if index else []) + ["torch==2.13.0"])
    run(pip + [str(REPO)])
    return venv


def test_pip_install_has_hovcaffe_and_no_horovod(fresh_venv):
    listing = run([str(fresh_venv / "bin" / "python"), "-m", "pip", "list", "--format=freeze"]).stdout
    names = {line.split("==")[0].lower() for line in listing.splitlines()}
    assert {"hovcaffe", "torch", "numpy", "pyarrow", "pyspark", "opencv-python-headless", "onnx"} <= names
    assert "horovod" not in names and "petastorm" not in names
    # Installed as a regular package (not a link back to the checkout).
    where = run([str(fresh_venv / "bin" / "python"), "-c", "import hovcaffe; print(hovcaffe.__file__)"],
                cwd=fresh_venv).stdout.strip()
    assert where.startswith(str(fresh_venv)), where


def test_convert_inspect_and_train_in_the_fresh_venv(fresh_venv, tmp_path):
    hovcaffe = str(fresh_venv / "bin" / "hovcaffe")
    images, labels = write_mnist(tmp_path / "src", n=130)
    out = run([hovcaffe, "convert", "mnist", str(tmp_path / "src" / "train-images-idx3-ubyte"),
               str(tmp_path / "ds"), "--no-spark"]).stdout
    assert "130 rows" in out
    table = pq.read_table(tmp_path / "ds")
    assert table.column("label").to_pylist() == labels.tolist()
    first = np.load(io.BytesIO(table.column("data")[0].as_py()), allow_pickle=False)
    np.testing.assert_array_equal(first, images[0][None])

    info = run([hovcaffe, "inspect", str(ZOO / "bvlc" / "mnist" / "lenet.prototxt")]).stdout
    # LeNet's parameters by hand: conv1 20*25+20, conv2 50*20*25+50, ip1 500*800+500, ip2 10*500+10.
    assert f"parameters: {520 + 25_050 + 400_500 + 5_010:,}" in info

    (tmp_path / "examples" / "mnist").mkdir(parents=True)
    shutil.copy(ZOO / "bvlc" / "mnist" / "lenet_train_test.prototxt", tmp_path / "examples" / "mnist")
    trained = run([hovcaffe, "train", "-solver", str(ZOO / "bvlc" / "mnist" / "lenet_solver.prototxt"),
                   "--train-data", str(tmp_path / "ds"), "--test-data", str(tmp_path / "ds"),
                   "-iterations", "4", "--solver-set", "test_interval: 2 test_iter: 1 snapshot: 0 display: 2",
                   "--no-progress"], cwd=tmp_path).stdout
    assert "trained to iteration 4" in trained
    assert (tmp_path / "examples" / "mnist" / "lenet_iter_4.caffemodel").stat().st_size > 1_000_000
