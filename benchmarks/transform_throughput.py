"""Rows/s of ``CaffeModel.transform`` vs the net's local batched forward on the same rows.

    python benchmarks/transform_throughput.py [--net lenet|caffenet] [--rows N] [--batch B]
                                              [--master local[2]] [--partitions 2]

Both sides do the whole job on the same raw C×H×W uint8 rows (LeNet 1×28×28, CaffeNet
3×227×227): decode the bytes, apply the net's TEST ``transform_param``, forward in batches of
``--batch`` in TEST phase, softmax, argmax.

* local: one process, torch with 1 thread;
* transform: ``CaffeModel.transform`` on a cached DataFrame of ``--partitions`` partitions on
  ``--master``, forced with Spark's ``noop`` writer (every output row is produced; nothing is
  written). One untimed warm-up pass starts the Python workers and builds the net; the best of
  ``--repeat`` timed passes is reported.

Printed: transform rows/s over the local forward (1 thread), and the same divided by the number of
partitions - the share of a bare per-core loop that each Spark task keeps after moving rows
between the JVM and Python and assembling the DataFrame (1.0 = no overhead at all).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

#: net name -> (prototxt candidates, sample shape C×H×W, default rows, default batch)
NETS = {
    "lenet": ([REPO / "examples/lenet/lenet_train_test.prototxt",
               REPO / "tests/zoo/bvlc/mnist/lenet_train_test.prototxt"], (1, 28, 28), 8192, 64),
    "caffenet": ([REPO / "tests/zoo/bvlc/bvlc_reference_caffenet/deploy.prototxt"], (3, 227, 227),
                 192, 8),
}


def _net_path(name: str) -> Path:
    return next(p for p in NETS[name][0] if p.exists())


def make_weights(net_path: Path, shape: tuple[int, ...], folder: str) -> str:
    """Filler-initialised weights as a .caffemodel (throughput does not depend on values)."""
    import torch

    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import read_net
    from hovcaffe.net import CaffeNet
    from hovcaffe.weights import save_caffemodel

    torch.manual_seed(0)
    net = CaffeNet(read_net(net_path), caffe_pb2.TEST,
                   input_shapes={"data": (1, *shape), "label": (1,)})
    path = os.path.join(folder, "net.caffemodel")
    save_caffemodel(net, path)
    return path


def local_rows_per_s(model, raw: list[bytes], shape: tuple[int, ...], batch: int, threads: int) -> float:
    """The same work as transform, in one process: decode, transform, forward, softmax, argmax."""
    import torch

    from hovcaffe.ml.inference import Predictor, softmax

    torch.set_num_threads(threads)
    spec = model.inferencePlan()
    predictor = Predictor(spec, model.modelFiles.weights)
    start = time.perf_counter()
    for i in range(0, len(raw), batch):
        chunk = raw[i:i + batch]
        images = np.stack([np.frombuffer(r, np.uint8).reshape(shape) for r in chunk])
        scores = predictor.forward(images)[spec.score_blob]
        softmax(scores).argmax(axis=1)
    return len(raw) / (time.perf_counter() - start)


def transform_rows_per_s(model, df, repeat: int) -> float:
    out = model.transform(df)
    out.write.format("noop").mode("overwrite").save()  # warm-up: workers, imports, net build
    n = df.count()
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        out.write.format("noop").mode("overwrite").save()
        best = min(best, time.perf_counter() - start)
    return n / best


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=sorted(NETS), default="lenet")
    parser.add_argument("--rows", type=int, default=None, help="default: 8192 LeNet, 192 CaffeNet")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 LeNet, 8 CaffeNet")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from hovcaffe.ml import CaffeModel
    from hovcaffe.utils.spark import get_spark

    _, shape, default_rows, default_batch = NETS[args.net]
    rows, batch = args.rows or default_rows, args.batch or default_batch
    net_path = _net_path(args.net)
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 256, int(np.prod(shape)), dtype=np.uint8).tobytes() for _ in range(rows)]
    with tempfile.TemporaryDirectory() as folder:
        model = CaffeModel.from_files(str(net_path), make_weights(net_path, shape, folder),
                                      featuresCol="image", sampleShape=list(shape),
                                      inferenceBatchSize=batch)
        local1 = max(local_rows_per_s(model, raw, shape, batch, 1) for _ in range(args.repeat))
        spark = get_spark(args.master, app_name="transform_throughput")
        df = spark.createDataFrame([(i, r) for i, r in enumerate(raw)], ["id", "image"]) \
            .repartition(args.partitions).cache()
        df.count()
        spark_rate = transform_rows_per_s(model, df, args.repeat)
        spark.stop()
    print(f"net: {net_path.relative_to(REPO)}, {rows} rows of {'x'.join(map(str, shape))}, "
          f"batch {batch}")
    print(f"local batched forward, 1 thread: {local1:8.1f} rows/s")
    print(f"CaffeModel.transform, {args.master}, {args.partitions} partitions x 1 thread: "
          f"{spark_rate:8.1f} rows/s")
    print(f"ratio transform / local: {spark_rate / local1:.2f} "
          f"(per partition: {spark_rate / local1 / args.partitions:.2f})")


if __name__ == "__main__":
    main()
