"""Getting a SparkSession the way hovcaffe needs it (loopback-aware, reusable)."""
from __future__ import annotations

import logging
import os
import sys
from typing import Mapping

log = logging.getLogger(__name__)

#: PySpark worker daemon that pre-imports Horovod's task code (see hovcaffe.distributed.daemon).
PRELOADING_DAEMON = "hovcaffe.distributed.daemon"


def get_spark(master: str | None = None, app_name: str = "hovcaffe",
              conf: Mapping[str, str] | None = None):
    """Return the active SparkSession, or start one.

    Under `spark-submit` the session (and its master) already exist and are reused. Otherwise a
    session is started on `master` (default `$HOVCAFFE_SPARK_MASTER` or `local[2]`). When
    `SPARK_LOCAL_IP` is set (tests set 127.0.0.1) the driver host follows it, so no traffic
    leaves that interface.
    """
    from pyspark.sql import SparkSession

    active = SparkSession.getActiveSession()
    if active is not None and (master is None or (master == active.sparkContext.master and not conf)):
        return active
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # executors run this interpreter (venv)
    builder = SparkSession.builder.appName(app_name)
    if master is None and os.environ.get("PYSPARK_GATEWAY_PORT"):
        # Launched by spark-submit: its --master and settings rule; naming a master would override them.
        for key, value in (conf or {}).items():
            builder = builder.config(key, value)
        return builder.getOrCreate()
    master = master or os.environ.get("HOVCAFFE_SPARK_MASTER", "local[2]")
    builder = builder.master(master)
    local_ip = os.environ.get("SPARK_LOCAL_IP")
    if local_ip:
        builder = builder.config("spark.driver.host", local_ip).config("spark.driver.bindAddress", local_ip)
    builder = builder.config("spark.ui.enabled", "false").config("spark.ui.showConsoleProgress", "false")
    if master.startswith("local") and os.environ.get("HOVCAFFE_SPARK_DAEMON", "1") != "0":
        # Local executors run this interpreter; the JVM passes them the driver's PYTHONPATH, which
        # must lead to this hovcaffe even when it was put on sys.path by hand (not installed).
        _export_package_root()
        builder = builder.config("spark.python.daemon.module", PRELOADING_DAEMON)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("HOVCAFFE_SPARK_LOG_LEVEL", "WARN"))
    log.info("Spark session on %s (Spark %s)", spark.sparkContext.master, spark.version)
    return spark


def _export_package_root() -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *entries])


def rank_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """Environment passed explicitly to Horovod ranks.

    Besides what Python, torch, Horovod and MPI need, rank 0 gets what storage clients read:
    credentials and endpoints for s3:// (``AWS_*``), libhdfs's ``CLASSPATH`` / ``HADOOP_*`` /
    ``ARROW_LIBHDFS_DIR`` and Kerberos' ``KRB5*`` for hdfs://, since it writes `-model` there.
    OpenMPI refuses to run as root unless told it is fine; containers usually run as root.
    """
    env = {k: v for k, v in os.environ.items()
           if k.startswith(("PATH", "PYTHON", "LD_LIBRARY_PATH", "HOVCAFFE_", "SPARK_", "JAVA_HOME",
                            "OMP_", "MKL_", "HOROVOD_", "OMPI_", "HOME", "USER", "TMPDIR", "LANG",
                            "CUDA_", "NCCL_", "AWS_", "CLASSPATH", "HADOOP_", "ARROW_", "KRB5"))}
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT", "1")
        env.setdefault("OMPI_ALLOW_RUN_AS_ROOT_CONFIRM", "1")
    env.update(extra or {})
    return env
