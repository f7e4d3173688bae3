"""`pip install .` into a fresh virtualenv: hovcaffe and its runtime dependencies, no Horovod, no
compiler; the one-process commands work there, and so does a cron job whose train step is
`hovcaffe train -num-proc 2` (backend auto, which must pick the torch backend: Horovod is absent).

pip uses this machine's configuration (index, find-links, cache); torch goes in first as
`torch==2.13.0` the way scripts/install.sh installs it (with $HOVCAFFE_TORCH_INDEX when set), so
the resolver keeps that build instead of fetching another.

Why the two-rank run must equal the one-process run: rank r reads records r, r+2, ... so the two
rank batches of 32 of an iteration are together the one process's batch of 64 (130 records, an
even number, so the ranks wrap around together too); the loss is a batch mean, so the average of
the two ranks' gradients is the 64-batch gradient; both start from the same fillers (random_seed).
Only float32 summation order differs: atol 1e-6 on the weights (as test_torch_backend.py).
"""
from __future__ import annotations

import io
import json
import os
import re
import shutil
import struct
import subprocess
import sys

import numpy as np
import pyarrow.parquet as pq
import pytest

from conftest import REPO, ZOO

pytestmark = pytest.mark.slow


#: what must not leak from the test's environment into the fresh venv's commands: another venv,
#: another Python for Spark's workers, another Spark
NOT_INHERITED = ("VIRTUAL_ENV", "PYTHONPATH", "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON",
                 "HOVCAFFE_SPARK_MASTER", "HOVCAFFE_SPARK_REMOTE")


def run(cmd: list[str], cwd=None, timeout: int = 900, write_bytecode: bool = True
        ) -> subprocess.CompletedProcess:
    """Run `cmd` in a clean environment. `write_bytecode`: drop PYTHONDONTWRITEBYTECODE (set on
    this machine). The venv is installed without byte-code (--no-compile), so without it every
    process would compile torch's modules again on import: the two-rank run took 25.1 s so,
    18.6 s when the first command's compilation is kept for the later ones (the venv is thrown
    away with the test)."""
    env = {k: v for k, v in os.environ.items()
           if k not in NOT_INHERITED and not (write_bytecode and k == "PYTHONDONTWRITEBYTECODE")}
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
    run([sys.executable, "-m", "venv", str(venv)], write_bytecode=False)
    # --no-compile: pip would byte-compile every module of torch, pyspark and the rest (most of
    # the install's time); Python compiles what it imports on first use. The files are the same.
    pip = [str(venv / "bin" / "python"), "-m", "pip", "--disable-pip-version-check", "install", "-q",
           "--no-compile"]
    index = os.environ.get("HOVCAFFE_TORCH_INDEX")
    run(pip + (["--index-url", index] if index else []) + ["torch==2.13.0"], write_bytecode=False)
    run(pip + [str(REPO)], write_bytecode=False)
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


def caffemodel_blobs(path) -> dict[str, list[np.ndarray]]:
    from hovcaffe.caffe.io import blob_to_array, read_caffemodel

    return {l.name: [blob_to_array(b) for b in l.blobs] for l in read_caffemodel(str(path)).layer
            if len(l.blobs)}


def lenet_workdir(folder, batch: int):
    """A working folder for the zoo LeNet solver (it names examples/mnist/lenet_train_test.prototxt
    relative to the current directory), with the train batch set to `batch`."""
    (folder / "examples" / "mnist").mkdir(parents=True)
    net = (ZOO / "bvlc" / "mnist" / "lenet_train_test.prototxt").read_text()
    assert net.count("batch_size: 64") == 1  # the train layer's; the test layer has 100
    (folder / "examples" / "mnist" / "lenet_train_test.prototxt").write_text(
        net.replace("batch_size: 64", f"batch_size: {batch}"))
    return folder


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

    solver = str(ZOO / "bvlc" / "mnist" / "lenet_solver.prototxt")
    data = ["--train-data", str(tmp_path / "ds"), "--test-data", str(tmp_path / "ds")]
    settings = "test_interval: 2 test_iter: 1 display: 2 random_seed: 7"
    one = lenet_workdir(tmp_path / "one", batch=64)
    trained = run([hovcaffe, "train", "-solver", solver, *data, "-iterations", "4",
                   "--solver-set", settings + " snapshot: 0", "--no-progress"], cwd=one).stdout
    assert "trained to iteration 4" in trained
    one_model = one / "examples" / "mnist" / "lenet_iter_4.caffemodel"
    assert one_model.stat().st_size > 1_000_000

    # The same training on 2 ranks x batch 32, started by a cron job (which runs
    # `hovcaffe train -num-proc 2` with no -backend: auto) in the same venv.
    two = lenet_workdir(tmp_path / "two", batch=32)
    spec = tmp_path / "job.yaml"
    spec.write_text(json.dumps({  # JSON is YAML
        "name": "two_ranks", "state_dir": str(tmp_path / "state"), "workdir": str(two),
        "steps": [{"name": "train", "type": "train", "solver": solver, "iterations": 4,
                   "num_proc": 2, "args": [*data, "--solver-set", settings, "--no-progress"],
                   "outputs": {"model": str(tmp_path / "published" / "lenet.caffemodel")}}]}))
    result = run([hovcaffe, "job", "run", str(spec), "--date", "2026-12-04"])
    job = result.stdout + result.stderr  # the job's log lines and the step's output
    command = next(line for line in job.splitlines() if "step train (attempt 1):" in line)
    assert command.split("step train (attempt 1): ")[1].startswith(str(fresh_venv / "bin" / "python"))
    assert " -num-proc 2" in command and "-backend" not in command
    # the torch backend's launch line (Horovod's would come from horovod_launcher)
    assert re.search(r"backends\.barrier\] launching 2 rank\(s\) as a Spark barrier stage.*"
                     r"\(torch\.distributed\)", job), job
    assert "trained to iteration 4 on 2 rank(s)" in job and "succeeded (exit 0)" in job
    want, got = caffemodel_blobs(one_model), caffemodel_blobs(tmp_path / "published" / "lenet.caffemodel")
    assert list(got) == ["conv1", "conv2", "ip1", "ip2"] and list(want) == list(got)
    for layer, blobs in want.items():
        for index, blob in enumerate(blobs):
            np.testing.assert_allclose(got[layer][index], blob, atol=1e-6, rtol=0,
                                       err_msg=f"{layer}/{index}")
