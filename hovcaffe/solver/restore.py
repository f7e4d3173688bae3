"""Writing and restoring a trainer's snapshot (weights + .solverstate + resume sidecar).

Resume (`hovcaffe train -snapshot S.solverstate`) takes the weights from, in order: the explicit
`-weights` (CaffeOnSpark passes both), the `.caffemodel[.h5]` next to the solverstate, or the
solverstate's `learned_net` field (resolved with the path rule). Then it restores Caffe's `iter`,
`current_step` and histories, and - when the sidecar exists - data positions, RNG states and the
smoothed-loss window, so the resumed run continues the uninterrupted trajectory. Without a sidecar
(a .solverstate written by Caffe) the data feeds restart from their beginning, as in Caffe.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any, Sequence

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import read_caffemodel
from hovcaffe.errors import WeightsError
from hovcaffe.utils.paths import resolve_path
from hovcaffe.solver.snapshot import (caffemodel_h5_bytes, read_caffemodel_h5, snapshot_paths,
                                      write_files_atomically)
from hovcaffe.solver.state import (SolverStateData, history_arrays, load_history, read_sidecar,
                                   read_solverstate_data, set_rng_state, sidecar_bytes,
                                   sidecar_path, solverstate_bytes, solverstate_h5_bytes)

if TYPE_CHECKING:
    from hovcaffe.train import Trainer

log = logging.getLogger(__name__)


def read_weights(path: str) -> caffe_pb2.NetParameter:
    """A .caffemodel (binary, any Caffe version) or Caffe's HDF5 `.caffemodel.h5`, as a
    NetParameter whose layers carry the blobs (matched by layer name when loading)."""
    if not str(path).endswith(".h5"):
        return read_caffemodel(path)
    return read_caffemodel_h5(path)


def load_weights_into(nets: Sequence[Any], path: str, base_dir: str | None = None):
    """Copy a weights file into each net by layer name (Caffe's CopyTrainedLayersFrom).

    Returns:
        The LoadReport of the first net (the train net).
    """
    from hovcaffe.weights import load_caffemodel

    resolved = resolve_path(path, base_dir, what="weights")
    net_param = read_weights(resolved)
    reports = [load_caffemodel(net, net_param) for net in nets]
    log.info("copied weights from %s", resolved)
    return reports[0]


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
    from hovcaffe.weights import net_to_netparam

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
