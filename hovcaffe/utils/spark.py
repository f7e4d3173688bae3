"""The one place hovcaffe gets a SparkSession: classic or Spark Connect, loopback-aware, reused.

Which session (first match wins):

1. the active session (a user's script, a notebook, a test fixture) when no master is named;
2. Spark Connect at ``remote`` / ``$HOVCAFFE_SPARK_REMOTE`` (``sc://host:port``, or ``local[N]``
   for a local Connect server);
3. under ``spark-submit`` (no master named): spark-submit's master and settings;
4. a classic session on ``master`` / ``$HOVCAFFE_SPARK_MASTER`` / the caller's default
   (``local[2]``). A local master keeps the driver on ``$SPARK_LOCAL_IP`` (default 127.0.0.1).

Code that needs the classic ``SparkContext`` (RDDs, broadcasts, Horovod's launcher) asks
:func:`require_classic`, which names the alternative in a one-line error under Spark Connect.
"""
from __future__ import annotations

import contextlib
import logging
import os
import sys
import warnings
from typing import Iterator, Mapping

from hovcaffe.errors import UserInputError

log = logging.getLogger(__name__)

#: PySpark worker daemon that pre-imports Horovod's task code (see hovcaffe.distributed.daemon).
PRELOADING_DAEMON = "hovcaffe.distributed.daemon"
MASTER_ENV = "HOVCAFFE_SPARK_MASTER"
REMOTE_ENV = "HOVCAFFE_SPARK_REMOTE"
DEFAULT_MASTER = "local[2]"


def master_url(default: str = DEFAULT_MASTER) -> str:
    """The classic master hovcaffe starts sessions on: ``$HOVCAFFE_SPARK_MASTER``, else `default`."""
    return os.environ.get(MASTER_ENV) or default


def is_connect(spark) -> bool:
    """Whether `spark` is a Spark Connect session (no SparkContext, no RDDs, no broadcasts).

    Decided by the class, without importing ``pyspark.sql.connect`` (which needs pyarrow >= 18).
    """
    return type(spark).__module__.startswith("pyspark.sql.connect")


def require_classic(spark, what: str, alternative: str) -> None:
    """Raise a one-line UserInputError when `spark` is a Spark Connect session.

    Args:
        what: the feature that needs the SparkContext ("training on 2 ranks").
        alternative: what works instead ("train with one process (numProc=1)").
    """
    if is_connect(spark):
        raise UserInputError(f"{what} needs a classic Spark session (it uses the SparkContext, which "
                             f"Spark Connect does not offer); {alternative}")


def active_session():
    """The active SparkSession of this thread (classic or Connect), or None."""
    from pyspark.sql import SparkSession

    return SparkSession.getActiveSession()


def get_spark(master: str | None = None, app_name: str = "hovcaffe",
              conf: Mapping[str, str] | None = None, *, remote: str | None = None,
              default_master: str = DEFAULT_MASTER):
    """Return the session hovcaffe should use (see the module docstring for the order).

    Args:
        master: a classic master URL; None: the active session, spark-submit's, or
            ``master_url(default_master)``.
        conf: settings for a new session (a reused session keeps its own).
        remote: a Spark Connect URL (``sc://...`` or ``local[N]``); default ``$HOVCAFFE_SPARK_REMOTE``.
        default_master: the classic master when neither `master` nor ``$HOVCAFFE_SPARK_MASTER`` names
            one (``local[N]`` for N ranks).
    """
    from pyspark.sql import SparkSession

    quiet_py4j()
    remote = remote or (None if master else os.environ.get(REMOTE_ENV))
    active = active_session()
    if active is not None and master is None and (remote is None or is_connect(active)):
        return active
    if (active is not None and master is not None and not is_connect(active)
            and master == active.sparkContext.master and not conf):
        return active
    if remote:
        return _connect_session(remote, app_name, conf)
    builder = SparkSession.builder.appName(app_name)
    if master is None and os.environ.get("PYSPARK_GATEWAY_PORT"):
        # Launched by spark-submit: its --master and settings rule; naming a master would override them.
        for key, value in (conf or {}).items():
            builder = builder.config(key, value)
        return builder.getOrCreate()
    master = master or master_url(default_master)
    builder = builder.master(master)
    for key, value in _local_settings(master).items():
        builder = builder.config(key, value)
    for key, value in (conf or {}).items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel(os.environ.get("HOVCAFFE_SPARK_LOG_LEVEL", "WARN"))
    log.info("Spark session on %s (Spark %s)", spark.sparkContext.master, spark.version)
    return spark


def quiet_py4j() -> None:
    """Keep py4j's own log records out of hovcaffe's output (unless ``HOVCAFFE_DEBUG`` is set).

    py4j logs, with a traceback, every command it could not send on a thread's connection that
    the JVM side had already closed ("Exception while sending command ... Connection reset by
    peer"), then sends it again on a new connection; this happens around Horovod's launch, whose
    job thread's pinned connection goes away, and the run is unaffected. A send that fails for
    good raises Py4JError in the calling code, which hovcaffe reports as one line. Without a
    handler of its own py4j's records reach stderr through Python's last-resort handler.
    """
    if not os.environ.get("HOVCAFFE_DEBUG"):
        logging.getLogger("py4j").setLevel(logging.CRITICAL)


def _connect_session(remote: str, app_name: str, conf: Mapping[str, str] | None):
    from pyspark.sql import SparkSession

    builder = SparkSession.builder.remote(remote).appName(app_name)
    # A local Connect server (remote "local[N]") is a classic driver in a child JVM: same settings.
    settings = _local_settings(remote) if remote.startswith("local") else {}
    for key, value in {**settings, **(conf or {})}.items():
        builder = builder.config(key, value)
    with warnings.catch_warnings():
        # The local server starts with these settings; pyspark then also tries to set them at
        # runtime, which Spark refuses for static ones with a harmless warning each.
        warnings.filterwarnings("ignore", message="Failed to set", category=UserWarning)
        spark = builder.getOrCreate()
    log.info("Spark Connect session at %s (Spark %s)", remote, spark.version)
    return spark


def _local_settings(master: str) -> dict[str, str]:
    """Settings of a session hovcaffe starts itself: no UI; on local masters a loopback driver."""
    settings = {"spark.ui.enabled": "false", "spark.ui.showConsoleProgress": "false"}
    executors_python = os.environ.setdefault("PYSPARK_PYTHON", sys.executable)  # this venv, unless set
    if not master.startswith("local"):
        return settings
    local_ip = os.environ.setdefault("SPARK_LOCAL_IP", "127.0.0.1")
    settings.update({"spark.driver.host": local_ip, "spark.driver.bindAddress": local_ip})
    if executors_python == sys.executable and os.environ.get("HOVCAFFE_SPARK_DAEMON", "1") != "0":
        # Local executors run this interpreter; the JVM passes them the driver's PYTHONPATH, which
        # must lead to this hovcaffe even when it was put on sys.path by hand (not installed). An
        # executor Python chosen by the user may lack hovcaffe: it keeps PySpark's own daemon.
        _export_package_root()
        settings["spark.python.daemon.module"] = PRELOADING_DAEMON
    return settings


def _export_package_root() -> None:
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    entries = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in entries:
        os.environ["PYTHONPATH"] = os.pathsep.join([root, *entries])


@contextlib.contextmanager
def worker_environment(sc, extra: Mapping[str, str]) -> Iterator[None]:
    """Python jobs created inside the block run their workers with `extra` in their environment.

    PySpark copies ``sc.environment`` into each Python function it sends, and Spark keeps a
    worker daemon per environment: the torch backend's stage gets the daemon that preloads a
    rank's modules (:mod:`hovcaffe.distributed.daemon`) without other jobs getting it.
    """
    saved = dict(sc.environment)
    sc.environment.update(extra)
    try:
        yield
    finally:
        sc.environment.clear()
        sc.environment.update(saved)


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


def run_tasks(spark, fn, items, description: str = "") -> list:
    """``[fn(*item) for item in items]`` with one Spark task per item; results in item order.

    A classic session runs an RDD job; a Spark Connect session, which has no RDDs, runs
    ``spark.range(n, numPartitions=n).mapInArrow`` and returns each result pickled in a binary
    column. `fn`, `items` and the results must be picklable; the wrapper imports nothing from
    hovcaffe, so an executor without hovcaffe fails in `fn` (or at its unpickling), not before.
    """
    items = [tuple(item) for item in items]
    if not items:
        return []
    if not is_connect(spark):
        sc = spark.sparkContext
        if description:
            sc.setJobDescription(description)
        return sc.parallelize(items, len(items)).map(lambda item: fn(*item)).collect()

    def task(batches):
        import pyarrow as pa
        from pyspark import cloudpickle

        for batch in batches:
            ids = batch.column(0).to_pylist()
            yield pa.RecordBatch.from_arrays(
                [pa.array(ids, pa.int64()),
                 pa.array([cloudpickle.dumps(fn(*items[i])) for i in ids], pa.binary())],
                names=["id", "result"])

    import pickle

    rows = (spark.range(0, len(items), 1, numPartitions=len(items))
            .mapInArrow(task, "id long, result binary").collect())
    by_id = {row["id"]: row["result"] for row in rows}
    # Results were pickled by hovcaffe's own task above on this session's executors.
    return [pickle.loads(by_id[i]) for i in range(len(items))]
