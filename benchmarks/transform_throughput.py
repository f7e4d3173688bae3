"""Rows/s of ``CaffeModel.transform`` for LeNet vs the net's local batched forward on the same rows.

    python benchmarks/transform_throughput.py [--rows 8192] [--batch 64] [--master local[2]]

Both sides do the whole job on the same raw 1×28×28 uint8 rows: decode the bytes, scale (LeNet's
``transform_param``), forward in batches of ``--batch`` in TEST phase, softmax, argmax.

* local: one process, torch with 1 thread (more intra-op threads do not help a net this small);
* transform: ``CaffeModel.transform`` on a DataFrame of ``--partitions`` partitions on ``--master``,
  forced with Spark's ``noop`` writer (every output row is produced; nothing is written). One
  untimed warm-up pass starts the Python workers and builds the net; the best of ``--repeat``
  timed passes is reported.

Printed: transform rows/s over the local forward (1 thread), and the same divided by the number of
partitions - the share of a bare per-core loop that each Spark task keeps after row serialisation
between the JVM and Python and DataFrame assembly (1.0 = no overhead at all).
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
LENET = [REPO / "examples/lenet/lenet_train_test.prototxt",
         REPO / "tests/zoo/bvlc/mnist/lenet_train_test.prototxt"]


def _net_path() -> Path:
    return next(p for p in LENET if p.exists())


def make_weights(net_path: Path, folder: str) -> str:
    """Filler-initialised LeNet weights as a .caffemodel (throughput does not depend on values)."""
    import torch

    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import read_net
    from hovcaffe.net import CaffeNet
    from hovcaffe.weights import save_caffemodel

    torch.manual_seed(0)
    net = CaffeNet(read_net(net_path), caffe_pb2.TEST,
                   input_shapes={"data": (1, 1, 28, 28), "label": (1,)})
    path = os.path.join(folder, "lenet.caffemodel")
    save_caffemodel(net, path)
    return path


def local_rows_per_s(model, raw: list[bytes], batch: int, threads: int) -> float:
    """The same work as transform, in one process: decode, transform, forward, softmax, argmax."""
    import torch

    from hovcaffe.ml.inference import Predictor, softmax

    torch.set_num_threads(threads)
    spec = model.inferencePlan()
    predictor = Predictor(spec, model.modelFiles.weights)
    start = time.perf_counter()
    for i in range(0, len(raw), batch):
        chunk = raw[i:i + batch]
        images = np.stack([np.frombuffer(r, np.uint8).reshape(1, 28, 28) for r in chunk])
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
    parser.add_argument("--rows", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=2)
    args = parser.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    from hovcaffe.ml import CaffeModel
    from hovcaffe.utils.spark import get_spark

    net_path = _net_path()
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 256, 28 * 28, dtype=np.uint8).tobytes() for _ in range(args.rows)]
    with tempfile.TemporaryDirectory() as folder:
        model = CaffeModel.from_files(str(net_path), make_weights(net_path, folder),
                                      featuresCol="image", sampleShape=[1, 28, 28],
                                      inferenceBatchSize=args.batch)
        local1 = max(local_rows_per_s(model, raw, args.batch, 1) for _ in range(args.repeat))
        spark = get_spark(args.master, app_name="transform_throughput")
        df = spark.createDataFrame([(i, r) for i, r in enumerate(raw)], ["id", "image"]) \
            .repartition(args.partitions).cache()
        df.count()
        spark_rate = transform_rows_per_s(model, df, args.repeat)
        spark.stop()
    print(f"net: {net_path.relative_to(REPO)}, {args.rows} rows of 1x28x28, batch {args.batch}")
    print(f"local batched forward, 1 thread: {local1:8.0f} rows/s")
    print(f"CaffeModel.transform, {args.master}, {args.partitions} partitions x 1 thread: "
          f"{spark_rate:8.0f} rows/s")
    print(f"ratio transform / local: {spark_rate / local1:.2f} "
          f"(per partition: {spark_rate / local1 / args.partitions:.2f})")


if __name__ == "__main__":
    main()
