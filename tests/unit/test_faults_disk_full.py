"""Disk full while writing a snapshot, on a real 5 MB tmpfs: the run stops with exit 1 and one
line naming the file that could not be written and the last good snapshot; that snapshot stays
intact and resumes; no staging files are left. Needs root (mount); skipped otherwise."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ORACLE
from hovcaffe.caffe.io import read_solverstate

CASE = ORACLE / "train" / "sgd_inv"
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
SOLVER = ('net: "net_train_test.prototxt"\nbase_lr: 0.01\nmomentum: 0.9\nlr_policy: "fixed"\n'
          'max_iter: {max_iter}\nsnapshot: 2\nrandom_seed: 1701\ntype: "SGD"\n'
          'snapshot_prefix: "{prefix}"\n')


@pytest.fixture
def tiny_disk(tmp_path):
    """A 5 MB tmpfs mounted at tmp_path/disk, unmounted afterwards."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=5m", "tmpfs", str(disk)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {mounted.stderr.strip() or mounted.returncode}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def case_copy(root: Path, max_iter: int, prefix: Path) -> Path:
    case = root / "case"
    case.mkdir(parents=True)
    for f in ("net_train_test.prototxt", "train_h5_list.txt", "test_h5_list.txt"):
        shutil.copy(CASE / f, case / f)
    if not (root / "_data").exists():
        shutil.copytree(ORACLE / "train" / "_data", root / "_data")
    (case / "solver.prototxt").write_text(SOLVER.format(max_iter=max_iter, prefix=prefix))
    return case / "solver.prototxt"


def train(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "hovcaffe.cli", "train", "--no-tensorboard", *args],
                          capture_output=True, text=True, env=ENV, timeout=300)


def test_disk_full_during_a_snapshot_names_the_file_and_the_last_good_snapshot(tmp_path, tiny_disk):
    # One snapshot's size, measured on an ordinary disk.
    probe = tmp_path / "probe"
    out = train("-solver", str(case_copy(probe, 2, probe / "snap")))
    assert out.returncode == 0, out.stderr
    snapshot_bytes = sum(p.stat().st_size for p in probe.glob("snap_iter_2*"))
    # Fill the tmpfs so that one snapshot fits and a second does not.
    free = shutil.disk_usage(tiny_disk).free
    filler = tiny_disk / "filler"
    filler.write_bytes(b"\0" * (free - int(1.5 * snapshot_bytes)))
    prefix = tiny_disk / "snap"
    run = tmp_path / "run"
    out = train("-solver", str(case_copy(run, 6, prefix)))
    assert out.returncode == 1, out.stdout + out.stderr
    lines = [l for l in out.stderr.splitlines() if "error" in l.lower()]
    assert len(lines) == 1 and "Traceback" not in out.stderr, out.stderr
    assert "snapshot at iteration 4 not written" in lines[0]
    assert f"cannot write {prefix}_iter_4.caffemodel" in lines[0] or \
        f"cannot write {prefix}_iter_4.hovcaffe.json" in lines[0], lines[0]
    assert "No space left on device" in lines[0]
    assert f"last good snapshot: {prefix}_iter_2.solverstate" in lines[0]
    # nothing half-written is left, the iteration-2 snapshot is whole and resumes
    assert sorted(p.name for p in tiny_disk.iterdir()) == [
        "filler", "snap_iter_2.caffemodel", "snap_iter_2.hovcaffe.json", "snap_iter_2.solverstate",
        "snap_metrics.csv"]
    assert read_solverstate(f"{prefix}_iter_2.solverstate").iter == 2
    filler.unlink()
    out = train("-solver", str(run / "case" / "solver.prototxt"), "-snapshot", f"{prefix}_iter_2.solverstate")
    assert out.returncode == 0, out.stderr
    assert read_solverstate(f"{prefix}_iter_6.solverstate").iter == 6
