"""PySpark's worker daemon, with Horovod's Spark task code imported before it forks workers.

`horovod.spark.run` starts its tasks with `SparkContext.range(...).mapPartitionsWithIndex(...)`,
and Spark does not reuse Python workers for that job: every launch forks fresh workers from the
daemon, and each of them imports `horovod.spark` (pyspark.ml, pandas, ...) before the task can
register - about 0.7 s of every launch on the development machine. Forked from a daemon that
already holds those modules, the workers start with them.

Used by sessions hovcaffe starts on local masters (`hovcaffe.utils.spark.get_spark`); on a
cluster set ``spark.python.daemon.module=hovcaffe.distributed.daemon`` where hovcaffe is
installed on the executors. Kept free of hovcaffe imports: if Horovod is missing, the daemon
still serves plain PySpark workers.
"""
from __future__ import annotations


def _preload() -> None:
    try:
        import horovod.spark.runner  # noqa: F401  (the module Horovod's tasks are pickled from)
        import horovod.spark.task.task_service  # noqa: F401
    except Exception:  # Horovod absent or broken: serve plain workers; the launcher reports it
        pass


if __name__ == "__main__":
    _preload()
    from pyspark.daemon import manager

    manager()
