"""Installation checks behind `hovcaffe doctor`.

Each check returns a `Check` (name, ok, detail, fix); nothing here prints. Every launcher backend
(:mod:`hovcaffe.distributed.backends`) is checked: installed (its version and transports), and,
with Spark, a smoke test that runs `allreduce_probe` on N ranks through the backend itself - for
Horovod over Gloo and over MPI.

What waits, overlaps (see `run_checks`): the Spark session starts while the versions are checked,
and the smoke tests that need no Spark run next to those that do. The Spark ones stay one after
another: each holds all N task slots of the session for its whole run.
"""
from __future__ import annotations

import importlib
import importlib.util
import functools
import os
import re
import shutil
import subprocess
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable

from hovcaffe.environment import Check, package_checks

INSTALL_FIX = "run scripts/install.sh from the hovcaffe checkout (it installs the pinned stack)"


def _version_check(name: str, module: str, want_prefix: str | None = None) -> Check:
    try:
        mod = importlib.import_module(module)
    except Exception as exc:  # ImportError, or a broken native library
        return Check(name, False, f"cannot import {module}: {exc}", INSTALL_FIX)
    version = getattr(mod, "__version__", "?")
    if want_prefix and not str(version).startswith(want_prefix):
        return Check(name, False, f"{version} (hovcaffe needs {want_prefix}*)", INSTALL_FIX)
    return Check(name, True, str(version))


def check_python() -> Check:
    v = sys.version_info
    ok = v >= (3, 10)
    return Check("python", ok, f"{v.major}.{v.minor}.{v.micro} ({sys.executable})",
                 "" if ok else "use Python 3.10 or newer")


def check_torch() -> Check:
    c = _version_check("torch", "torch")
    if c.ok:
        import torch

        c.detail += f" (threads {torch.get_num_threads()}, cuda {'yes' if torch.cuda.is_available() else 'no'})"
    return c


def check_backends() -> list[Check]:
    """One check per launcher backend: installed completely, or not installed at all (listed
    with how to add it; one-process work needs none), or installed incompletely (a failure)."""
    from hovcaffe.distributed.backend import INSTALL_HINT, registered_backends

    checks = []
    for name, cls in sorted(registered_backends().items()):
        why = cls.missing()
        if why is not None:
            checks.append(Check(name, True, f"not installed ({why}); optional, for distributed "
                                            f"training. To add it: {INSTALL_HINT}"))
            continue
        ok, detail = cls.installation()
        checks.append(Check(name, ok, detail, "" if ok else f"{name}: {INSTALL_FIX}"))
    return checks


def check_java() -> Check:
    java = shutil.which("java")
    if not java:
        return Check("java", False, "java not found on PATH",
                     "sudo apt-get install -y openjdk-17-jre-headless (Spark needs Java >= 17)")
    out = subprocess.run([java, "-version"], capture_output=True, text=True).stderr
    m = re.search(r'version "(\d+)', out)
    major = int(m.group(1)) if m else 0
    ok = major >= 17
    first = out.splitlines()[0] if out else "?"
    return Check("java", ok, first, "" if ok else "sudo apt-get install -y openjdk-17-jre-headless")


def check_mpirun() -> Check:
    mpirun = shutil.which("mpirun")
    if not mpirun:
        return Check("openmpi", False, "mpirun not found", "sudo apt-get install -y openmpi-bin libopenmpi-dev")
    out = subprocess.run([mpirun, "--version"], capture_output=True, text=True).stdout
    return Check("openmpi", True, (out.splitlines() or ["?"])[0])


STATIC_CHECKS: list[Callable[[], Check]] = [
    check_python,
    check_torch,
    check_java,
    check_mpirun,
]


def allreduce_probe(ctx) -> dict:
    """Runs on every rank: allreduce (rank + 1) and report what this rank saw."""
    import torch

    total = ctx.collectives.allreduce_sum(torch.tensor([float(ctx.rank + 1)]), name="doctor_probe")
    return {"rank": ctx.rank, "size": ctx.size, "sum": float(total.item())}


#: the smoke tests per backend: (backend, connection or None); Horovod over both transports
SMOKE_TESTS = (("horovod", "gloo"), ("horovod", "mpi"), ("torch", None), ("local", None))


def allreduce_check(backend_name: str, connection: str | None, num_proc: int, master: str | None,
                    nics: tuple[str, ...] | None, start_timeout: int | None = None,
                    spark_session: "Future[Any] | None" = None) -> Check:
    """Run `allreduce_probe` on `num_proc` ranks through the backend (over `connection`).

    Args:
        spark_session: a session already starting (`start_spark`); None: start one on `master`
            if the backend uses Spark.
    """
    from hovcaffe.distributed.backend import get_backend
    from hovcaffe.distributed.rank import RankTask
    from hovcaffe.options import DistributedOptions

    name = f"allreduce {num_proc} ranks ({connection or backend_name})"
    try:
        options = DistributedOptions.resolve(
            {"num_proc": num_proc, "backend": backend_name, "connection": connection,
             "master": master, "nics": nics, "start_timeout": start_timeout})
        spark = None
        if get_backend(options).uses_spark:
            spark = (spark_session or start_spark(master)).result()
        backend = get_backend(options, spark=spark)
        t0 = time.time()
        backend.preflight()
        results = backend.run(RankTask(fn=allreduce_probe))
    except Exception as exc:
        fix = ("check `mpirun --version` and that OMPI_ALLOW_RUN_AS_ROOT is accepted"
               if connection == "mpi" else "check that Spark can start Python workers (java, PYSPARK_PYTHON)"
               if backend_name == "horovod" else "check that this machine can open TCP ports on 127.0.0.1")
        last_line = (str(exc).strip().splitlines() or [""])[-1]
        return Check(name, False, f"{type(exc).__name__}: {last_line}", fix)
    expected = num_proc * (num_proc + 1) / 2
    sums = sorted({r["sum"] for r in results})
    ok = sums == [expected] and len(results) == num_proc
    return Check(name, ok, f"sum over ranks = {sums[0] if len(sums) == 1 else sums} "
                           f"(expected {expected:g}) in {time.time() - t0:.1f}s",
                 "" if ok else "ranks disagree; rerun with -v and check the Spark executor logs")


def start_spark(master: str | None) -> "Future[Any]":
    """The doctor's Spark session, started in a thread: the JVM starts while the caller goes on."""
    def start():
        from hovcaffe.utils.spark import get_spark

        return get_spark(master, app_name="hovcaffe-doctor")

    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="doctor-spark")
    try:
        return pool.submit(start)
    finally:
        pool.shutdown(wait=False)  # the thread ends with `start`


def run_checks(*, spark: bool = True, num_proc: int = 2, master: str | None = None,
               nics: tuple[str, ...] | None = None,
               smoke_tests: tuple[tuple[str, str | None], ...] = SMOKE_TESTS) -> list[Check]:
    """Every check, in a fixed order (`STATIC_CHECKS`, packages, backends, then `smoke_tests`).

    With `spark`, the Spark session starts (in a thread) before the version checks, as long as
    pyspark imports: when java or pyspark then fails its check, the session is not used (and its
    error not reported: the failed check names the fix). The smoke tests of backends without Spark
    run in threads next to the Spark ones; those share the one session, one after another.
    """
    from hovcaffe.distributed.backend import registered_backends

    session = None
    if spark:
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        if importlib.util.find_spec("pyspark") is not None and shutil.which("java"):
            session = start_spark(master)
    checks = [c() for c in STATIC_CHECKS] + package_checks() + check_backends()
    if not spark:
        return checks
    ok = {c.name: c.ok for c in checks}
    backends = registered_backends()
    planned: list[Check | Callable[[], Check]] = []
    in_threads: list[int] = []  # indexes into planned: the smoke tests without Spark
    for backend_name, connection in smoke_tests:
        cls = backends[backend_name]
        if cls.missing() is not None:
            continue  # not installed: listed above, nothing to smoke-test
        needs = [backend_name] + (["pyspark", "java"] if cls.uses_spark else [])
        if not all(ok.get(n, False) for n in needs):
            planned.append(Check(f"allreduce ({connection or backend_name})", False,
                                 f"skipped: {' or '.join(needs)} is missing",
                                 "fix the checks above first"))
            continue
        if not cls.uses_spark:
            in_threads.append(len(planned))
        planned.append(functools.partial(allreduce_check, backend_name, connection, num_proc,
                                         master, nics, spark_session=session))
    with ThreadPoolExecutor(thread_name_prefix="doctor-smoke") as pool:
        # those without Spark start first, in threads; the Spark ones then run here, in turn
        started = {i: pool.submit(planned[i]) for i in in_threads}
        done = [started[i].result() if i in started else p() if callable(p) else p
                for i, p in enumerate(planned)]
    return checks + done
