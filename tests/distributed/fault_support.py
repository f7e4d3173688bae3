"""Shared pieces of the fault tests (test_dist_faults.py: Horovod, test_torch_backend_faults.py:
the torch backend; no tests here): the workspace, the injected faults and the checks both make.

The faults are injected by ``HOVCAFFE_FAULT`` (:mod:`hovcaffe.distributed.faults`) at an exact
iteration, so no test races a rank: ``raise:1:5`` (an exception) and ``kill:1:7`` (SIGKILL, once
per ``HOVCAFFE_PID_DIR``). With ``snapshot: 5`` the last complete snapshot before the kill is
iteration 5: rank 1 reaches iteration 7 only through the allreduces of iterations 5 and 6, which
rank 0 joins after writing that snapshot.
"""
from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, TypeVar

from test_dist_support import Workspace, make_workspace

MAX_ITER = 20
SNAPSHOT = 5
RAISE_AT = 5
KILL_AT = 7
#: the snapshot a run killed at KILL_AT resumes from (see the module doc)
LAST_BEFORE_KILL = (KILL_AT - 1) // SNAPSHOT * SNAPSHOT
RAISE_FAULT = f"raise:1:{RAISE_AT}"
KILL_FAULT = f"kill:1:{KILL_AT}"

T = TypeVar("T")


def fault_workspace(root: Path) -> Workspace:
    """LeNet on 640 digits, batch 16 per rank, a snapshot every 5 and a test at 10 and 20."""
    return make_workspace(root, max_iter=MAX_ITER, snapshot=SNAPSHOT, test_interval=10)


def error_lines(stderr: str) -> list[str]:
    """The one-line error reports of the command line."""
    return [line for line in stderr.splitlines() if line.startswith("hovcaffe: error:")]


def assert_fails_naming_rank_1(proc) -> None:
    """A job whose rank 1 raised at RAISE_AT: exit 1, one error line naming the rank and the
    exception, and no 'trained' line."""
    assert proc.returncode == 1, proc.stdout + proc.stderr[-3000:]
    errors = error_lines(proc.stderr)
    assert len(errors) == 1, proc.stderr[-3000:]
    assert (f"rank 1 failed: InjectedFault: injected failure on rank 1 at iteration {RAISE_AT}"
            in errors[0]), errors[0]
    assert "trained to iteration" not in proc.stdout


def snapshot_iterations(folder: Path, stem: str = "lenet") -> list[int]:
    """Iterations of the solverstates in `folder`, ascending."""
    return sorted(int(p.name.split("_iter_")[1].split(".")[0])
                  for p in folder.glob(f"{stem}_iter_*.solverstate"))


def local_reference(ws: Workspace, folder: Path, resume: Path | None = None) -> Path:
    """The final .caffemodel of a 2-rank run of `ws` on the ``local`` backend (two processes
    averaging over torch.distributed, no Spark: seconds instead of a second Spark launch),
    from scratch or resumed from `resume`. Two ranks average their gradients as one exact
    float32 sum halved on every backend, so a correct run on any backend ends with these bytes."""
    from hovcaffe.distributed.runner import run_distributed
    from hovcaffe.options import DistributedOptions

    config = ws.solver_config(snapshot_prefix=str(folder / "lenet"),
                              resume=str(resume) if resume else None)
    result = run_distributed(config, DistributedOptions(num_proc=2, backend="local",
                                                        log_level=logging.WARNING),
                             tensorboard=False)
    assert result.iterations == MAX_ITER
    return folder / f"lenet_iter_{MAX_ITER}.caffemodel"


def wait_for(predicate: Callable[[], T], timeout: float, what: str, interval: float = 0.2) -> T:
    """Poll `predicate` until it returns something true (returned), or fail after `timeout` s
    (a generous bound, never the thing tested)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout:.0f}s waiting for {what}")
