"""The launchers of distributed training, one module each (see :mod:`hovcaffe.distributed.backend`).

A module here that defines ``BACKEND = <a Backend subclass>`` is registered under the class's
``name``; nothing else needs editing to add one. Modules must stay cheap to import: the launcher
package itself (Horovod, ...) is imported only when a backend checks or runs.

=========  ==========================================================================================
horovod    Horovod ranks inside Spark tasks (`horovod.spark.run`), Gloo or MPI; what ``auto`` picks
           in a classic session when Horovod imports (it needs the classic SparkContext)
torch      ranks as one Spark barrier stage over torch.distributed (Gloo/NCCL), classic or Spark
           Connect; what ``auto`` picks in a Connect session or without Horovod
local      torch.distributed (Gloo) processes on this machine, no Spark; for tests and one-box runs
=========  ==========================================================================================
"""
