"""Checkpoints of a training run: their names, their crash-safe write, and resuming from one.

A snapshot at iteration N is `<prefix>_iter_<N>.caffemodel` + `<prefix>_iter_<N>.solverstate`
(`.caffemodel.h5` / `.solverstate.h5` with `snapshot_format: HDF5`) plus hovcaffe's
`<prefix>_iter_<N>.hovcaffe.json` resume sidecar.

All files are first written in full to hidden temp files in the target folder and fsynced; then
they are renamed into place with the `.solverstate` *last*. Resuming needs the solverstate, so a
crash (even kill -9) at any point leaves either the complete new snapshot or no visible
solverstate for it - the previous snapshot is never touched.

Resume (`hovcaffe train -snapshot S.solverstate`) takes the weights from, in order: the explicit
`-weights` (CaffeOnSpark passes both), the `.caffemodel[.h5]` next to the solverstate, or the
solverstate's `learned_net` field (resolved with the path rule). Then it restores Caffe's `iter`,
`current_step` and solver histories and, from the sidecar, the data-feed positions, RNG states and
the smoothed-loss window, so the resumed run continues the uninterrupted trajectory. Without a
sidecar (a .solverstate written by Caffe) the data feeds restart from their beginning, as in Caffe.
"""
from __future__ import annotations

import contextlib
import logging
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Sequence

from hovcaffe.errors import WeightsError
from hovcaffe.utils.fileio import fsync_dir, new_file_mode
from hovcaffe.utils.paths import resolve_path
from hovcaffe.weights import caffemodel_h5_bytes, load_weights_into, net_to_netparam
from hovcaffe.solver.state import (SolverStateData, history_arrays, load_history, read_sidecar,
                                   read_solverstate_data, set_rng_state, sidecar_bytes,
                                   sidecar_path, solverstate_bytes, solverstate_h5_bytes)

if TYPE_CHECKING:
    from hovcaffe.training.loop import Trainer

log = logging.getLogger(__name__)

FORMATS = {0: "HDF5", 1: "BINARYPROTO"}  # caffe_pb2.SolverParameter.SnapshotFormat values


def default_prefix(solver_path: str | None, prefix: str) -> str:
    """Caffe's snapshot_prefix rule (caffe-semantics §13.4).

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


def snapshot_paths(prefix: str, iteration: int, fmt: str = "BINARYPROTO") -> dict[str, str]:
    """{"model", "state", "sidecar"} file names of the snapshot at `iteration`."""
    ext = ".h5" if fmt == "HDF5" else ""
    stem = f"{prefix}_iter_{iteration}"
    return {"model": f"{stem}.caffemodel{ext}", "state": f"{stem}.solverstate{ext}",
            "sidecar": f"{stem}.hovcaffe.json"}


def write_files_atomically(files: Sequence[tuple[str, bytes]]) -> None:
    """Write every (path, bytes) completely, then rename them into place in the given order.

    Put the file that marks the set as complete (the .solverstate) last.
    """
    staged: list[tuple[str, str]] = []
    mode = new_file_mode()  # mkstemp creates 0600; snapshots get the usual file mode
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
    except BaseException:
        for tmp, _ in staged:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
        raise
    for folder in {os.path.dirname(os.path.abspath(p)) for p, _ in files}:
        fsync_dir(folder)


def weights_for_state(state_path: str, learned_net: str) -> str:
    """The weights file that belongs to a solverstate (see the module docstring)."""
    base = str(state_path)
    for suffix, model_suffix in ((".solverstate.h5", ".caffemodel.h5"),
                                 (".solverstate", ".caffemodel")):
        if base.endswith(suffix):
            beside = base[: -len(suffix)] + model_suffix
            if os.path.exists(beside):
                return beside
    if learned_net:
        return resolve_path(learned_net, os.path.dirname(os.path.abspath(state_path)),
                            what="learned_net weights", named_in=state_path)
    raise WeightsError(f"{state_path}: no weights found next to the solverstate and its "
                       "learned_net field is empty; pass -weights")


def write_snapshot(trainer: "Trainer") -> dict[str, str]:
    """Write the trainer's snapshot set crash-safely; returns the file paths."""
    paths = snapshot_paths(trainer.prefix, trainer.iter, trainer.snapshot_format)
    net_param = net_to_netparam(trainer.train_net)
    hdf5 = trainer.snapshot_format == "HDF5"
    model = caffemodel_h5_bytes(net_param) if hdf5 else net_param.SerializeToString()
    data = SolverStateData(iter=trainer.iter, current_step=trainer.lr_policy.current_step,
                           learned_net=paths["model"],
                           history=history_arrays(trainer.optimizer, trainer.params))
    state = solverstate_h5_bytes(data) if hdf5 else solverstate_bytes(data)
    sidecar = sidecar_bytes(trainer.resume_payload())
    # The solverstate goes last: it is what a resume looks for.
    write_files_atomically([(paths["model"], model), (paths["sidecar"], sidecar),
                            (paths["state"], state)])
    return paths


def restore_snapshot(trainer: "Trainer", state_path: str, *, explicit_weights: bool) -> None:
    """Restore `trainer` from a .solverstate (+ weights, + sidecar when present)."""
    state_path = resolve_path(state_path, None, what="solverstate")
    data = read_solverstate_data(state_path)
    if not explicit_weights:
        load_weights_into([trainer.train_net], weights_for_state(state_path, data.learned_net))
    trainer.optimizer.iteration = data.iter
    trainer.lr_policy.current_step = data.current_step
    load_history(trainer.optimizer, trainer.params, data.history, source=state_path)
    side = read_sidecar(sidecar_path(state_path))
    if side is None:
        trainer.smoothed.start_iter = data.iter
        log.warning("%s has no hovcaffe sidecar; resuming like Caffe: data feeds restart from "
                    "their beginning and the loss window is empty", state_path)
    else:
        if int(side["iter"]) != data.iter:
            raise WeightsError(f"{sidecar_path(state_path)} is for iteration {side['iter']} but "
                               f"{state_path} for iteration {data.iter}")
        trainer.smoothed.load_state_dict(side["smoothed_loss"])
        trainer.train_feeder.load_state_dict(side["train_feed"])
        for feeder, saved in zip(trainer.test_feeders, side.get("test_feeds", [])):
            feeder.load_state_dict(saved)
        set_rng_state(side["rng"])
        trainer.seconds_offset = float(side.get("seconds", 0.0))
    log.info("resumed from %s at iteration %d", state_path, data.iter)
