"""How many Spark tasks can run at once, so N ranks are known to fit before anything launches.

Horovod needs all N tasks running at the same time; with fewer slots `horovod.spark.run` waits
for `start_timeout` (10 minutes by default) and then fails with a generic message. We count the
slots from the Spark configuration and the registered executors and fail in seconds instead,
with the numbers.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import re
import time

from hovcaffe.options import ClusterOptionError

log = logging.getLogger(__name__)

_LOCAL = re.compile(r"^local(?:\[(\*|\d+)(?:\s*,\s*\d+)?\])?$")
_LOCAL_CLUSTER = re.compile(r"^local-cluster\[\s*(\d+)\s*,\s*(\d+)\s*,\s*\d+\s*\]$")


@dataclasses.dataclass(frozen=True)
class SlotReport:
    """Concurrent task slots and how they were counted."""

    slots: int | None  # None: unknown (e.g. dynamic allocation without a maximum)
    detail: str


def _int_conf(conf, key: str) -> int | None:
    value = conf.get(key, None)
    if value in (None, ""):
        return None
    try:
        return int(float(value))
    except ValueError:
        return None


def static_slots(master: str, conf, cpu_count: int | None = None) -> SlotReport:
    """Upper bound on task slots that follows from the master URL and the configuration alone.

    Args:
        master: the Spark master URL.
        conf: a SparkConf (anything with ``get(key, default)``).
        cpu_count: cores of this machine, for ``local[*]``.
    """
    task_cpus = _int_conf(conf, "spark.task.cpus") or 1
    m = _LOCAL.match(master)
    if m:
        threads = m.group(1)
        cores = (cpu_count or os.cpu_count() or 1) if threads == "*" else int(threads or 1)
        return SlotReport(cores // task_cpus, f"{master}: {cores} task thread(s) / spark.task.cpus={task_cpus}")
    m = _LOCAL_CLUSTER.match(master)
    if m:
        workers, cores = int(m.group(1)), int(m.group(2))
        return SlotReport(workers * (cores // task_cpus),
                          f"{master}: {workers} worker(s) x {cores} core(s) / spark.task.cpus={task_cpus}")
    bounds: list[tuple[int, str]] = []
    cores_max = _int_conf(conf, "spark.cores.max")
    if cores_max is not None:
        bounds.append((cores_max // task_cpus, f"spark.cores.max={cores_max} / spark.task.cpus={task_cpus}"))
    executor_cores = _int_conf(conf, "spark.executor.cores")
    dynamic = str(conf.get("spark.dynamicAllocation.enabled", "false")).lower() == "true"
    instances = (_int_conf(conf, "spark.dynamicAllocation.maxExecutors") if dynamic
                 else _int_conf(conf, "spark.executor.instances"))
    if executor_cores is not None and instances is not None:
        key = "spark.dynamicAllocation.maxExecutors" if dynamic else "spark.executor.instances"
        bounds.append((instances * (executor_cores // task_cpus),
                       f"{key}={instances} x spark.executor.cores={executor_cores} / "
                       f"spark.task.cpus={task_cpus}"))
    gpu_task = conf.get("spark.task.resource.gpu.amount", None)
    gpu_exec = _int_conf(conf, "spark.executor.resource.gpu.amount")
    if gpu_task and gpu_exec is not None and instances is not None and float(gpu_task) > 0:
        per = int(gpu_exec / float(gpu_task))
        bounds.append((instances * per, f"{instances} executor(s) x {gpu_exec} GPU(s) / "
                                        f"spark.task.resource.gpu.amount={gpu_task}"))
    if not bounds:
        return SlotReport(None, f"{master}: no static limit (spark.cores.max / spark.executor.instances unset)")
    slots, detail = min(bounds)
    return SlotReport(slots, detail)


def registered_slots(sc) -> SlotReport:
    """Task slots of the executors registered right now (cluster masters)."""
    task_cpus = int(sc.getConf().get("spark.task.cpus", "1"))
    try:
        summaries = sc._jsc.sc().statusStore().executorList(True)
        cores = [int(summaries.apply(i).totalCores()) for i in range(summaries.size())
                 if summaries.apply(i).id() != "driver"]
    except Exception as exc:  # the status store is internal API; fall back on counting executors
        log.debug("executor list unavailable (%s); counting executors", exc)
        executors = max(0, sc._jsc.sc().getExecutorMemoryStatus().size() - 1)
        per = int(sc.getConf().get("spark.executor.cores", "1"))
        cores = [per] * executors
    slots = sum(c // task_cpus for c in cores)
    return SlotReport(slots, f"{len(cores)} registered executor(s) with {sum(cores)} core(s) / "
                             f"spark.task.cpus={task_cpus}")


def check_slots(sc, num_proc: int, wait_s: float = 20.0) -> SlotReport:
    """Make sure `num_proc` tasks can run at once on `sc`, or raise with the numbers.

    For cluster masters, waits up to `wait_s` seconds for executors to register.

    Raises:
        ClusterOptionError: too few slots (the message says how they were counted and what to
            change, naming the num_proc option).
    """
    conf = sc.getConf()
    report = static_slots(sc.master, conf)
    fix = ("lower $num_proc, or give Spark more cores "
           "(local[N], spark.cores.max, spark.executor.instances x spark.executor.cores)")
    if report.slots is not None and report.slots < num_proc:
        raise ClusterOptionError(f"{num_proc} ranks need {num_proc} concurrent Spark tasks, but "
                               f"only {report.slots} fit ({report.detail}); {fix}")
    if sc.master.startswith("local"):
        return report
    if str(conf.get("spark.dynamicAllocation.enabled", "false")).lower() == "true":
        # Executors are added while tasks wait; the configured maximum is all we can check.
        log.info("dynamic allocation: relying on the configured limit (%s)", report.detail)
        return report
    deadline = time.monotonic() + wait_s
    live = registered_slots(sc)
    while (live.slots or 0) < num_proc and time.monotonic() < deadline:
        time.sleep(0.5)
        live = registered_slots(sc)
    if (live.slots or 0) < num_proc:
        raise ClusterOptionError(f"{num_proc} ranks need {num_proc} concurrent Spark tasks, but after "
                               f"{wait_s:.0f}s the cluster offers {live.slots} ({live.detail}; "
                               f"configured limit: {report.detail}); {fix}")
    return live
