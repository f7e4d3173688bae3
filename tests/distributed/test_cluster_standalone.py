"""A real Spark standalone cluster on 127.0.0.1: one master and two single-core workers started
from the installed pyspark, and LeNet trained across them with spark-submit + launch.py -num-proc 2
(one rank in each worker's executor). The cluster is shut down whatever happens."""
from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from test_dist_support import LAUNCH, cli_env, local_accuracy, make_workspace

pytestmark = [pytest.mark.spark, pytest.mark.distributed, pytest.mark.slow]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def _alive_workers(ui_port: int) -> int:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{ui_port}/json/", timeout=2) as resp:
            return int(json.load(resp).get("aliveworkers", 0))
    except (OSError, ValueError):
        return 0


@pytest.fixture
def cluster(tmp_path):
    """(master URL, log folder) of a running master + 2 workers (1 core, 2 GB each)."""
    home = _spark_home()
    spark_class = str(home / "bin" / "spark-class")
    env = cli_env(SPARK_HOME=str(home), SPARK_LOG_DIR=str(tmp_path / "logs"),
                  SPARK_WORKER_DIR=str(tmp_path / "work"))
    port, ui = _free_port(), _free_port()
    logs = tmp_path / "logs"
    logs.mkdir()
    procs = []

    def start(name: str, *args: str) -> None:
        out = open(logs / f"{name}.log", "w")
        procs.append((subprocess.Popen([spark_class, *args], stdout=out, stderr=subprocess.STDOUT,
                                       env=env, start_new_session=True), out))

    try:
        start("master", "org.apache.spark.deploy.master.Master", "--host", "127.0.0.1",
              "--port", str(port), "--webui-port", str(ui))
        for i in range(2):
            start(f"worker{i}", "org.apache.spark.deploy.worker.Worker", "--host", "127.0.0.1",
                  "--cores", "1", "--memory", "2g", "--webui-port", str(_free_port()),
                  "--work-dir", str(tmp_path / f"work{i}"), f"spark://127.0.0.1:{port}")
        deadline = time.monotonic() + 120
        while _alive_workers(ui) < 2:
            if time.monotonic() > deadline or any(p.poll() is not None for p, _ in procs):
                pytest.fail("the standalone cluster did not come up: " +
                            "".join((logs / f).read_text()[-1500:] for f in os.listdir(logs)))
            time.sleep(0.5)
        yield f"spark://127.0.0.1:{port}", tmp_path
    finally:
        for proc, out in reversed(procs):
            proc.terminate()
        for proc, out in reversed(procs):
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            out.close()


@pytest.mark.parametrize("connection", ["gloo", "ethernet"])
def test_lenet_trains_across_two_standalone_workers(cluster, tmp_path_factory, connection):
    """`ethernet` is CaffeOnSpark's default spelling: Horovod's own choice, MPI here."""
    master, folder = cluster
    ws = make_workspace(tmp_path_factory.mktemp("cluster-lenet"), max_iter=30, snapshot=30,
                        test_interval=30)
    model = ws.root / "out" / "lenet.caffemodel"
    cmd = [str(_spark_home() / "bin" / "spark-submit"), "--master", master, "--conf", "spark.cores.max=2", "--conf", "spark.executor.cores=1",
            "--conf", "spark.executor.memory=1g", "--conf", "spark.driver.host=127.0.0.1",
            "--conf", "spark.ui.enabled=false",
            str(LAUNCH), "-conf", str(ws.solver), "-train", "-num-proc", "2", "-model", str(model),
            "-connection", connection]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600,
                          env=cli_env(SPARK_HOME=str(_spark_home()), PYSPARK_DRIVER_PYTHON=sys.executable))
    # spark-submit merges the Python driver's stderr into its stdout
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "trained to iteration 30 on 2 rank(s)" in out
    accuracy = float(re.search(r"test: test/accuracy = ([0-9.]+)", out).group(1))
    # the printed accuracy is that of the final model over the whole test set, run locally
    assert accuracy == pytest.approx(local_accuracy(ws, str(model)), abs=1e-4)
    assert accuracy > 0.2  # and it learned: chance is 0.1 with 10 classes
    # snapshots go next to -model (CaffeOnSpark), the final model to -model itself
    assert (ws.root / "out" / "lenet_iter_30.caffemodel").is_file()
    assert (ws.root / "out" / "lenet_iter_30.solverstate").is_file()
    assert model.is_file() and model.read_bytes() == (ws.root / "out" / "lenet_iter_30.caffemodel").read_bytes()
    places = re.findall(r"rank (\d) ran in [^:]+:(\S+)", out)
    assert sorted(r for r, _ in places) == ["0", "1"], out[-3000:]
    dirs = {Path(p).resolve() for _, p in places}
    if connection == "gloo":
        # one rank in each worker's executor: their working folders are under the two workers' dirs
        assert {d.parents[1].name for d in dirs} == {"work0", "work1"}, dirs
    else:
        # mpirun places ranks by host: on this one host, the first task's orted starts both
        assert {d.parents[1].name for d in dirs} <= {"work0", "work1"}, dirs
