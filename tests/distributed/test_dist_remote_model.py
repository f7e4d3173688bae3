"""`-model` on a remote store: rank 0 stages snapshots locally and copies them to the model's
folder; `-resume` finds the newest complete snapshot there and continues from it.

HDFS and S3 cannot run on this machine. The store here is an FTP server on 127.0.0.1
(pyftpdlib), reached through the same fsspec/pyarrow path as any other remote URL: listing,
temporary names, renames and downloads all cross a real network protocol, between the driver and
the rank processes."""
from __future__ import annotations

import logging
import socket
import threading

import numpy as np
import pytest

from test_dist_support import make_workspace

pytest.importorskip("pyftpdlib", reason="pyftpdlib (test requirement) serves the remote store")


@pytest.fixture(scope="module")
def ftp_root(tmp_path_factory):
    from pyftpdlib.authorizers import DummyAuthorizer
    from pyftpdlib.handlers import FTPHandler
    from pyftpdlib.servers import FTPServer

    root = tmp_path_factory.mktemp("ftp-root")
    authorizer = DummyAuthorizer()
    authorizer.add_anonymous(str(root), perm="elradfmwMT")  # list, read, write, rename, delete

    class Handler(FTPHandler):
        pass

    Handler.authorizer = authorizer
    Handler.passive_ports = None
    Handler.masquerade_address = None
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = FTPServer(("127.0.0.1", port), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"timeout": 0.2}, daemon=True)
    thread.start()
    yield root, f"ftp://127.0.0.1:{port}"
    server.close_all()


@pytest.fixture(scope="module")
def spark():
    from hovcaffe.utils.spark import get_spark

    session = get_spark("local[2]", app_name="hovcaffe-test-remote-model")
    yield session
    session.stop()


def _run(ws, spark, *, max_iter, model, resume=False, prefix=None):
    from hovcaffe.distributed.runner import run_distributed
    from hovcaffe.options import DistributedOptions

    config = ws.solver_config(max_iter=max_iter, **({"snapshot_prefix": prefix} if prefix else {}))
    options = DistributedOptions(num_proc=2, model=model, resume=resume, log_level=logging.WARNING)
    return run_distributed(config, options, tensorboard=False, spark=spark)


def test_snapshots_and_model_go_to_a_remote_folder_and_resume_from_it(ftp_root, spark, tmp_path):
    from hovcaffe.caffe.io import read_caffemodel

    root, url = ftp_root
    ws = make_workspace(tmp_path / "ws", max_iter=20, snapshot=5, test_interval=20)
    model = f"{url}/runs/lenet.caffemodel"

    first = _run(ws, spark, max_iter=10, model=model)
    assert first.iterations == 10
    names = {p.name for p in (root / "runs").iterdir()}
    for it in (5, 10):
        assert {f"lenet_iter_{it}.caffemodel", f"lenet_iter_{it}.solverstate"} <= names, names
    assert (root / "runs" / "lenet.caffemodel").read_bytes() == \
        (root / "runs" / "lenet_iter_10.caffemodel").read_bytes()
    assert not [n for n in names if "tmp" in n], names  # uploads were renamed into place

    resumed = _run(ws, spark, max_iter=20, model=model, resume=True)
    assert resumed.iterations == 20
    assert {"lenet_iter_15.solverstate", "lenet_iter_20.caffemodel"} <= {p.name for p in (root / "runs").iterdir()}

    # the same 20 iterations without a break, written locally
    straight = _run(ws, spark, max_iter=20, model=str(tmp_path / "local" / "lenet.caffemodel"))
    np.testing.assert_allclose(resumed.losses, straight.losses[10:], rtol=1e-6)
    remote = read_caffemodel(str(root / "runs" / "lenet.caffemodel"))
    local = read_caffemodel(str(tmp_path / "local" / "lenet.caffemodel"))
    assert [a.name for a in remote.layer] == [b.name for b in local.layer]
    assert sum(len(a.blobs) for a in remote.layer) == sum(len(b.blobs) for b in local.layer) > 0
    for a, b in zip(remote.layer, local.layer, strict=True):
        for x, y in zip(a.blobs, b.blobs, strict=True):
            np.testing.assert_array_equal(np.asarray(x.data), np.asarray(y.data))
