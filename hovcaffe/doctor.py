"""Installation checks behind `hovcaffe doctor`.

Each check returns a `Check` (name, ok, detail, fix); nothing here prints. The Horovod smoke test
runs `allreduce_probe` on N ranks inside Spark tasks, over Gloo and over MPI.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import re
import shutil
import subprocess
import sys
import time
from typing import Callable

INSTALL_FIX = "run scripts/install.sh from the hovcaffe checkout (it installs the pinned stack)"


@dataclasses.dataclass
class Check:
    name: str
    ok: bool
    detail: str
    fix: str = ""


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


def check_horovod() -> Check:
    try:
        import horovod
        import horovod.torch as hvd
    except Exception as exc:
        return Check("horovod", False, f"cannot import horovod.torch: {exc}", INSTALL_FIX)
    flags = {"gloo": hvd.gloo_built(), "mpi": hvd.mpi_built(), "nccl": hvd.nccl_built()}
    built = ", ".join(f"{k} {'yes' if v else 'no'}" for k, v in flags.items())
    ok = flags["gloo"] and flags["mpi"]
    return Check("horovod", ok, f"{horovod.__version__} ({built})",
                 "" if ok else "rebuild Horovod with Gloo and MPI: " + INSTALL_FIX)


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
    check_horovod,
    check_java,
    check_mpirun,
]


def allreduce_probe() -> dict:
    """Runs on every Horovod rank: allreduce (rank + 1) and report what this rank saw."""
    import horovod.torch as hvd
    import torch

    hvd.init()
    try:
        total = hvd.allreduce(torch.tensor([float(hvd.rank() + 1)]), op=hvd.Sum, name="doctor_probe")
        return {"rank": hvd.rank(), "size": hvd.size(), "sum": float(total.item()),
                "mpi": bool(hvd.mpi_enabled()), "gloo": bool(hvd.gloo_enabled())}
    finally:
        hvd.shutdown()


def spark_allreduce_check(transport: str, num_proc: int, master: str | None,
                          nics: set[str] | None, start_timeout: int = 120) -> Check:
    """Run `allreduce_probe` on `num_proc` ranks with horovod.spark.run over `transport`."""
    name = f"allreduce {num_proc} ranks ({transport})"
    try:
        import horovod.spark

        from hovcaffe.utils.spark import get_spark, rank_environment

        get_spark(master, app_name="hovcaffe-doctor")
        t0 = time.time()
        results = horovod.spark.run(
            allreduce_probe, num_proc=num_proc, nics=nics, env=rank_environment(),
            use_mpi=transport == "mpi", use_gloo=transport == "gloo",
            start_timeout=start_timeout, verbose=0)
    except Exception as exc:
        fix = ("check `mpirun --version` and that OMPI_ALLOW_RUN_AS_ROOT is accepted"
               if transport == "mpi" else "check that Spark can start Python workers (java, PYSPARK_PYTHON)")
        last_line = (str(exc).strip().splitlines() or [""])[-1]
        return Check(name, False, f"{type(exc).__name__}: {last_line}", fix)
    expected = num_proc * (num_proc + 1) / 2
    sums = sorted({r["sum"] for r in results})
    ok = sums == [expected] and len(results) == num_proc
    return Check(name, ok, f"sum over ranks = {sums[0] if len(sums) == 1 else sums} "
                           f"(expected {expected:g}) in {time.time() - t0:.1f}s",
                 "" if ok else "ranks disagree; rerun with -v and check the Spark executor logs")


def run_checks(*, spark: bool = True, num_proc: int = 2, master: str | None = None,
               nics: set[str] | None = None, transports=("gloo", "mpi")) -> list[Check]:
    from hovcaffe.environment import package_checks  # Python packages: present, missing, fixes

    checks = [c() for c in STATIC_CHECKS] + package_checks()
    if spark and all(c.ok for c in checks if c.name in ("horovod", "pyspark", "java")):
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
        for transport in transports:
            checks.append(spark_allreduce_check(transport, num_proc, master, nics))
    elif spark:
        checks.append(Check("allreduce", False, "skipped: horovod, pyspark or java is missing",
                            "fix the checks above first"))
    return checks
