"""One rule for snapshot file names (`SnapshotFiles`): building, taking apart, finding."""
from __future__ import annotations

import pytest

from hovcaffe.training.checkpoints import SnapshotFiles, find_snapshots


@pytest.mark.parametrize("name,stem,prefix,iteration,hdf5", [
    ("snaps/lenet_iter_100.solverstate", "snaps/lenet_iter_100", "snaps/lenet", 100, False),
    ("snaps/lenet_iter_100.caffemodel", "snaps/lenet_iter_100", "snaps/lenet", 100, False),
    ("x_iter_5.caffemodel.h5", "x_iter_5", "x", 5, True),
    ("x_iter_5.solverstate.h5", "x_iter_5", "x", 5, True),
    ("runs/a_iter_b_iter_7.solverstate", "runs/a_iter_b_iter_7", "runs/a_iter_b", 7, False),
    ("my_iter_3_iter_40.caffemodel", "my_iter_3_iter_40", "my_iter_3", 40, False),
    ("s3://bucket/run_iter_2/net_iter_12.caffemodel.h5", "s3://bucket/run_iter_2/net_iter_12",
     "s3://bucket/run_iter_2/net", 12, True),
    ("snap_iter_20.hovcaffe.json", "snap_iter_20", "snap", 20, False),
    ("final.solverstate", "final", None, None, False),          # Caffe resumes any name
    ("final.caffemodel.h5", "final", None, None, True),
])
def test_names_are_taken_apart_by_one_rule(name, stem, prefix, iteration, hdf5):
    snap = SnapshotFiles.of(name)
    assert (snap.stem, snap.prefix, snap.iteration, snap.hdf5) == (stem, prefix, iteration, hdf5)
    ext = ".h5" if hdf5 else ""
    assert snap.paths() == {"model": f"{stem}.caffemodel{ext}", "state": f"{stem}.solverstate{ext}",
                            "sidecar": f"{stem}.hovcaffe.json"}
    if prefix is not None:  # and built back from prefix + iteration
        assert SnapshotFiles.at(prefix, iteration, hdf5) == snap


@pytest.mark.parametrize("name", ["lenet_iter_100.prototxt", "solver.prototxt", "x.h5",
                                  "x_iter_5.caffemodel.tmp", ".caffemodel"])
def test_other_files_are_not_snapshots(name):
    assert SnapshotFiles.of(name) is None


def test_at_writes_caffes_names():
    assert SnapshotFiles.at("out/lenet", 400).paths() == {
        "model": "out/lenet_iter_400.caffemodel", "state": "out/lenet_iter_400.solverstate",
        "sidecar": "out/lenet_iter_400.hovcaffe.json"}
    assert SnapshotFiles.at("out/lenet", 400, hdf5=True).model == "out/lenet_iter_400.caffemodel.h5"


def test_complete_snapshots_of_one_prefix_newest_first():
    names = ["net_iter_10.caffemodel", "net_iter_10.solverstate", "net_iter_10.hovcaffe.json",
             "net_iter_30.caffemodel.h5", "net_iter_30.solverstate.h5",
             "net_iter_40.solverstate",                                # its caffemodel is missing
             ".tmp-net_iter_50.solverstate.abc", "net_iter_50.caffemodel",  # interrupted write
             "other_iter_60.caffemodel", "other_iter_60.solverstate",  # another prefix
             "my_net_iter_70.caffemodel", "my_net_iter_70.solverstate",  # prefix ends like ours
             "net_iter_20.solverstate.h5", "net_iter_20.caffemodel"]   # formats do not pair up
    found = find_snapshots(names, "net")
    assert [(it, snap.state, snap.model) for it, snap in found] == [
        (30, "net_iter_30.solverstate.h5", "net_iter_30.caffemodel.h5"),
        (10, "net_iter_10.solverstate", "net_iter_10.caffemodel")]
    assert [it for it, _ in find_snapshots(names, "my_net")] == [70]
