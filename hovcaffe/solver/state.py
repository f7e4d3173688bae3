"""`.solverstate` in Caffe's formats.

The `.solverstate` is Caffe's `SolverState` message (binary protobuf, or the HDF5 layout with
`snapshot_format: HDF5`): `iter`, `learned_net`, `current_step` and one history blob per learnable
(owner) parameter in learnable order; AdaDelta and Adam store 2 × #params blobs, first every
parameter's first history, then every second one. Files written here load in Caffe.

Caffe resumes weights, histories and the iteration counter only; what an exact resume needs
besides is in hovcaffe's sidecar (`hovcaffe.training.checkpoints`).
"""
from __future__ import annotations

import dataclasses
import io
from typing import Sequence

import numpy as np
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import array_to_blob, blob_to_array, read_solverstate
from hovcaffe.errors import WeightsError
from hovcaffe.solver.base import CaffeOptimizer


@dataclasses.dataclass
class SolverStateData:
    """The content of a .solverstate, format-independent."""

    iter: int
    current_step: int
    learned_net: str
    history: list[np.ndarray]


# ---------------------------------------------------------------------------- history <-> optimizer

def history_arrays(optimizer: CaffeOptimizer, params: Sequence[torch.Tensor]) -> list[np.ndarray]:
    """The optimizer's histories in .solverstate order (see the module docstring)."""
    return [optimizer.state[p][key].detach().cpu().numpy().astype(np.float32, copy=True)
            for key in type(optimizer).history_keys for p in params]


def load_history(optimizer: CaffeOptimizer, params: Sequence[torch.Tensor],
                 arrays: Sequence[np.ndarray], *, source: str = "<solverstate>") -> None:
    """Copy .solverstate histories into the optimizer (count and shapes checked)."""
    keys = type(optimizer).history_keys
    expected = len(keys) * len(params)
    if len(arrays) != expected:
        raise WeightsError(
            f"{source}: {len(arrays)} history blobs, but a {type(optimizer).__name__} over "
            f"{len(params)} learnable parameters needs {expected}; was it written for another "
            "net or solver type?")
    it = iter(arrays)
    for key in keys:
        for i, p in enumerate(params):
            arr = next(it)
            target = optimizer.state[p][key]
            if int(np.prod(arr.shape)) != target.numel():
                raise WeightsError(f"{source}: history blob for learnable parameter #{i} has "
                                   f"shape {list(arr.shape)}, the net's parameter has "
                                   f"{list(target.shape)}")
            target.copy_(torch.from_numpy(np.ascontiguousarray(arr)).reshape(target.shape))


# ---------------------------------------------------------------------------- file formats

def solverstate_bytes(data: SolverStateData) -> bytes:
    """Binary `SolverState` (Caffe's BINARYPROTO snapshot format)."""
    msg = caffe_pb2.SolverState()
    msg.iter = data.iter
    msg.learned_net = data.learned_net
    msg.current_step = data.current_step
    for arr in data.history:
        array_to_blob(arr, msg.history.add())
    return msg.SerializeToString()


def solverstate_h5_bytes(data: SolverStateData) -> bytes:
    """Caffe's HDF5 solverstate: datasets iter, learned_net, current_step, history/<i>."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as fh:
        fh.create_dataset("iter", data=np.array([data.iter], dtype=np.int32))
        fh.create_dataset("learned_net", data=data.learned_net)
        fh.create_dataset("current_step", data=np.array([data.current_step], dtype=np.int32))
        hist = fh.create_group("history")
        for i, arr in enumerate(data.history):
            hist.create_dataset(str(i), data=np.asarray(arr, dtype=np.float32))
    return buf.getvalue()


def read_solverstate_data(path: str) -> SolverStateData:
    """Read a .solverstate (binary) or .solverstate.h5 file."""
    if str(path).endswith(".h5"):
        import h5py

        try:
            with h5py.File(path, "r") as fh:
                learned = fh["learned_net"][()]
                hist = fh["history"]
                return SolverStateData(
                    iter=int(np.asarray(fh["iter"]).reshape(-1)[0]),
                    current_step=int(np.asarray(fh["current_step"]).reshape(-1)[0])
                    if "current_step" in fh else 0,
                    learned_net=learned.decode() if isinstance(learned, bytes) else str(learned),
                    history=[np.asarray(hist[str(i)], dtype=np.float32) for i in range(len(hist))])
        except (OSError, KeyError) as exc:
            raise WeightsError(f"cannot read HDF5 solverstate {path!r}: {exc}") from exc
    msg = read_solverstate(path)
    return SolverStateData(iter=msg.iter, current_step=msg.current_step,
                           learned_net=msg.learned_net,
                           history=[blob_to_array(b) for b in msg.history])
