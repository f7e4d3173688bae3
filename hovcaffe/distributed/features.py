"""CaffeOnSpark's `-test` and `-features` on Spark executors (inference needs no Horovod).

Partition p of P builds the TEST net, loads the weights (read from their URL on the executor),
and runs one pass over its share of the TEST data - the data room splits the TEST set into P
contiguous parts in file order, so together the partitions see every sample exactly once, and
concatenated in partition order they give the file order. The last batch of a share may be short;
it is run as it is (PyTorch layers take any batch size).

* features: one row per sample: `SampleID` (its position in the TEST set) and one
  `array<float>` column per requested blob (plus the label blob when asked), written with Spark's
  writer in any format (json, parquet, ...). The shares run as one ``mapInArrow`` and hand their
  blobs over as Arrow record batches, on classic and Spark Connect sessions alike.
* test: the mean of every net output over all samples (batch means weighted by batch sizes), like
  `caffe test` over the whole set.
"""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import os
import re
import tempfile
from typing import Any, Iterator, Sequence

import numpy as np

from hovcaffe.errors import NetDefinitionError, UserInputError

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class ExecutorPassSpec:
    """Everything an executor needs to run the TEST net (picklable).

    Attributes:
        net_param: serialized NetParameter (inlined, absolute paths).
        source: where it came from, for messages.
        base_dir: folder for relative paths inside the net.
        weights_url: the trained weights (.caffemodel, any URL).
        data_override: replaces the TEST data layers' source (-input).
        partitions: P, the number of shares.
        fast: the forward's fast path, "auto", "on" or "off" (`hovcaffe.runtime.fastpath`).
    """

    net_param: bytes
    source: str
    base_dir: str
    weights_url: str | None
    data_override: str | None
    partitions: int
    fast: str = "off"


def inference_spec(net_or_solver: str, weights: str | None, *, data_override: str | None = None,
                   partitions: int = 2, fast: str = "off") -> ExecutorPassSpec:
    """Read the TEST net from a net prototxt, or from a solver's (first) test net, on the driver."""
    from hovcaffe.caffe.io import read_net, read_solver
    from hovcaffe.distributed.portable import absolute_path, absolutize_net, portable_solver
    from hovcaffe.errors import PrototxtError

    path = absolute_path(net_or_solver)
    base = os.path.dirname(path)
    net_error: PrototxtError | None = None
    try:
        net = read_net(path)
        is_net = len(net.layer) > 0 or len(net.layers) > 0
    except PrototxtError as exc:
        is_net, net_error = False, exc
    if is_net:
        absolutize_net(net, base)
    else:
        try:
            solver = read_solver(path)
        except PrototxtError as exc:
            # Neither parses: report the parse that got further - it is what the file was meant to be.
            if net_error is not None and (net_error.line or 0, net_error.column or 0) > (exc.line or 0, exc.column or 0):
                raise net_error from None
            raise
        sp = portable_solver(solver, path)
        if len(sp.test_net_param):
            net = sp.test_net_param[0]
        elif sp.HasField("net_param"):
            net = sp.net_param
        else:
            raise UserInputError(f"{net_or_solver}: the solver defines no test net (net or test_net)")
    weights = absolute_path(weights) if weights else None
    return ExecutorPassSpec(net.SerializeToString(), path, base, weights,
                         absolute_path(data_override), max(1, int(partitions)), fast)


# ------------------------------------------------------------------------------- executor side

def _build(spec: ExecutorPassSpec, partition: int):
    """(net, feeder, batches in this share) for partition `partition`."""
    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.state import net_state
    from hovcaffe.data.registry import FeedContext
    from hovcaffe.net import CaffeNet
    from hovcaffe.runtime.process import apply_process_settings
    from hovcaffe.training.feeder import NetFeeder
    from hovcaffe.training.nets import NetSpec

    apply_process_settings()  # this executor process runs the net over all its batches
    param = caffe_pb2.NetParameter.FromString(spec.net_param)
    state = net_state(caffe_pb2.TEST)
    nspec = NetSpec(param, state, spec.source, spec.base_dir)
    ctx = FeedContext(phase=caffe_pb2.TEST, rank=partition, world_size=spec.partitions, seed=0,
                      base_dir=spec.base_dir)
    feeder = NetFeeder.for_spec(nspec, ctx, source_override=spec.data_override)
    feeds = list(feeder.feeds.values())
    if not feeds:
        raise NetDefinitionError(f"{spec.source}: the TEST net has no data layer to read samples from")
    try:
        batches = len(feeds[0])
    except TypeError:
        raise NetDefinitionError(f"{spec.source}: the TEST data layer's feed cannot tell its pass "
                                 "length; use a Parquet dataset (hovcaffe convert)") from None
    net = CaffeNet(param, caffe_pb2.TEST, state=state, input_shapes=feeder.input_shapes(),
                   source=spec.source)
    if spec.weights_url:
        from hovcaffe.distributed import outputs
        from hovcaffe.weights import load_weights

        with tempfile.TemporaryDirectory(prefix="hovcaffe-weights-") as tmp:
            load_weights(net, outputs.download(spec.weights_url, os.path.join(tmp, os.path.basename(spec.weights_url))))
    net.eval()
    if spec.fast != "off":
        from hovcaffe.runtime.fastpath import enable_fast_path_fed

        enable_fast_path_fed(net, spec.fast, feeder, training=False, planned_passes=batches)
    return net, feeder, batches


def _batches(spec: ExecutorPassSpec, partition: int) -> Iterator[tuple[Any, dict]]:
    import torch

    net, feeder, batches = _build(spec, partition)
    for _ in range(batches):
        inputs = feeder.next_batch()
        with torch.inference_mode():  # not around the yield: the caller's code runs as it chose
            blobs = net(**inputs)
        yield net, blobs


def _batch_len(blobs: dict, net) -> int:
    first = net.input_names[0] if getattr(net, "input_names", None) else next(iter(blobs))
    return int(blobs[first].shape[0])


def test_sums(spec: ExecutorPassSpec, partition: int) -> dict[str, Any]:
    """Sums over this share of every output blob, each sample counted once, and the sample count.

    A per-batch output (accuracy, loss: a mean over the batch) counts `n` times its value; a
    per-sample output (first axis = the batch) counts each sample's row.
    """
    sums: dict[str, np.ndarray] = {}
    count = 0
    for net, out in _batches(spec, partition):
        n = _batch_len(out, net)
        for name in net.output_names:
            value = out[name].detach().double().cpu().numpy()
            if value.ndim >= 1 and value.shape[0] == n and value.size > 1:
                total = value.reshape(n, -1).sum(axis=0)
            else:
                total = value.reshape(-1) * n
            sums[name] = total if name not in sums else sums[name] + total
        count += n
    return {"sums": sums, "count": count}


# ------------------------------------------------------------------------------- driver side

#: how an executor's hovcaffe exception appears in the traceback text Spark hands the driver
_EXECUTOR_ERROR = re.compile(r"^hovcaffe\.errors\.(\w+): (.+)$", re.M)


@contextlib.contextmanager
def _executor_user_errors() -> Iterator[None]:
    """Re-raise a user error an executor hit (bad blob name, unreadable data) as a UserInputError.

    Spark wraps executor exceptions in its own (Py4JJavaError, PythonException) whose text holds
    the Python traceback; without this the CLI would report a Spark failure (exit 1) instead of
    the one-line message (exit 2).
    """
    from hovcaffe import errors

    try:
        yield
    except errors.HovcaffeError:
        raise
    except Exception as exc:
        match = _EXECUTOR_ERROR.search(str(exc))
        cls = getattr(errors, match.group(1), None) if match else None
        if isinstance(cls, type) and issubclass(cls, errors.UserInputError):
            raise UserInputError(match.group(2).strip()) from exc
        raise


def _feature_batches(spec: ExecutorPassSpec, names: Sequence[str], batches: Iterator[Any]) -> Iterator[Any]:
    """mapInArrow function: partition numbers in, one record batch of features per TEST batch out."""
    import pyarrow as pa

    for batch in batches:
        for partition in batch.column(0).to_pylist():
            index = 0
            for net, out in _batches(spec, partition):
                missing = [b for b in names if b not in out]
                if missing:
                    raise UserInputError(f"blob(s) {missing} are not in the TEST net; its blobs: "
                                         f"{', '.join(sorted(out))}")
                n = _batch_len(out, net)
                columns = [pa.array(np.full(n, partition, np.int64)),
                           pa.array(np.arange(index, index + n, dtype=np.int64))]
                for name in names:
                    values = out[name].detach().float().cpu().numpy().reshape(n, -1)
                    offsets = np.arange(0, (n + 1) * values.shape[1], values.shape[1], dtype=np.int32)
                    columns.append(pa.ListArray.from_arrays(pa.array(offsets), pa.array(values.reshape(-1))))
                index += n
                yield pa.RecordBatch.from_arrays(columns, names=["_partition", "_index", *names])


def extract_features(spark, spec: ExecutorPassSpec, blobs: Sequence[str], label: str | None = None):
    """A DataFrame `SampleID` + one array<float> column per blob (label last), one row per sample.

    Partition p of the TEST data runs as Spark task p of a ``mapInArrow`` (classic or Spark
    Connect alike); a sample's ID is the number of samples in the shares before its own plus its
    index in its share. The features are computed once: the per-share rows are cached, counted per
    share, then numbered. Returns (the DataFrame, the cached per-share DataFrame to unpersist).
    """
    from pyspark.sql import functions as F
    from pyspark.sql.types import ArrayType, FloatType, LongType, StructField, StructType

    names = list(dict.fromkeys([*blobs, *([label] if label else [])]))
    if not names:
        raise UserInputError("-features needs at least one blob name")
    schema = StructType([StructField("_partition", LongType(), False), StructField("_index", LongType(), False)]
                        + [StructField(n, ArrayType(FloatType(), False), False) for n in names])
    shares = (spark.range(0, spec.partitions, 1, numPartitions=spec.partitions)
              .mapInArrow(functools.partial(_feature_batches, spec, names), schema).cache())
    counts = dict(shares.groupBy("_partition").count().collect())
    offsets, total = {}, 0
    for p in range(spec.partitions):
        offsets[p], total = total, total + counts.get(p, 0)
    offset = F.lit(0)
    for p, start in offsets.items():
        offset = F.when(F.col("_partition") == p, F.lit(start)).otherwise(offset)
    ordered = shares.select((offset + F.col("_index")).alias("SampleID"), *names)
    return ordered, shares


def write_features(spark, spec: ExecutorPassSpec, blobs: Sequence[str], label: str | None,
                   output: str, fmt: str = "json") -> int:
    """Extract features and write them to `output` with Spark's `fmt` writer; returns the row count."""
    from hovcaffe.utils.executors import check_executors

    check_executors(spark)
    with _executor_user_errors():  # counting the shares already runs the Spark job
        df, cached = extract_features(spark, spec, blobs, label)
        try:
            df.write.mode("overwrite").format(fmt).save(output)
            return df.count()
        finally:
            cached.unpersist()


def test_means(spark, spec: ExecutorPassSpec) -> tuple[dict[str, list[float]], int]:
    """({output: per-element means over all TEST samples}, sample count)."""
    from hovcaffe.utils.spark import run_tasks

    with _executor_user_errors():
        parts = run_tasks(spark, functools.partial(test_sums, spec), [(p,) for p in range(spec.partitions)],
                          f"hovcaffe: testing on {spec.partitions} share(s)")
    total = sum(p["count"] for p in parts)
    if total == 0:
        raise UserInputError(f"{spec.source}: the TEST data has no samples")
    names = parts[0]["sums"].keys()
    means = {n: (sum(p["sums"][n] for p in parts if n in p["sums"]) / total).astype(np.float32).tolist()
             for n in names}
    return means, total


def format_test_output(means: dict[str, list[float]]) -> str:
    """CaffeOnSpark's -test output: one `name: v1,v2,...` line per output blob."""
    return "".join(f"{name}: {','.join(repr(float(v)) for v in values)}\n" for name, values in means.items())
