"""Distributed training on Spark with Horovod.

Modules, one job each:

============  ===================================================================================
runner        `run_distributed`: preflight, launch, collect (what `hovcaffe train -num-proc` calls)
launcher      `launch`: any function on N ranks via `horovod.spark.run`, failing fast and clearly
rank          what every rank runs first (threads, device, Horovod init, error report)
worker        the training function of a rank (the local Trainer with Horovod hooks)
hooks         the Horovod implementation of the Trainer's seam (optimizer, broadcast, test scores)
job           the driver's portable description of a training job
portable      inlining nets and absolutising paths so ranks elsewhere read the same files
preflight     net / data / output checks on the driver
slots         counting Spark task slots before launching
transport     -connection gloo | mpi | ethernet | infiniband
outputs       snapshots and the final model at any URL
resume        the last complete snapshot (-resume)
callbacks     rank-side callbacks: progress events, outputs, fault hooks
progress      the driver's progress display
protocol      rank -> driver messages: marked output lines, and the live event socket
forwarded     parsing the ranks' forwarded output on the driver
features      -test / -features on Spark executors
faults        test-only fault injection
============  ===================================================================================
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "run_distributed": "hovcaffe.distributed.runner",
    "DistributedOptions": "hovcaffe.distributed.runner",
    "DistributedResult": "hovcaffe.distributed.runner",
    "HorovodTuning": "hovcaffe.distributed.launcher",
    "LaunchOptions": "hovcaffe.distributed.launcher",
    "launch": "hovcaffe.distributed.launcher",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy: the ranks import hovcaffe.distributed.rank without pulling in the trainer here.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hovcaffe.distributed' has no attribute {name!r}")
