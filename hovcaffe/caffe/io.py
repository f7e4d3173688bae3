"""Read and write Caffe's files: text prototxts, binary caffemodels, solverstates, mean files.

Every reader returns messages of our own schema (`hovcaffe.caffe.caffe_pb2`), already
upgraded to the current format (V0/V1 nets, `input:` nets, `solver_type` enums - see
`hovcaffe.caffe.upgrade`). Problems raise `PrototxtError` (text) or `WeightsError`
(binary), each naming the file. Writers are atomic: a reader never sees half a file.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import TypeVar

import numpy as np
from google.protobuf import text_format
from google.protobuf.message import DecodeError, Message

from hovcaffe.caffe import caffe_pb2, wire
from hovcaffe.caffe.text_errors import explain_parse_error
from hovcaffe.errors import PrototxtError, WeightsError
from hovcaffe.utils.fileio import atomic_write_bytes, atomic_write_text

log = logging.getLogger(__name__)

M = TypeVar("M", bound=Message)


# ----------------------------------------------------------------------------- text

def parse_text(text: str, message: M, source: str = "<string>") -> M:
    """Parse prototxt `text` into `message` (cleared first), as PrototxtError on failure.

    Like Caffe (C++ TextFormat::Parse), a non-repeated field given twice is an error.

    Raises:
        PrototxtError: with file, line, column and what the parser expected.
    """
    try:
        text_format.Parse(text, message)
    except text_format.ParseError as exc:
        raise explain_parse_error(exc, text, source, type(message).__name__) from None
    return message


def _read_text(path: str | os.PathLike[str]) -> str:
    try:
        raw = Path(path).read_bytes()
    except FileNotFoundError:
        raise PrototxtError("file not found", str(path)) from None
    except IsADirectoryError:
        raise PrototxtError("is a directory, expected a prototxt file", str(path)) from None
    except OSError as exc:
        raise PrototxtError(f"cannot read: {exc.strerror or exc}", str(path)) from None
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise PrototxtError(
            f"not a text prototxt (byte {exc.start} is not UTF-8); binary .caffemodel files "
            "are read with --weights / read_caffemodel", str(path)) from None


def parse_net(text: str, source: str = "<string>", *, upgrade: bool = True) -> caffe_pb2.NetParameter:
    """Parse a net prototxt given as text; upgrade legacy forms (logged once when it happens)."""
    net = parse_text(text, caffe_pb2.NetParameter(), source)
    if upgrade:
        from hovcaffe.caffe.upgrade import upgrade_net
        upgrade_net(net, source)
    return net


def read_net(path: str | os.PathLike[str], *, upgrade: bool = True) -> caffe_pb2.NetParameter:
    """Read a text net prototxt, upgraded to the current form.

    Raises:
        PrototxtError: the file is missing, unreadable, or does not parse.
    """
    return parse_net(_read_text(path), str(path), upgrade=upgrade)


def parse_solver(text: str, source: str = "<string>", *, upgrade: bool = True
                 ) -> caffe_pb2.SolverParameter:
    """Parse a solver prototxt given as text (legacy `solver_type` upgraded to `type`)."""
    solver = parse_text(text, caffe_pb2.SolverParameter(), source)
    if upgrade:
        from hovcaffe.caffe.upgrade import upgrade_solver
        upgrade_solver(solver, source)
    return solver


def read_solver(path: str | os.PathLike[str], *, upgrade: bool = True) -> caffe_pb2.SolverParameter:
    """Read a text solver prototxt; inline nets (net_param, ...) are upgraded too.

    `snapshot_prefix` is returned as written; Caffe's defaults for it are applied by the
    solver (`hovcaffe.training.checkpoints.default_prefix`).
    """
    return parse_solver(_read_text(path), str(path), upgrade=upgrade)


def to_prototxt(message: Message) -> str:
    """The text form of `message`, as Caffe prints it (fields in number order)."""
    return text_format.MessageToString(message)


def write_prototxt(message: Message, path: str | os.PathLike[str]) -> None:
    """Write `message` as a text prototxt, atomically."""
    atomic_write_text(path, to_prototxt(message))


# ----------------------------------------------------------------------------- binary

def _read_bytes(path: str | os.PathLike[str], what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        raise WeightsError(f"{path}: {what} not found") from None
    except IsADirectoryError:
        raise WeightsError(f"{path}: is a directory, expected a {what}") from None
    except OSError as exc:
        raise WeightsError(f"{path}: cannot read {what}: {exc.strerror or exc}") from None


def parse_binary(data: bytes, message: M, source: str, what: str) -> M:
    """Parse a binary protobuf into `message`, or raise WeightsError naming `source`."""
    if data[:1] in (b"\x89",) and data[1:4] == b"HDF":
        raise WeightsError(f"{source}: this is an HDF5 file, not a binary {what} "
                           "(HDF5 snapshots are read by the .h5 loaders)")
    try:
        message.ParseFromString(data)
    except (DecodeError, RuntimeError, ValueError) as exc:
        hint = ""
        if data[:200].lstrip().startswith((b"name", b"layer", b"#", b"input", b"net")):
            hint = " (it looks like a text prototxt)"
        raise WeightsError(f"{source}: not a binary {what}{hint}: {exc}") from None
    return message


def parse_caffemodel(data: bytes, source: str = "<bytes>", *, upgrade: bool = True
                     ) -> caffe_pb2.NetParameter:
    """Parse caffemodel bytes (V0, V1 or V2 net with blobs); upgraded to V2 `layer` entries."""
    from hovcaffe.caffe.forkcompat import move_fork_fields, strip_yahoo_source_class
    moved = move_fork_fields(data)
    if moved is not None:
        log.info("%s: renumbered fork fields (SegNet / R-FCN layer parameters) to read it", source)
        data = moved
    try:
        net = parse_binary(data, caffe_pb2.NetParameter(), source, "caffemodel (NetParameter)")
    except WeightsError:
        fixed = strip_yahoo_source_class(data)
        if fixed is None:
            raise
        net = parse_binary(fixed, caffe_pb2.NetParameter(), source, "caffemodel (NetParameter)")
        log.info("%s: dropped yahoo/caffe `source_class` fields (field 141) to read it", source)
    if upgrade:
        from hovcaffe.caffe.upgrade import upgrade_net
        upgrade_net(net, source)
    return net


def read_caffemodel(path: str | os.PathLike[str], *, upgrade: bool = True) -> caffe_pb2.NetParameter:
    """Read a binary .caffemodel (any size up to protobuf's 2 GiB), upgraded to V2.

    Raises:
        WeightsError: missing file, or the bytes are not a NetParameter.
    """
    return parse_caffemodel(_read_bytes(path, "caffemodel"), str(path), upgrade=upgrade)


def write_caffemodel(net_param: caffe_pb2.NetParameter, path: str | os.PathLike[str]) -> None:
    """Write `net_param` as a binary caffemodel, atomically."""
    atomic_write_bytes(path, net_param.SerializeToString())


def read_blobproto(path: str | os.PathLike[str]) -> caffe_pb2.BlobProto:
    """Read a binary BlobProto (a `.binaryproto` mean file or an infogain matrix)."""
    return parse_binary(_read_bytes(path, "binaryproto"), caffe_pb2.BlobProto(), str(path),
                        "BlobProto (.binaryproto)")


def write_blobproto(blob: caffe_pb2.BlobProto | np.ndarray, path: str | os.PathLike[str]) -> None:
    """Write a BlobProto (or an array, converted with `array_to_blob`) atomically."""
    if isinstance(blob, np.ndarray):
        blob = array_to_blob(blob)
    atomic_write_bytes(path, blob.SerializeToString())


def read_solverstate(path: str | os.PathLike[str]) -> caffe_pb2.SolverState:
    """Read a binary .solverstate."""
    return parse_binary(_read_bytes(path, "solverstate"), caffe_pb2.SolverState(), str(path),
                        "SolverState (.solverstate)")


def write_solverstate(state: caffe_pb2.SolverState, path: str | os.PathLike[str]) -> None:
    """Write a SolverState atomically."""
    atomic_write_bytes(path, state.SerializeToString())


# ----------------------------------------------------------------------------- blobs

def blob_shape(blob: caffe_pb2.BlobProto) -> tuple[int, ...]:
    """The blob's shape: legacy (num, channels, height, width) when any of those is set,
    else `shape.dim`.

    Caffe writes a 0-axis blob (a BatchNorm scale factor, a shared PReLU slope) with no
    `shape` field at all, so "no shape information" means a scalar, as in Caffe.
    """
    if has_legacy_shape(blob):
        return (blob.num, blob.channels, blob.height, blob.width)
    return tuple(int(d) for d in blob.shape.dim)


def has_legacy_shape(blob: caffe_pb2.BlobProto) -> bool:
    """True when the blob carries the pre-2015 4-D fields (Caffe then compares 4-D shapes)."""
    return any(blob.HasField(f) for f in ("num", "channels", "height", "width"))


# BlobProto field numbers of the packed value arrays.
_DATA, _DIFF, _DOUBLE_DATA, _DOUBLE_DIFF = 5, 6, 8, 9


def _packed_values(blob: caffe_pb2.BlobProto, number: int, dtype: str) -> np.ndarray:
    """The packed array `number` of `blob`, read from its wire bytes (no Python floats)."""
    raw = blob.SerializeToString()
    parts = [np.frombuffer(raw, dtype=dtype, count=(end - payload) // np.dtype(dtype).itemsize,
                           offset=payload)
             for n, w, _, payload, end in wire.fields(raw) if n == number and w == wire.LEN]
    if not parts:
        return np.zeros(0, dtype=dtype)
    return parts[0] if len(parts) == 1 else np.concatenate(parts)


def blob_to_array(blob: caffe_pb2.BlobProto, *, diff: bool = False) -> np.ndarray:
    """A float32 copy of the blob's values (or gradients with `diff=True`), in its shape.

    `double_data` is used when present (Caffe does the same), then cast to float32.

    Raises:
        WeightsError: the number of values does not match the shape.
    """
    shape = blob_shape(blob)
    dbl_field, flt_field = (_DOUBLE_DIFF, _DIFF) if diff else (_DOUBLE_DATA, _DATA)
    if len(blob.double_diff if diff else blob.double_data):
        values = _packed_values(blob, dbl_field, "<f8")
    else:
        values = _packed_values(blob, flt_field, "<f4")
    count = int(np.prod(shape, dtype=np.int64)) if shape else 1
    if values.size != count:
        raise WeightsError(f"blob has {values.size} values but its shape {list(shape)} "
                           f"needs {count}")
    return values.astype(np.float32).reshape(shape)  # astype copies: result is writable


def array_to_blob(array: np.ndarray, blob: caffe_pb2.BlobProto | None = None, *,
                  diff: np.ndarray | None = None) -> caffe_pb2.BlobProto:
    """Store `array` into `blob` (a new one by default) as `shape` + float `data`.

    Any previous content of `blob` (legacy dims, double data) is cleared.
    """
    blob = caffe_pb2.BlobProto() if blob is None else blob
    blob.Clear()
    arr = np.asarray(array, dtype="<f4")
    blob.shape.dim.extend(int(d) for d in arr.shape)
    chunks = []
    if arr.size:
        chunks.append(wire.len_field(_DATA, arr.tobytes()))
    if diff is not None:
        d = np.asarray(diff, dtype="<f4")
        if d.shape != arr.shape:
            raise ValueError(f"diff shape {d.shape} differs from data shape {arr.shape}")
        if d.size:
            chunks.append(wire.len_field(_DIFF, d.tobytes()))
    if chunks:
        blob.MergeFromString(b"".join(chunks))
    return blob
