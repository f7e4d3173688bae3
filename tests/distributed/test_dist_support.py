"""Shared pieces of the distributed tests (no tests here): a small LeNet workspace with Parquet
digits, and helpers to run the real command lines."""
from __future__ import annotations

import dataclasses
import os
import re
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LENET = REPO / "examples" / "lenet"
LAUNCH = REPO / "hovcaffe" / "launch.py"


@dataclasses.dataclass
class Workspace:
    root: Path
    solver: Path
    net: Path
    train: Path
    test: Path
    test_count: int

    def solver_config(self, **overrides):
        from hovcaffe.caffe.io import read_solver
        from hovcaffe.training.loop import TrainConfig

        return TrainConfig(solver=read_solver(str(self.solver)), solver_path=str(self.solver), **overrides)


def make_workspace(root: Path, *, train: int = 640, test: int = 200, batch: int = 16,
                   test_batch: int = 50, max_iter: int = 20, snapshot: int = 10,
                   test_interval: int = 10, lr: float = 0.02, test_iter: int | None = None) -> Workspace:
    """Digits as Parquet (converted in-process) and a LeNet solver/net reading them."""
    sys.path.insert(0, str(LENET))
    import digits

    from hovcaffe.data.convert import convert_source, make_source

    root.mkdir(parents=True, exist_ok=True)
    raw = root / "raw"
    digits.write_dataset(str(raw), train, test, seed=3)
    data = {}
    for split, name in (("train", "train"), ("test", "t10k")):
        dest = root / "data" / f"digits_{split}_parquet"
        convert_source(make_source("mnist", str(raw / f"{name}-images-idx3-ubyte")), str(dest))
        data[split] = dest
    net = (LENET / "lenet_train_test.prototxt").read_text()
    net = net.replace("batch_size: 64", f"batch_size: {batch}").replace("batch_size: 100", f"batch_size: {test_batch}")
    (root / "lenet_train_test.prototxt").write_text(net)
    solver = (LENET / "lenet_solver.prototxt").read_text()
    for key, value in (("max_iter", max_iter), ("snapshot", snapshot), ("test_interval", test_interval),
                       ("test_iter", test_iter or test // test_batch), ("display", 5), ("base_lr", lr)):
        solver = re.sub(rf"^{key}: .*$", f"{key}: {value}", solver, flags=re.M)
    solver = solver.replace('snapshot_prefix: "snapshots/lenet"', f'snapshot_prefix: "{root}/snapshots/lenet"')
    (root / "lenet_solver.prototxt").write_text(solver)
    return Workspace(root, root / "lenet_solver.prototxt", root / "lenet_train_test.prototxt",
                     data["train"], data["test"], test)


def cli_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=sys.executable,
               OMP_NUM_THREADS="1", PYTHONPATH=str(REPO))
    env.pop("HOVCAFFE_DEBUG", None)
    env.update(extra)
    return env


def launch_cmd(*args: str) -> list[str]:
    return [sys.executable, str(LAUNCH), *args]


def run_launch(*args: str, timeout: float = 300, cwd: Path | None = None, **env: str):
    return subprocess.run(launch_cmd(*args), capture_output=True, text=True, timeout=timeout,
                          env=cli_env(**env), cwd=str(cwd or REPO))


def local_forward(ws: Workspace, weights: str, blobs: list[str]):
    """Each TEST sample's `blobs` from a plain local forward pass (one process, file order)."""
    import numpy as np
    import torch

    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import read_net
    from hovcaffe.caffe.state import net_state
    from hovcaffe.data.registry import FeedContext
    from hovcaffe.net import CaffeNet
    from hovcaffe.training.feeder import NetFeeder
    from hovcaffe.training.nets import NetSpec
    from hovcaffe.weights import load_caffemodel

    param = read_net(str(ws.net))
    state = net_state(caffe_pb2.TEST)
    spec = NetSpec(param, state, str(ws.net), str(ws.root))
    feeder = NetFeeder.for_spec(spec, FeedContext(phase=caffe_pb2.TEST, base_dir=str(ws.root)),
                                source_override=str(ws.test))
    net = CaffeNet(param, caffe_pb2.TEST, state=state, input_shapes=feeder.input_shapes())
    load_caffemodel(net, weights)
    out = {b: [] for b in blobs}
    seen = 0
    with torch.no_grad():
        while seen < ws.test_count:
            res = net(**feeder.next_batch())
            n = res[blobs[0]].shape[0]
            for b in blobs:
                out[b].append(res[b].reshape(n, -1).numpy())
            seen += n
    return {b: np.concatenate(v)[: ws.test_count] for b, v in out.items()}


def local_accuracy(ws: Workspace, weights: str) -> float:
    """Share of TEST samples whose largest ip2 output is their label: numpy over a local forward
    with `weights`, the number a distributed test with the same weights has to report."""
    import numpy as np

    out = local_forward(ws, weights, ["ip2", "label"])
    return float(np.mean(out["ip2"].argmax(axis=1) == out["label"].reshape(-1)))


def caffemodel_weights(path: str) -> dict[str, list[np.ndarray]]:
    """Every learnable blob of a .caffemodel, by layer name (read with protobuf and numpy)."""
    from hovcaffe.caffe.io import blob_to_array, read_caffemodel

    model = read_caffemodel(path)
    return {l.name: [blob_to_array(b) for b in l.blobs] for l in model.layer if len(l.blobs)}
