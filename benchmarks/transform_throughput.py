"""Rows/s of ``CaffeModel.transform`` vs the net's local batched forward on the same rows.

    python benchmarks/transform_throughput.py [--net lenet|caffenet] [--rows N] [--batch B]
                                              [--master local[2]] [--partitions 2] [--repeat 3]

Both sides do the whole job on the same raw C×H×W uint8 rows (LeNet 1×28×28, CaffeNet
3×227×227): decode the bytes, apply the net's TEST ``transform_param``, forward in batches of
``--batch`` in TEST phase, softmax, argmax.

* local: one process, torch with 1 thread, rows decoded a batch at a time from one joined buffer
  (the cheapest decode, as transform reads an Arrow batch's data buffer at once);
* transform: ``CaffeModel.transform`` (``numThreads`` 1 per task) on a cached DataFrame of
  ``--partitions`` partitions on ``--master``, read from a Parquet file (no rows shipped inside
  tasks), forced with Spark's ``noop`` writer (every output row is produced; nothing is written).

What makes the ratio fair: the same rows, batch size and preprocessing on both sides; one torch
thread per stream of work on both sides (local[2] with 2 partitions runs 2 tasks of 1 thread on 2
cores, so 2.0 is the ideal ratio and 1.0 the ideal per-partition share); an untimed warm-up on
both sides (the local net's first batches; Spark's first pass starts the Python workers, imports
torch and builds the net, which later passes reuse); and the timed passes interleaved, local then
Spark, best of ``--repeat`` each, so that load from other processes that comes and goes hits
both sides alike.

Each Spark pass also pays a fixed cost that does not depend on the rows: planning the query,
scheduling the job, handing the tasks to the Python workers (printed, measured as a pass over a
2-row DataFrame). The default row counts make a LeNet pass a few seconds long so the ratio
measures throughput rather than that latency; ``--rows 8192`` gives the earlier, shorter pass.

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
               REPO / "tests/zoo/bvlc/mnist/lenet_train_test.prototxt"], (1, 28, 28), 32768, 64),
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


def local_pass(model, raw: list[bytes], shape: tuple[int, ...], batch: int) -> float:
    """Seconds for the same work as transform in this process: decode, transform, forward,
    softmax, argmax (torch threads set by the caller)."""
    from hovcaffe.ml.inference import Predictor, softmax

    spec = model.inferencePlan()
    predictor = _PREDICTOR.get(id(model)) or _PREDICTOR.setdefault(
        id(model), Predictor(spec, model.modelFiles.weights))
    start = time.perf_counter()
    for i in range(0, len(raw), batch):
        chunk = raw[i:i + batch]
        images = np.frombuffer(b"".join(chunk), np.uint8).reshape((len(chunk), *shape))
        scores = predictor.forward(images)[spec.score_blob]
        softmax(scores).argmax(axis=1)
    return time.perf_counter() - start


_PREDICTOR: dict[int, object] = {}  # the local net, built once like the executors' cached one


def spark_pass(out) -> float:
    start = time.perf_counter()
    out.write.format("noop").mode("overwrite").save()
    return time.perf_counter() - start


def cached_frame(spark, raw: list[bytes], partitions: int, folder: str):
    """The rows as a cached DataFrame read from Parquet (tasks carry no rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = os.path.join(folder, f"rows-{len(raw)}.parquet")  # one file per frame: Spark's cache
    # matches a new read of a path it has cached, whatever the file holds now
    pq.write_table(pa.table({"id": pa.array(range(len(raw)), pa.int64()),
                             "image": pa.array(raw, pa.binary())}), path)
    df = spark.read.parquet(path).repartition(partitions).cache()
    df.count()
    return df


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--net", choices=sorted(NETS), default="lenet")
    parser.add_argument("--rows", type=int, default=None, help="default: 32768 LeNet, 192 CaffeNet")
    parser.add_argument("--batch", type=int, default=None, help="default: 64 LeNet, 8 CaffeNet")
    parser.add_argument("--partitions", type=int, default=2)
    parser.add_argument("--master", default="local[2]")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")

    import torch

    from hovcaffe.ml import CaffeModel
    from hovcaffe.utils.spark import get_spark

    _, shape, default_rows, default_batch = NETS[args.net]
    rows, batch = args.rows or default_rows, args.batch or default_batch
    net_path = _net_path(args.net)
    rng = np.random.default_rng(0)
    raw = [rng.integers(0, 256, int(np.prod(shape)), dtype=np.uint8).tobytes() for _ in range(rows)]
    torch.set_num_threads(1)
    with tempfile.TemporaryDirectory() as folder:
        model = CaffeModel.from_files(str(net_path), make_weights(net_path, shape, folder),
                                      featuresCol="image", sampleShape=list(shape),
                                      inferenceBatchSize=batch, numThreads=1)
        spark = get_spark(args.master, app_name="transform_throughput")
        df = cached_frame(spark, raw, args.partitions, folder)
        out = model.transform(df)
        local_pass(model, raw[:4 * batch], shape, batch)  # warm-up: first batches, allocator
        spark_pass(out)  # warm-up: Python workers, imports, broadcast, net build
        local_s, spark_s = [], []
        for _ in range(args.repeat):  # interleaved: changing load hits both sides alike
            local_s.append(local_pass(model, raw, shape, batch))
            spark_s.append(spark_pass(out))
        tiny = model.transform(cached_frame(spark, raw[:2], args.partitions, folder))
        spark_pass(tiny)
        fixed = min(spark_pass(tiny) for _ in range(3))
        spark.stop()
    local1, spark_rate = rows / min(local_s), rows / min(spark_s)
    print(f"net: {net_path.relative_to(REPO)}, {rows} rows of {'x'.join(map(str, shape))}, "
          f"batch {batch}")
    print(f"local batched forward, 1 thread: {local1:8.1f} rows/s  "
          f"(passes {', '.join(f'{t:.2f}' for t in local_s)} s)")
    print(f"CaffeModel.transform, {args.master}, {args.partitions} partitions x 1 thread: "
          f"{spark_rate:8.1f} rows/s  (passes {', '.join(f'{t:.2f}' for t in spark_s)} s; "
          f"fixed cost of a 2-row pass {fixed:.2f} s)")
    print(f"ratio transform / local: {spark_rate / local1:.2f} "
          f"(per partition: {spark_rate / local1 / args.partitions:.2f})")

if __name__ == "__main__":
    main()
