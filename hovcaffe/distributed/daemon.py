"""PySpark's worker daemon, with what hovcaffe's tasks import already imported before it forks.

PySpark forks every Python worker from a daemon (one per executor and worker environment). A cold
worker then imports what its task needs:

* a rank of the torch backend imports torch and hovcaffe's training code, about 3.4 s per worker
  on the 2-core development machine with both ranks importing at once. Its stage sets
  ``HOVCAFFE_DAEMON_PRELOAD=ranks`` in the workers' environment, so it gets a daemon of its own
  that imports them once (about 2.5 s) before the first fork;
* Horovod's launch (`horovod.spark.run`, an RDD job whose workers Spark does not reuse) imports
  `horovod.spark` (pyspark.ml, pandas, ...) in every launch, about 0.7 s: every other daemon
  imports that.

Only imports, no work: nothing here runs a torch op, sets a thread count or starts a thread pool
(torch starts its intra-op pool on first use, so each rank's ``torch.set_num_threads`` still
decides its threads; a rank forked from here had 1 OS thread and 1 torch thread after its first
matmul with ``-threads-per-rank 1``). numpy's OpenBLAS pool, started when torch imports numpy, is
shut down before each fork by OpenBLAS's own atfork handler.

Used by sessions hovcaffe starts on local masters (`hovcaffe.utils.spark.get_spark`); on a
cluster set ``spark.python.daemon.module=hovcaffe.distributed.daemon`` where hovcaffe is
installed on the executors. Each import may fail (Horovod absent, a broken install): the daemon
then serves plain PySpark workers, which import what they need themselves and report their own
errors.
"""
from __future__ import annotations

import gc
import importlib
import os

#: worker environment variable that asks for the rank preload (set by the torch backend for its
#: stage only: Spark keeps one daemon per worker environment, so other jobs keep the light one)
PRELOAD_ENV = "HOVCAFFE_DAEMON_PRELOAD"
RANKS = "ranks"

#: what every daemon imports: Horovod's task code (its launch forks fresh workers every time)
BASE = (
    "horovod.spark.runner",               # the module Horovod's tasks are pickled from
    "horovod.spark.task.task_service",
)
#: what a daemon for the torch backend's ranks imports instead: a rank's whole import set
#: (Horovod's ranks are not forked from here but started by mpirun/gloorun, so this would only
#: delay Horovod's launch job, measured 2.4 s)
RANK_MODULES = (
    "pyspark.worker",                     # every worker's entry point
    "torch",
    "torch.distributed",
    "hovcaffe.distributed.barrier_stage",
    "hovcaffe.distributed.worker",
    "hovcaffe.distributed.torch_collectives",
    "hovcaffe.training.loop",
    "hovcaffe.net",
)


def preload_list(environ=os.environ) -> tuple[str, ...]:
    """The modules this daemon imports before its first fork."""
    return RANK_MODULES if environ.get(PRELOAD_ENV) == RANKS else BASE


def _preload() -> None:
    for name in preload_list():
        try:
            importlib.import_module(name)
        except Exception:  # absent or broken: the worker imports it (and reports it) itself
            pass
    # Everything imported so far lives as long as the daemon: out of the collector's sight, a
    # forked worker's collections neither walk these objects nor write to their pages (which
    # would copy them from the daemon, page by page).
    gc.freeze()


if __name__ == "__main__":
    _preload()
    from pyspark.daemon import manager

    manager()
