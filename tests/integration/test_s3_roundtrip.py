"""The whole object-storage path against a real S3 server on 127.0.0.1 (moto's, over HTTP):
``hovcaffe convert`` writes a dataset to ``s3://`` (pyarrow's own S3 client), ``hovcaffe train``
reads it from there and writes ``-model s3://...`` with snapshots (through s3fs), a shorter run
is resumed with ``-resume`` from its snapshots in the bucket, and its final weights equal those of
an uninterrupted run. Every step is a real ``hovcaffe`` process; the endpoint reaches them as
``AWS_ENDPOINT_URL``.
"""
from __future__ import annotations

import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("moto.server", reason="moto[server] (requirements/test.txt) runs the S3 server on 127.0.0.1")
pytest.importorskip("s3fs", reason="s3fs (requirements/test.txt) is the second S3 client checked")

pytestmark = [pytest.mark.slow, pytest.mark.distributed]

REPO = Path(__file__).resolve().parents[2]
BUCKET = "hovcaffe-roundtrip"
NET = """
name: "tiny"
layer { name: "data" type: "Data" top: "data" top: "label" include { phase: TRAIN }
  transform_param { scale: 0.00390625 } data_param { source: "replaced-by-train_data" batch_size: 8 } }
layer { name: "ip1" type: "InnerProduct" bottom: "data" top: "ip1"
  inner_product_param { num_output: 12 weight_filler { type: "xavier" } } }
layer { name: "relu1" type: "ReLU" bottom: "ip1" top: "ip1" }
layer { name: "ip2" type: "InnerProduct" bottom: "ip1" top: "ip2"
  inner_product_param { num_output: 3 weight_filler { type: "xavier" } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip2" bottom: "label" top: "loss" }
"""
SOLVER = """net: "tiny.prototxt"
base_lr: 0.05
momentum: 0.9
lr_policy: "fixed"
display: 0
max_iter: 12
snapshot: 4
random_seed: 3
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture(scope="module")
def s3_env():
    """A moto S3 server on loopback with one bucket; the environment that points clients at it."""
    import boto3
    from moto.server import ThreadedMotoServer

    port = _free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                 aws_access_key_id="testing", aws_secret_access_key="testing").create_bucket(Bucket=BUCKET)
    yield env
    server.stop()


def _s3(env):
    import boto3

    return boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"], region_name="us-east-1",
                        aws_access_key_id="testing", aws_secret_access_key="testing")


def _hovcaffe(args: list[str], env: dict, cwd: Path, *, block_s3fs: bool = False) -> str:
    """Run the hovcaffe CLI in a fresh process; `block_s3fs` makes storage use pyarrow's S3 client."""
    prelude = "import sys; sys.modules['s3fs'] = None; " if block_s3fs else ""
    code = f"{prelude}sys.path.insert(0, {str(REPO)!r}); from hovcaffe.cli import main; main({args!r})"
    if not block_s3fs:
        code = "import sys; " + code
    proc = subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True,
                          timeout=600, env={**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", **env})
    assert proc.returncode == 0, f"hovcaffe {' '.join(args)}:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc.stdout


def _weights(blob: bytes) -> dict[str, list[np.ndarray]]:
    from hovcaffe.caffe import caffe_pb2

    net = caffe_pb2.NetParameter.FromString(blob)
    return {layer.name: [np.array(b.data, np.float32) for b in layer.blobs]
            for layer in net.layer if layer.blobs}


def test_convert_train_snapshot_resume_through_s3(s3_env, tmp_path):
    rng = np.random.default_rng(4)
    images = rng.integers(0, 256, (48, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 3, 48).astype(np.uint8)
    idx = tmp_path / "train-images-idx3-ubyte"
    idx.write_bytes(struct.pack(">iiii", 2051, 48, 28, 28) + images.tobytes())
    (tmp_path / "train-labels-idx1-ubyte").write_bytes(struct.pack(">ii", 2049, 48) + labels.tobytes())
    (tmp_path / "tiny.prototxt").write_text(NET)
    (tmp_path / "solver.prototxt").write_text(SOLVER)
    data = f"s3://{BUCKET}/data/mnist"

    _hovcaffe(["convert", "mnist", str(idx), data, "--no-spark"], s3_env, tmp_path, block_s3fs=True)
    s3 = _s3(s3_env)
    keys = {o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix="data/mnist/")["Contents"]}
    assert "data/mnist/_SUCCESS" in keys and any(k.endswith(".parquet") for k in keys)

    def train(run: str, *extra: str) -> None:
        _hovcaffe(["train", "-solver", "solver.prototxt", "--train-data", data, "--no-tensorboard",
                   "-num-proc", "1", "-backend", "local",
                   "-model", f"s3://{BUCKET}/{run}/final.caffemodel", *extra],
                  s3_env, tmp_path)

    train("whole")
    train("resumed", "-iterations", "8")
    def keys(run: str) -> list[str]:
        return [o["Key"] for o in s3.list_objects_v2(Bucket=BUCKET, Prefix=f"{run}/")["Contents"]]

    ends = ("_iter_4.caffemodel", "_iter_8.caffemodel", "_iter_8.solverstate")
    assert all(any(k.endswith(end) for k in keys("resumed")) for end in ends), keys("resumed")
    assert not any(k.endswith("_iter_12.caffemodel") for k in keys("resumed"))
    train("resumed", "-resume")

    def final(run: str) -> dict[str, list[np.ndarray]]:
        return _weights(s3.get_object(Bucket=BUCKET, Key=f"{run}/final.caffemodel")["Body"].read())

    whole, resumed = final("whole"), final("resumed")
    early_key = next(k for k in keys("whole") if k.endswith("_iter_4.caffemodel"))
    first = _weights(s3.get_object(Bucket=BUCKET, Key=early_key)["Body"].read())
    assert whole.keys() == resumed.keys() == {"ip1", "ip2"}
    for name in whole:
        for a, b, early in zip(whole[name], resumed[name], first[name]):
            np.testing.assert_allclose(b, a, rtol=0, atol=1e-6)
            assert np.abs(a - early).max() > 1e-4  # iterations 5-12 changed the weights
