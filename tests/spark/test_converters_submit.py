"""Each ``converters/*_to_parquet.py`` under ``spark-submit --master local[1]``, as the README tells a
user to run them; every converted row compared with the source values the fixture wrote.

A spark-submit costs a JVM start (5-10 s on a loaded 2-core machine), and the five scripts share one
entry point (``hovcaffe.commands.convert.main_for(kind)``: the script differs only in the kind). So:

* ``mnist_to_parquet.py`` is submitted by itself, exactly as a user would;
* the other four run in ONE spark-submit whose application is a ten-line driver that executes each
  script file as ``__main__`` with its own ``sys.argv`` (``runpy.run_path``) - each script's own
  code under spark-submit's gateway, in one JVM.

Spark's event log shows that the conversions ran as Spark tasks on spark-submit's master (one task
per output file), not on a session of the converter's own making.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit"))
from data_fixtures import (lmdb_of_images, read_rows, write_cifar, write_hdf5_list,  # noqa: E402
                           write_image_list, write_mnist)

pytestmark = [pytest.mark.spark]

REPO = Path(__file__).resolve().parents[2]
CONVERTERS = REPO / "converters"


def _spark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).parent


def submit(app: Path, *args: str, events: Path) -> str:
    """spark-submit --master local[1] APP ARGS; returns the output (asserting exit 0)."""
    events.mkdir()
    cmd = [str(_spark_home() / "bin" / "spark-submit"), "--master", "local[1]",
           "--conf", "spark.ui.enabled=false", "--conf", "spark.driver.host=127.0.0.1",
           "--conf", "spark.log.level=WARN", "--conf", "spark.eventLog.enabled=true",
           "--conf", "spark.eventLog.compress=false", "--conf", f"spark.eventLog.dir={events.as_uri()}",
           str(app), *args]
    env = dict(os.environ, SPARK_HOME=str(_spark_home()), SPARK_LOCAL_IP="127.0.0.1",
               PYSPARK_PYTHON=sys.executable, PYSPARK_DRIVER_PYTHON=sys.executable,
               PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    env.pop("HOVCAFFE_DEBUG", None)
    env.pop("HOVCAFFE_SPARK_MASTER", None)
    env.pop("HOVCAFFE_SPARK_REMOTE", None)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, out[-5000:]
    assert "Traceback" not in out, out[-5000:]
    return out


def spark_run(events: Path) -> tuple[set[str], int]:
    """(masters of the SparkContexts, finished tasks) from the event log(s) of one submit."""
    masters, tasks = set(), 0
    for log in events.rglob("*"):
        if not log.is_file() or log.name.startswith("."):   # Hadoop's .crc checksum files
            continue
        for line in log.read_text().splitlines():
            event = json.loads(line)
            if event["Event"] == "SparkListenerEnvironmentUpdate":
                masters.add(event["Spark Properties"]["spark.master"])
            elif event["Event"] == "SparkListenerTaskEnd" and event["Task End Reason"]["Reason"] == "Success":
                tasks += 1
    return masters, tasks


def test_mnist_to_parquet_as_a_user_submits_it(tmp_path):
    src, images, labels = write_mnist(tmp_path / "src", n=11, rows=5, cols=4)
    out = submit(CONVERTERS / "mnist_to_parquet.py", str(src), str(tmp_path / "ds"),
                 "--records-per-file", "4", events=tmp_path / "events")
    assert f"11 rows from mnist {src} in 3 file(s)" in out
    rows = read_rows(tmp_path / "ds")
    np.testing.assert_array_equal(np.stack(rows["data"]), images[:, None])
    assert rows["label"] == labels.tolist()
    assert spark_run(tmp_path / "events") == ({"local[1]"}, 3)


DRIVER = """
import runpy, sys
for script, *args in {runs!r}:
    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:  # click's standalone mode ends each command with sys.exit
        if exc.code not in (0, None):
            print(f"{{script}} exited {{exc.code}}", flush=True)
            raise
"""


def test_the_other_converters_under_one_spark_submit(tmp_path):
    ds = {k: str(tmp_path / f"ds-{k}") for k in ("lmdb", "imagelist", "hdf5", "cifar")}
    images = np.random.default_rng(3).integers(0, 256, (7, 3, 6, 5), dtype=np.uint8)
    lmdb_path, lmdb_pixels = lmdb_of_images(tmp_path / "db", images, [4, 0, 1, 3, 2, 2, 0])
    list_path, list_images, list_labels, names = write_image_list(tmp_path / "list", n=5, shape=(3, 7, 6))
    h5_list, arrays = write_hdf5_list(tmp_path / "h5", rows=(3, 2))
    cifar_paths, cifar_images, cifar_labels = write_cifar(tmp_path / "cifar", counts=(4, 3))
    runs = [
        (str(CONVERTERS / "lmdb_to_parquet.py"), str(lmdb_path), ds["lmdb"], "--records-per-file", "3"),
        (str(CONVERTERS / "imagelist_to_parquet.py"), str(list_path), ds["imagelist"],
         "--root-folder", f"{list_path.parent}/", "--codec", "raw", "--records-per-file", "2"),
        (str(CONVERTERS / "hdf5_to_parquet.py"), str(h5_list), ds["hdf5"], "--records-per-file", "2"),
        (str(CONVERTERS / "cifar_to_parquet.py"), ",".join(map(str, cifar_paths)), ds["cifar"],
         "--records-per-file", "4"),
    ]
    driver = tmp_path / "run_converters.py"
    driver.write_text(textwrap.dedent(DRIVER.format(runs=runs)))
    out = submit(driver, events=tmp_path / "events")

    for kind, count in (("lmdb", 7), ("imagelist", 5), ("hdf5", 5), ("cifar", 7)):
        assert f"{count} rows from {kind}" in out, out[-3000:]
    rows = read_rows(Path(ds["lmdb"]))
    np.testing.assert_array_equal(np.stack(rows["data"]), np.stack(lmdb_pixels))
    assert rows["label"] == [4, 0, 1, 3, 2, 2, 0] and rows["id"] == [f"{i:08d}" for i in range(7)]
    rows = read_rows(Path(ds["imagelist"]))
    np.testing.assert_array_equal(np.stack(rows["data"]), list_images)   # BGR, as OpenCV reads it
    assert rows["label"] == list_labels.tolist() and rows["id"] == names
    rows = read_rows(Path(ds["hdf5"]))
    for name, want in arrays.items():
        np.testing.assert_array_equal(np.stack(rows[name]), want)
    rows = read_rows(Path(ds["cifar"]))
    np.testing.assert_array_equal(np.stack(rows["data"]), cifar_images)
    assert rows["label"] == cifar_labels.tolist()

    files = sum(len(list(Path(d).glob("part-*.parquet"))) for d in ds.values())
    assert files == 3 + 3 + 3 + 2   # ceil(7/3), ceil(5/2), hdf5: 2 rows a file, cifar: ceil(7/4)
    assert spark_run(tmp_path / "events") == ({"local[1]"}, files)
