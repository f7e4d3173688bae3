"""Running conversion tasks: in this process, or spread over Spark partitions.

Conversions use plain RDD ``parallelize(...).map(...).collect()``: under pyspark 4.3 with the
pinned pyarrow 14, Spark's Arrow paths (pandas UDFs, mapInPandas) refuse to run, and RDDs need
nothing from them. Each task becomes its own partition, so results come back in task order.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Protocol, Sequence

log = logging.getLogger(__name__)


class Executor(Protocol):
    def map(self, fn: Callable[..., Any], items: Sequence[tuple]) -> list[Any]:
        """``[fn(*item) for item in items]``, possibly in parallel, results in item order."""


class LocalExecutor:
    """Runs every task here, one after the other (first-use conversions, tests, no Spark)."""

    def map(self, fn, items):
        return [fn(*item) for item in items]


class SparkExecutor:
    """Runs one task per Spark partition on the session's executors."""

    def __init__(self, spark):
        self.spark = spark

    @property
    def parallelism(self) -> int:
        return self.spark.sparkContext.defaultParallelism

    def map(self, fn, items):
        items = list(items)
        if not items:
            return []
        sc = self.spark.sparkContext
        sc.setJobDescription(f"hovcaffe: {len(items)} conversion task(s)")
        return sc.parallelize(items, len(items)).map(lambda item: fn(*item)).collect()


def get_spark(master: str | None = None, app_name: str = "hovcaffe", conf: dict[str, str] | None = None):
    """The SparkSession for a conversion.

    Under ``spark-submit`` (no `master` given) the session takes spark-submit's master and settings;
    otherwise :func:`hovcaffe.utils.spark.get_spark` starts or reuses one (default ``local[2]``). A
    local master keeps the driver on 127.0.0.1 unless ``SPARK_LOCAL_IP`` says otherwise.
    """
    from hovcaffe.utils.spark import get_spark as shared_get_spark

    effective = master or os.environ.get("HOVCAFFE_SPARK_MASTER", "local[2]")
    if effective.startswith("local"):
        os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    settings = {"spark.python.worker.reuse": "true", **(conf or {})}
    log.info("using Spark (master %s) for the conversion", effective)
    return shared_get_spark(master, app_name=app_name, conf=settings)
