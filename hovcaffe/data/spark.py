"""Running conversion tasks: in this process, or spread over Spark partitions.

Each task becomes its own Spark task (``hovcaffe.utils.spark.run_tasks``: an RDD job on a
classic session, ``mapInArrow`` on Spark Connect), so results come back in task order. The tasks
write their Parquet files themselves; only small per-task reports travel back to the driver, so
Arrow has nothing to speed up on this path.
"""
from __future__ import annotations

import logging
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
    """Runs one task per Spark partition on the session's executors (classic or Connect)."""

    def __init__(self, spark):
        self.spark = spark

    def map(self, fn, items):
        from hovcaffe.utils.spark import run_tasks

        items = list(items)
        return run_tasks(self.spark, fn, items, f"hovcaffe: {len(items)} conversion task(s)")
