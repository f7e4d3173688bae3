"""Distributed training: N ranks of the same Trainer, started by a launcher backend.

Modules, one job each:

================  ===============================================================================
runner            `run_distributed`: preflight, launch, collect (what `hovcaffe train -num-proc` calls)
backend           the launcher seam: `Backend` (preflight, run), `Collectives`, `RankSummary`, registry
backends/         one module per backend: `horovod` (Horovod on Spark), `local` (torch.distributed)
horovod_launcher  `horovod.spark.run` for the horovod backend, failing fast and clearly
torch_collectives `Collectives` over a torch.distributed process group
rank              what every rank runs first (logging, threads, collectives, device, error report)
ranklog           the ranks' logging: rank 0 speaks, records reach the driver as records
worker            the training function of a rank (the local Trainer with `DistributedHooks`)
hooks             `DistributedHooks`: the Trainer's seam over any backend's collectives
run_plan          the driver's portable plan of a training run (what every rank receives)
portable          inlining nets and absolutising paths so ranks elsewhere read the same files
preflight         net / data / output checks on the driver
slots             counting Spark task slots before launching
transport         -connection gloo | mpi | ethernet | infiniband (Horovod's transports)
outputs           snapshots and the final model at any URL
resume            the last complete snapshot (-resume)
callbacks         rank-side callbacks: progress events, outputs, fault hooks
progress          the driver's progress display
protocol          rank -> driver messages: marked output lines, and the live event socket
forwarded         parsing the ranks' forwarded output on the driver
daemon            PySpark's worker daemon with Horovod's task modules preloaded
features          -test / -features on Spark executors
faults            test-only fault injection
================  ===============================================================================

Options (ranks, backend, transport, ...) are :class:`hovcaffe.options.DistributedOptions`.
"""
from __future__ import annotations

from typing import Any

_EXPORTS = {
    "run_distributed": "hovcaffe.distributed.runner",
    "DistributedResult": "hovcaffe.distributed.runner",
    "DistributedOptions": "hovcaffe.options",
    "HorovodTuning": "hovcaffe.distributed.horovod_launcher",
    "Backend": "hovcaffe.distributed.backend",
    "Collectives": "hovcaffe.distributed.backend",
    "RankSummary": "hovcaffe.distributed.backend",
    "get_backend": "hovcaffe.distributed.backend",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    # Lazy: the ranks import hovcaffe.distributed.rank without pulling in the trainer here.
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'hovcaffe.distributed' has no attribute {name!r}")
