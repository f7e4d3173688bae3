"""Which wire the ranks talk over: `-connection auto|gloo|mpi|ethernet|infiniband`.

CaffeOnSpark had two choices, `ethernet` (TCP sockets) and anything else (its own RDMA code over
InfiniBand). hovcaffe delegates to Horovod's transports instead:

* ``auto`` (the default; CaffeOnSpark's ``ethernet`` too): what Horovod itself picks - ``mpi``
  when Horovod was built with MPI and ``mpirun`` is on the driver's PATH, else ``gloo``. Both run
  over TCP between hosts (and shared memory within one, for MPI); on the 2-core development
  machine MPI made 2-rank steps 12-25% shorter than Gloo (benchmarks/scaling.py), because
  Horovod's Gloo controller wakes two threads per rank every cycle. ``$HOVCAFFE_CONNECTION``
  changes the default (:mod:`hovcaffe.options`).
* ``gloo`` (alias ``tcp``): Horovod launches one process per Spark task and the ranks meet
  through Horovod's rendezvous server on the driver; collectives run over Gloo's TCP rings. Needs
  nothing but TCP between executors (the interfaces in ``-nics``).
* ``mpi``: Horovod runs ``mpirun`` on the driver, which starts the ranks through the Spark task
  services; controller and CPU collectives run over Open MPI. Needs Open MPI on every node.
* ``infiniband``: ``mpi`` with Open MPI's UCX point-to-point layer (``-mca pml ucx``) instead of
  the TCP one Horovod's launcher forces (``-mca pml ob1 -mca btl ^openib``); UCX is where RDMA
  over InfiniBand / RoCE happens (it falls back to shared memory and TCP where there is none).
  Needs Open MPI built with UCX on every node, the verbs drivers (rdma-core) and IB/RoCE devices
  visible to the executors.

On GPU ranks Horovod uses NCCL for the allreduce when it was built with it, whatever the
connection: the connection then only decides how the ranks are launched and coordinated.
"""
from __future__ import annotations

import contextlib
import dataclasses
import shutil
import subprocess
import threading
from typing import Iterator



@dataclasses.dataclass(frozen=True)
class Transport:
    """How `horovod.spark.run` is asked to launch and connect the ranks.

    Attributes:
        name: the canonical name (``gloo`` or ``mpi`` or ``infiniband``).
        use_mpi: launch with mpirun (controller over MPI).
        rank_env: extra environment for the ranks (e.g. CPU collectives over MPI).
        default_env: environment the ranks get unless the driver's environment sets it.
        extra_mpi_args: appended to the mpirun command line.
        ompi_flags: Open MPI flags replacing the ones Horovod's launcher always passes (None: keep
            Horovod's ``-mca pml ob1 -mca btl ^openib``, i.e. TCP and shared memory).
        summary: one line for logs and ``--help``.
    """

    name: str
    use_mpi: bool
    rank_env: tuple[tuple[str, str], ...] = ()
    default_env: tuple[tuple[str, str], ...] = ()
    extra_mpi_args: str | None = None
    ompi_flags: tuple[str, ...] | None = None
    summary: str = ""

    @property
    def use_gloo(self) -> bool:
        return not self.use_mpi


_GLOO = Transport("gloo", use_mpi=False, rank_env=(("HOROVOD_CPU_OPERATIONS", "gloo"),),
                  summary="Gloo over TCP (Horovod's own launcher and rendezvous)")
# Open MPI busy-polls while a rank waits in a collective. Horovod's background thread waits in one
# every cycle, so on executors whose cores also run the ranks' compute the polling takes their
# CPU: yielding made 2-rank LeNet 44% faster on 2 cores (50.8 -> 28.5 ms/it,
# benchmarks/scaling.py --connection mpi).
_MPI_YIELD = (("OMPI_MCA_mpi_yield_when_idle", "1"),)
_MPI = Transport("mpi", use_mpi=True, rank_env=(("HOROVOD_CPU_OPERATIONS", "mpi"),),
                 default_env=_MPI_YIELD,
                 summary="Open MPI (mpirun launches the ranks; collectives over MPI)")
_INFINIBAND = Transport("infiniband", use_mpi=True, rank_env=(("HOROVOD_CPU_OPERATIONS", "mpi"),),
                        default_env=_MPI_YIELD,
                        ompi_flags=("-mca pml ucx", "-mca osc ucx"),
                        summary="Open MPI with UCX (RDMA over InfiniBand/RoCE)")

#: connection name (CaffeOnSpark's spellings included) -> transport
CONNECTIONS: dict[str, Transport | None] = {
    "auto": None,       # resolved when asked for (see `auto_transport`)
    "ethernet": None,
    "gloo": _GLOO,
    "tcp": _GLOO,
    "mpi": _MPI,
    "infiniband": _INFINIBAND,
    "rdma": _INFINIBAND,
}


#: the -connection used when none is given
DEFAULT_CONNECTION = "auto"


def resolve_transport(connection: str | None) -> Transport:
    """The transport for a connection name (None: the default, ``auto``).

    The environment is not read here: ``$HOVCAFFE_CONNECTION`` is applied once, with every other
    option, by :meth:`hovcaffe.options.DistributedOptions.resolve`.

    Raises:
        OptionError: an unknown name; the message lists the known ones.
    """
    from hovcaffe.options import OptionError

    key = (connection or DEFAULT_CONNECTION).strip().lower()
    if key not in CONNECTIONS:
        raise OptionError(f"$connection {key!r} is not known; use one of: "
                          f"{', '.join(sorted(CONNECTIONS))}")
    return CONNECTIONS[key] or auto_transport()


def auto_transport() -> Transport:
    """Horovod's own choice: MPI when Horovod has it and mpirun is installed, else Gloo."""
    import horovod.torch as hvd

    return _MPI if hvd.mpi_built() and shutil.which("mpirun") else _GLOO


def check_transport_available(transport: Transport) -> None:
    """Fail early (on the driver) when the chosen transport cannot work here.

    Raises:
        ClusterOptionError: Horovod lacks the transport, mpirun is missing, or Open MPI has no
            UCX (the message names the connection option).
    """
    import horovod.torch as hvd

    from hovcaffe.options import ClusterOptionError

    if transport.use_gloo and not hvd.gloo_built():
        raise ClusterOptionError("$connection gloo: this Horovod was built without Gloo "
                                 "(rebuild with HOROVOD_WITH_GLOO=1, see scripts/install.sh)")
    if not transport.use_mpi:
        return
    if not hvd.mpi_built():
        raise ClusterOptionError(f"$connection {transport.name}: this Horovod was built without "
                                 "MPI (install libopenmpi-dev and rebuild with HOROVOD_WITH_MPI=1)")
    if shutil.which("mpirun") is None:
        raise ClusterOptionError(f"$connection {transport.name}: mpirun is not on PATH "
                                 "(apt-get install openmpi-bin, or use $connection gloo)")
    if transport.ompi_flags and any("ucx" in f for f in transport.ompi_flags) and not _ompi_has_ucx():
        raise ClusterOptionError("$connection infiniband needs Open MPI built with UCX (`ompi_info` "
                                 "lists no 'pml: ucx' component here); use $connection mpi or gloo")


@contextlib.contextmanager
def open_mpi_flags(transport: Transport) -> Iterator[None]:
    """While launching, make Horovod's mpirun use `transport.ompi_flags` (driver side only).

    Horovod hard-codes ``-mca pml ob1 -mca btl ^openib`` for Open MPI and refuses a second ``pml``
    on the command line, so the UCX path can only be chosen by replacing that list for the launch.
    """
    if transport.ompi_flags is None:
        yield
        return
    from horovod.runner import mpi_run

    with _FLAGS_LOCK:
        saved = mpi_run._OMPI_FLAGS
        mpi_run._OMPI_FLAGS = list(transport.ompi_flags)
        try:
            yield
        finally:
            mpi_run._OMPI_FLAGS = saved


_FLAGS_LOCK = threading.Lock()


def _ompi_has_ucx() -> bool:
    try:
        out = subprocess.run(["ompi_info"], capture_output=True, text=True, timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any("MCA pml: ucx" in line for line in out.splitlines())
