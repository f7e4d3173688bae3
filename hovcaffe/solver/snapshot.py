"""Snapshot file names and the crash-safe write of a snapshot set.

A snapshot at iteration N is `<prefix>_iter_<N>.caffemodel` + `<prefix>_iter_<N>.solverstate`
(`.caffemodel.h5` / `.solverstate.h5` with `snapshot_format: HDF5`) plus hovcaffe's
`<prefix>_iter_<N>.hovcaffe.json` resume sidecar.

All files are first written in full to hidden temp files in the target folder and fsynced; then
they are renamed into place with the `.solverstate` *last*. Resuming needs the solverstate, so a
crash (even kill -9) at any point leaves either the complete new snapshot or no visible
solverstate for it - the previous snapshot is never touched.
"""
from __future__ import annotations

import contextlib
import io
import os
import tempfile
from pathlib import Path
from typing import Sequence

import numpy as np

from hovcaffe.caffe.io import blob_to_array
from hovcaffe.errors import WeightsError
from hovcaffe.utils.fileio import fsync_dir, new_file_mode

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


def caffemodel_h5_bytes(net_param) -> bytes:
    """Caffe's HDF5 weights layout: dataset `data/<layer>/<i>` per blob of a NetParameter."""
    import h5py

    buf = io.BytesIO()
    with h5py.File(buf, "w") as fh:
        data = fh.create_group("data")
        for layer in net_param.layer:
            group = data.create_group(layer.name)
            for i, blob in enumerate(layer.blobs):
                group.create_dataset(str(i), data=blob_to_array(blob))
        fh.create_group("diff")
    return buf.getvalue()


def read_caffemodel_h5(path: str):
    """Caffe's HDF5 weights (`data/<layer>/<i>`) as a NetParameter whose layers carry the blobs."""
    import h5py

    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.io import array_to_blob

    net = caffe_pb2.NetParameter()
    try:
        with h5py.File(path, "r") as fh:
            for name, group in fh["data"].items():
                layer = net.layer.add(name=name)
                for i in range(len(group)):
                    array_to_blob(np.asarray(group[str(i)], dtype=np.float32), layer.blobs.add())
    except (OSError, KeyError) as exc:
        raise WeightsError(f"cannot read HDF5 weights {path!r} (Caffe layout data/<layer>/<i>): "
                           f"{exc}") from exc
    return net


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
