"""Checkpoints of a training run: their names, their crash-safe write, and reading one back.

A snapshot at iteration N is `<prefix>_iter_<N>.caffemodel` + `<prefix>_iter_<N>.solverstate`
(`.caffemodel.h5` / `.solverstate.h5` with `snapshot_format: HDF5`, Caffe's names) plus hovcaffe's
`<prefix>_iter_<N>.hovcaffe.json` resume sidecar. `SnapshotFiles` is the one rule for these names:
every module that builds or takes apart a snapshot file name uses it.

What the files hold is `Trainer.state_dict()`, split by who can read it: the weights go into the
.caffemodel, the solver histories, `iter` and `current_step` into the .solverstate (both load in
Caffe), everything Caffe drops (data-feed positions, RNG states, the smoothed-loss window, seconds
trained) into the sidecar - plain JSON, nothing is ever unpickled.

All files are first written in full to hidden temp files in the target folder and fsynced; then
they are renamed into place with the `.solverstate` *last*. Resuming needs the solverstate, so a
crash (even kill -9) at any point leaves either the complete new snapshot or no visible
solverstate for it - the previous snapshot is never touched.

Resume (`hovcaffe train -snapshot S.solverstate`) takes the weights from, in order: the explicit
`-weights` (CaffeOnSpark passes both), the `.caffemodel[.h5]` next to the solverstate, or the
solverstate's `learned_net` field (resolved with the path rule). Without a sidecar (a .solverstate
written by Caffe) the data feeds restart from their beginning and the loss window is empty, as in
Caffe.
"""
from __future__ import annotations

import base64
import contextlib
import dataclasses
import json
import logging
import os
import re
import tempfile
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from hovcaffe.errors import SnapshotWriteError, WeightsError
from hovcaffe.solver.state import (SolverStateData, read_solverstate_data, solverstate_bytes,
                                   solverstate_h5_bytes)
from hovcaffe.utils.fileio import fsync_dir, new_file_mode
from hovcaffe.utils.paths import resolve_path
from hovcaffe.weights import caffemodel_h5_bytes, net_to_netparam

log = logging.getLogger(__name__)

FORMATS = {0: "HDF5", 1: "BINARYPROTO"}  # caffe_pb2.SolverParameter.SnapshotFormat values
SIDECAR_VERSION = 1

# ---------------------------------------------------------------------------- names

_MODEL, _STATE, _SIDECAR = ".caffemodel", ".solverstate", ".hovcaffe.json"
_FILE = re.compile(r"^(?P<stem>.+?)(?:(?P<kind>\.caffemodel|\.solverstate)(?P<h5>\.h5)?"
                   r"|\.hovcaffe\.json)$")
_ITER = re.compile(r"^(?P<prefix>.*)_iter_(?P<iter>\d+)$")


@dataclasses.dataclass(frozen=True)
class SnapshotFiles:
    """The files of one snapshot, named by Caffe's rule.

    Attributes:
        stem: the name without the file kind's ending (`snaps/lenet_iter_100`); a path or URL.
        hdf5: whether the weights and solverstate use Caffe's HDF5 format (`.h5` endings).
    """

    stem: str
    hdf5: bool = False

    @classmethod
    def at(cls, prefix: str, iteration: int, hdf5: bool = False) -> "SnapshotFiles":
        """The snapshot a run with `prefix` writes at `iteration`."""
        return cls(f"{prefix}_iter_{int(iteration)}", hdf5)

    @classmethod
    def of(cls, name: str) -> "SnapshotFiles | None":
        """The snapshot a file belongs to (its .caffemodel[.h5], .solverstate[.h5] or sidecar),
        None for any other file name. A sidecar alone cannot tell the format (binary assumed)."""
        m = _FILE.match(str(name))
        return cls(m.group("stem"), bool(m.group("h5"))) if m else None

    @property
    def model(self) -> str:
        return self.stem + _MODEL + (".h5" if self.hdf5 else "")

    @property
    def state(self) -> str:
        return self.stem + _STATE + (".h5" if self.hdf5 else "")

    @property
    def sidecar(self) -> str:
        return self.stem + _SIDECAR

    @property
    def prefix(self) -> str | None:
        """The snapshot prefix (`<prefix>_iter_<N>`; the last `_iter_` counts), or None."""
        m = _ITER.match(self.stem)
        return m.group("prefix") if m else None

    @property
    def iteration(self) -> int | None:
        m = _ITER.match(self.stem)
        return int(m.group("iter")) if m else None

    def paths(self) -> dict[str, str]:
        """{"model", "state", "sidecar"} (what `TrainResult.last_snapshot` and callbacks get)."""
        return {"model": self.model, "state": self.state, "sidecar": self.sidecar}


def default_prefix(solver_path: str | None, prefix: str) -> str:
    """Caffe's snapshot_prefix rule (docs/caffe-semantics.md#snapshots).

    Unset -> the solver file path without its extension; a prefix naming an existing directory
    -> `<dir>/<solver file stem>`; otherwise the prefix as written (relative to the current
    directory, like Caffe).
    """
    if not prefix:
        if not solver_path:
            return "hovcaffe"
        return str(Path(solver_path).with_suffix(""))
    if solver_path and Path(prefix).is_dir():
        return str(Path(prefix) / Path(solver_path).stem)
    return prefix


def find_snapshots(names: Sequence[str], prefix_name: str) -> list[tuple[int, SnapshotFiles]]:
    """The complete snapshots of a prefix among a folder's file names, newest first.

    Args:
        names: base names of the files in the prefix's folder.
        prefix_name: the prefix's last path component (`lenet` for `snaps/lenet`).

    A snapshot is complete when its solverstate and its caffemodel are both there (the trainer
    renames the solverstate into place last; half-written files carry a `.tmp-` prefix).
    """
    present = set(names)
    found = []
    for name in present:
        snap = SnapshotFiles.of(name)
        if snap is None or name != snap.state or snap.prefix != prefix_name:
            continue
        if snap.model not in present:
            log.warning("skipping %s: its %s is missing", name, snap.model)
            continue
        found.append((int(snap.iteration), snap))
    return sorted(found, key=lambda item: item[0], reverse=True)


# ---------------------------------------------------------------------------- writing

def write_files_atomically(files: Sequence[tuple[str, bytes]]) -> None:
    """Write every (path, bytes) completely, then rename them into place in the given order.

    Put the file that marks the set as complete (the .solverstate) last.
    """
    staged: list[tuple[str, str]] = []
    mode = new_file_mode()  # mkstemp creates 0600; snapshots get the usual file mode
    path = ""
    try:
        for path, data in files:
            folder = os.path.dirname(os.path.abspath(path))
            os.makedirs(folder, exist_ok=True)
            fd, tmp = tempfile.mkstemp(prefix=f".tmp-{os.path.basename(path)}.", dir=folder)
            staged.append((tmp, path))
            os.fchmod(fd, mode)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
                fh.flush()
                os.fsync(fh.fileno())
        for tmp, path in staged:
            os.replace(tmp, path)
    except BaseException as exc:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        if isinstance(exc, OSError):  # disk full, quota, permissions: say which file
            raise SnapshotWriteError(f"cannot write {path}: {exc.strerror or exc}", path) from exc
        raise
    for folder in {os.path.dirname(os.path.abspath(p)) for p, _ in files}:
        fsync_dir(folder)


def write_checkpoint(files: SnapshotFiles, net, state: dict[str, Any]) -> None:
    """Write a snapshot crash-safely: `net`'s weights and a `Trainer.state_dict()`.

    Args:
        files: where (`SnapshotFiles.at(prefix, iteration, hdf5)`).
        net: the train net (its layers, in order, make the .caffemodel).
        state: the trainer's state; its `history`, `iter` and `lr_policy.current_step` go into
            the .solverstate, the rest (weights aside) into the sidecar.
    """
    net_param = net_to_netparam(net)
    model = caffemodel_h5_bytes(net_param) if files.hdf5 else net_param.SerializeToString()
    data = SolverStateData(iter=int(state["iter"]),
                           current_step=int(state["lr_policy"]["current_step"]),
                           learned_net=files.model, history=list(state["history"]))
    solverstate = solverstate_h5_bytes(data) if files.hdf5 else solverstate_bytes(data)
    sidecar = {k: v for k, v in state.items() if k not in _IN_CAFFE_FILES}
    # The solverstate goes last: it is what a resume looks for.
    try:
        write_files_atomically([(files.model, model), (files.sidecar, sidecar_bytes(sidecar)),
                                (files.state, solverstate)])
    except SnapshotWriteError as exc:
        raise SnapshotWriteError(f"snapshot at iteration {data.iter} not written: {exc} "
                                 f"({_last_good_snapshot(files)})", exc.path) from exc.__cause__


def _last_good_snapshot(failed: SnapshotFiles) -> str:
    """Which snapshot a resume would take after `failed` was not written, in words."""
    folder = os.path.dirname(os.path.abspath(failed.state))
    prefix = failed.prefix or ""
    try:
        names = os.listdir(folder)
    except OSError:
        names = []
    earlier = [snap for it, snap in find_snapshots(names, os.path.basename(prefix))
               if it < (failed.iteration or 0)]
    if not earlier:
        return "no earlier snapshot of this prefix to resume from"
    return f"last good snapshot: {os.path.join(folder, os.path.basename(earlier[0].state))}"


#: state_dict entries stored in Caffe's own files rather than in the sidecar
_IN_CAFFE_FILES = ("weights", "history")


# ---------------------------------------------------------------------------- reading

def weights_for_state(state_path: str, learned_net: str) -> str:
    """The weights file that belongs to a solverstate (see the module docstring)."""
    snap = SnapshotFiles.of(state_path)
    if snap is not None and state_path == snap.state and os.path.exists(snap.model):
        return snap.model
    if learned_net:
        return resolve_path(learned_net, os.path.dirname(os.path.abspath(state_path)),
                            what="learned_net weights", named_in=state_path)
    raise WeightsError(f"{state_path}: no weights found next to the solverstate and its "
                       "learned_net field is empty; pass -weights")


def read_checkpoint(state_path: str) -> tuple[dict[str, Any], str]:
    """A snapshot's training state (for `Trainer.load_state_dict`) and its weights file.

    Returns:
        (state without "weights", the weights file that belongs to the solverstate).
    """
    data = read_solverstate_data(state_path)
    state: dict[str, Any] = {"iter": data.iter, "lr_policy": {"current_step": data.current_step},
                             "history": data.history}
    side_path = (SnapshotFiles.of(state_path) or SnapshotFiles(state_path)).sidecar
    side = read_sidecar(side_path)
    if side is None:
        state["smoothed_loss"] = {"start_iter": data.iter, "losses": [], "value": 0.0}
        log.warning("%s has no hovcaffe sidecar; resuming like Caffe: data feeds restart from "
                    "their beginning and the loss window is empty", state_path)
    else:
        if int(side["iter"]) != data.iter:
            raise WeightsError(f"{side_path} is for iteration {side['iter']} but "
                               f"{state_path} for iteration {data.iter}")
        # Caffe's own file wins for what both hold (iter, current_step).
        state.update({k: v for k, v in side.items()
                      if k not in ("version", "iter", "lr_policy")})
    return state, weights_for_state(state_path, data.learned_net)


# ---------------------------------------------------------------------------- the sidecar

def rng_state() -> dict[str, Any]:
    """torch's CPU (and CUDA) RNG states as JSON-safe base64 strings."""
    state = {"torch": base64.b64encode(torch.get_rng_state().numpy().tobytes()).decode()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [base64.b64encode(s.numpy().tobytes()).decode()
                         for s in torch.cuda.get_rng_state_all()]
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    def tensor(b64: str) -> torch.Tensor:
        return torch.frombuffer(bytearray(base64.b64decode(b64)), dtype=torch.uint8)

    torch.set_rng_state(tensor(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensor(s) for s in state["cuda"]])


def _json_default(obj: Any) -> Any:
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, np.generic):
        return obj.item()
    raise TypeError(f"resume state holds a {type(obj).__name__}, which is not JSON-safe; feed "
                    "state_dict() must return plain numbers, strings, lists and dicts")


def sidecar_bytes(payload: dict[str, Any]) -> bytes:
    return json.dumps({"version": SIDECAR_VERSION, **payload}, default=_json_default,
                      indent=1).encode()


def read_sidecar(path: str) -> dict[str, Any] | None:
    """The sidecar's content, or None when the file does not exist."""
    p = Path(path)
    if not p.exists():
        return None
    try:
        data = json.loads(p.read_text())
    except (OSError, ValueError) as exc:
        raise WeightsError(f"cannot read resume sidecar {path!r}: {exc}") from exc
    if data.get("version") != SIDECAR_VERSION:
        raise WeightsError(f"{path!r} has sidecar version {data.get('version')!r}; this hovcaffe "
                           f"reads version {SIDECAR_VERSION}")
    return data
