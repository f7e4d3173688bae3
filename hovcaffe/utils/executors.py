"""Do the Spark executors run the hovcaffe this driver runs? One tiny job answers before real work.

``fit``, ``transform``, ``hovcaffe features`` and distributed ``train`` call
:func:`check_executors` first. It runs one task that reports the executor's Python, hovcaffe and
torch versions, imports nothing from hovcaffe to get there (an executor without hovcaffe must still
answer), and compares them with the driver's. A missing hovcaffe or torch, another Python minor
version or other hovcaffe/torch versions end the call within seconds with a one-line error naming
what the executor ran and the fix: ship this environment with ``venv-pack``. Each session is
checked once.
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import Any

from hovcaffe.errors import UserInputError

log = logging.getLogger(__name__)

FIX = ("ship this environment to the executors: `venv-pack -o env.tar.gz`, then run Spark with "
       "`--archives env.tar.gz#env --conf spark.pyspark.python=./env/bin/python "
       "--conf spark.pyspark.driver.python=$(which python)` (or set "
       "spark.archives the same way); see docs/spark-environments.md")

_checked: set[Any] = set()
_lock = threading.Lock()


class ExecutorEnvironmentError(UserInputError):
    """The executors' Python cannot run hovcaffe's tasks, or runs other versions than the driver."""


def local_versions() -> dict[str, str | None]:
    """This process's Python, hovcaffe and torch versions (the driver's side of the comparison)."""
    import importlib.metadata

    import hovcaffe

    try:
        torch = importlib.metadata.version("torch")
    except importlib.metadata.PackageNotFoundError:
        torch = None
    return {"python": sys.executable, "python_version": _python_version(), "hovcaffe": hovcaffe.__version__,
            "hovcaffe_error": None, "torch": torch}


def _python_version() -> str:
    return ".".join(str(v) for v in sys.version_info[:3])


def _probe() -> dict[str, str | None]:
    # Pickled by value into the task (it is defined inside a function, see executor_versions), and
    # importing only the standard library: an executor without hovcaffe still runs it.
    def report():
        import importlib
        import importlib.metadata
        import sys

        out = {"python": sys.executable,
               "python_version": ".".join(str(v) for v in sys.version_info[:3]),
               "hovcaffe": None, "hovcaffe_error": None, "torch": None}
        try:
            out["hovcaffe"] = importlib.import_module("hovcaffe").__version__
        except Exception as exc:  # noqa: BLE001 - whatever stops the import is the answer
            out["hovcaffe_error"] = f"{type(exc).__name__}: {exc}"
        try:
            out["torch"] = importlib.metadata.version("torch")
        except importlib.metadata.PackageNotFoundError:
            pass
        return out

    return report


def executor_versions(spark) -> dict[str, str | None]:
    """What one executor task runs (see :func:`local_versions` for the keys)."""
    from hovcaffe.utils.spark import run_tasks

    return run_tasks(spark, _probe(), [()], "hovcaffe: checking the executors' Python")[0]


def mismatch(driver: dict[str, str | None], executor: dict[str, str | None]) -> str | None:
    """What keeps `executor` from running the driver's tasks, in words, or None when nothing does."""
    where = f"the Spark executors run {executor['python']} (Python {executor['python_version']})"
    if executor["hovcaffe"] is None:
        return f"{where} without hovcaffe ({executor['hovcaffe_error']})"
    if executor["torch"] is None:
        return f"{where} without torch"
    minor = [".".join(str(side["python_version"]).split(".")[:2]) for side in (driver, executor)]
    differs = [f"{name} {executor[key]} (driver: {driver[key]})"
               for name, key, differ in (("Python", "python_version", minor[0] != minor[1]),
                                         ("hovcaffe", "hovcaffe", executor["hovcaffe"] != driver["hovcaffe"]),
                                         ("torch", "torch", executor["torch"] != driver["torch"]))
               if differ]
    return f"{where} with {', '.join(differs)}" if differs else None


def check_executors(spark) -> None:
    """Raise ExecutorEnvironmentError unless this session's executors run this hovcaffe's stack.

    Raises:
        ExecutorEnvironmentError: hovcaffe or torch missing on the executors, other versions, or
            no Python task could run at all; the message names what ran and the fix.
    """
    from hovcaffe.utils.spark import is_connect

    key = spark.session_id if is_connect(spark) else spark.sparkContext.applicationId
    with _lock:
        if key in _checked:
            return
    try:
        found = executor_versions(spark)
    except Exception as exc:  # the worker could not start or unpickle the probe: Spark's own error
        last = next((line.strip() for line in reversed(str(exc).splitlines()) if line.strip()), "")
        raise ExecutorEnvironmentError(f"the Spark executors could not run a Python task "
                                       f"({type(exc).__name__}: {last[:300]}); {FIX}") from exc
    problem = mismatch(local_versions(), found)
    if problem:
        raise ExecutorEnvironmentError(f"{problem}; {FIX}")
    log.info("executors run %s (Python %s, hovcaffe %s, torch %s)", found["python"],
             found["python_version"], found["hovcaffe"], found["torch"])
    with _lock:
        _checked.add(key)
