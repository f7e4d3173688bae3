"""Installation checks behind `hovcaffe doctor`.

Each check returns a `Check` (name, ok, detail, fix); nothing here prints. Every launcher backend
(:mod:`hovcaffe.distributed.backends`) is checked: installed (its version and transports), and,
with Spark, a smoke test that runs `allreduce_probe` on N ranks through the backend itself - for
Horovod over Gloo and over MPI.
"""
from __future__ import annotations

import importlib
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Callable

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
                    nics: tuple[str, ...] | None, start_timeout: int | None = None) -> Check:
    """Run `allreduce_probe` on `num_proc` ranks through the backend (over `connection`)."""
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
            from hovcaffe.utils.spark import get_spark

            spark = get_spark(master, app_name="hovcaffe-doctor")
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


def run_checks(*, spark: bool = True, num_proc: int = 2, master: str | None = None,
               nics: tuple[str, ...] | None = None,
               smoke_tests: tuple[tuple[str, str | None], ...] = SMOKE_TESTS) -> list[Check]:
    from hovcaffe.distributed.backend import registered_backends

    checks = [c() for c in STATIC_CHECKS] + package_checks() + check_backends()
    if not spark:
        return checks
    ok = {c.name: c.ok for c in checks}
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    backends = registered_backends()
    for backend_name, connection in smoke_tests:
        if backends[backend_name].missing() is not None:
            continue  # not installed: listed above, nothing to smoke-test
        needs = [backend_name] + (["pyspark", "java"] if backends[backend_name].uses_spark else [])
        if all(ok.get(n, False) for n in needs):
            checks.append(allreduce_check(backend_name, connection, num_proc, master, nics))
        else:
            checks.append(Check(f"allreduce ({connection or backend_name})", False,
                                f"skipped: {' or '.join(needs)} is missing",
                                "fix the checks above first"))
    return checks
