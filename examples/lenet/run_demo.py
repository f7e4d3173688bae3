"""The README's demo: LeNet on generated digits, 2 Horovod ranks on local Spark, end to end.

    python examples/lenet/run_demo.py [--out demo-output] [--ranks 2] [--iterations 400]

1. draws an MNIST-like dataset (6000 training and 1000 test digits, see digits.py) as idx files;
2. converts both to Parquet datasets with Spark (`hovcaffe convert mnist` does the same);
3. trains lenet_solver.prototxt on N ranks (`hovcaffe train -solver ... -num-proc N` does the
   same), with a progress display, each rank reading its own shard;
4. prints the test accuracy and writes the snapshots, the final model, the metrics CSV and the
   loss/accuracy plot (`hovcaffe plot`) into --out.

Steps whose output already exists are skipped, so a second run only trains again.
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default="demo-output", help="output folder [demo-output]")
    p.add_argument("--ranks", type=int, default=2, help="Horovod ranks [2]")
    p.add_argument("--iterations", type=int, default=None, help="override the solver's max_iter")
    p.add_argument("--connection", default=None,
                   help="auto | gloo | mpi [auto: mpi when installed, else gloo]")
    p.add_argument("--train-size", type=int, default=6000)
    p.add_argument("--test-size", type=int, default=1000)
    return p.parse_args(argv)


def make_datasets(out: str, train: int, test: int, spark) -> dict[str, str]:
    """Draw the digits (once) and convert them to Parquet (once); returns {split: dataset URL}."""
    sys.path.insert(0, HERE)
    import digits

    from hovcaffe.data.convert import convert_source, make_source
    from hovcaffe.data.spark import SparkExecutor

    raw = os.path.join(out, "raw")
    if not os.path.exists(os.path.join(raw, "t10k-labels-idx1-ubyte")):
        print(f"drawing {train} + {test} digits into {raw} ...", flush=True)
        digits.write_dataset(raw, train, test, seed=0)
    urls = {}
    for split, name in (("train", "train"), ("test", "t10k")):
        dest = os.path.join(out, "data", f"digits_{split}_parquet")
        report = convert_source(make_source("mnist", os.path.join(raw, f"{name}-images-idx3-ubyte")),
                                dest, executor=SparkExecutor(spark))
        print(report.summary(), flush=True)
        urls[split] = dest
    return urls


def main(argv=None) -> int:
    args = parse_args(argv)
    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(levelname).1s %(name)s] %(message)s",
                        datefmt="%H:%M:%S")
    logging.getLogger("hovcaffe").setLevel(logging.INFO)
    os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    t0 = time.time()

    from hovcaffe.caffe.io import read_solver
    from hovcaffe.commands.plot import plot_metrics, read_metrics
    from hovcaffe.distributed.progress import DriverProgress
    from hovcaffe.distributed.runner import run_distributed, session_for
    from hovcaffe.options import DistributedOptions
    from hovcaffe.training.loop import TrainConfig

    options = DistributedOptions.resolve({"num_proc": args.ranks, "connection": args.connection,
                                          "model": os.path.join(out, "lenet.caffemodel")})
    spark = session_for(options)
    data = make_datasets(out, args.train_size, args.test_size, spark)

    solver_path = os.path.join(HERE, "lenet_solver.prototxt")
    config = TrainConfig(solver=read_solver(solver_path), solver_path=solver_path,
                         max_iter=args.iterations, train_data=data["train"], test_data=data["test"])
    display = DriverProgress()
    try:
        result = run_distributed(config, options, tensorboard=False, on_event=display, spark=spark)
    finally:
        display.close()

    final = result.test_scores.get(result.iterations, {})
    accuracy = final.get("test/accuracy")
    plot = os.path.join(out, "lenet_curves.png")
    plot_metrics(read_metrics(result.metrics_csv), plot, title=f"LeNet, {args.ranks} ranks")
    print()
    print(f"trained {result.iterations} iterations on {args.ranks} ranks in {time.time() - t0:.0f}s "
          f"(first iteration after {result.seconds_to_first_iteration or 0:.0f}s)")
    if accuracy is not None:
        print(f"test accuracy: {accuracy:.4f} (chance: 0.1)")
    print(f"final model:  {result.model_url}")
    print(f"snapshot:     {result.last_snapshot['model'] if result.last_snapshot else '-'}")
    print(f"metrics CSV:  {result.metrics_csv}")
    print(f"loss plot:    {plot}")
    return 0 if accuracy is None or accuracy > 0.5 else 1


if __name__ == "__main__":
    sys.exit(main())
