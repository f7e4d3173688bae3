"""Encoding rows for Parquet (converters) and decoding whole Arrow columns (readers).

Decoding works on a column of many rows at once: an ``ndarray`` column whose rows all have the
same ``numpy.save`` header is one ``numpy`` view with the headers sliced off (no per-row Python),
which is what makes raw images cheap to read. Encoded images are decoded row by row with OpenCV
(which releases the GIL, so reader threads decode in parallel).
"""
from __future__ import annotations

import io
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from hovcaffe.data.schema import FieldSpec
from hovcaffe.errors import DataSourceError

_NPY_HEADERS: dict[tuple[str, tuple[int, ...]], bytes] = {}


def npy_header(dtype: np.dtype, shape: tuple[int, ...]) -> bytes:
    """The ``numpy.save`` header (format 1.0, C order) for arrays of `dtype` and `shape`."""
    key = (np.dtype(dtype).str, tuple(shape))
    header = _NPY_HEADERS.get(key)
    if header is None:
        buf = io.BytesIO()
        np.lib.format.write_array_header_1_0(
            buf, {"descr": key[0], "fortran_order": False, "shape": key[1]})
        header = _NPY_HEADERS[key] = buf.getvalue()
    return header


def encode_ndarray(value: np.ndarray) -> bytes:
    """Bytes equal to ``numpy.save(value)`` (what Petastorm's NdarrayCodec stores)."""
    value = np.ascontiguousarray(value)
    return npy_header(value.dtype, value.shape) + value.tobytes()


def encode_png(chw: np.ndarray) -> bytes:
    """Lossless PNG of a C×H×W uint8 image (channels kept in their stored order, i.e. BGR)."""
    import cv2

    img = chw[0] if chw.shape[0] == 1 else np.ascontiguousarray(chw.transpose(1, 2, 0))
    ok, buf = cv2.imencode(".png", img)
    if not ok:
        raise ValueError(f"OpenCV could not PNG-encode an image of shape {chw.shape}")
    return buf.tobytes()


_IMREAD = {"color": 1, "gray": 0, "unchanged": -1}  # cv2.IMREAD_COLOR / GRAYSCALE / UNCHANGED


def decode_image(data: bytes | memoryview, color: str = "unchanged") -> np.ndarray:
    """Decode PNG/JPEG bytes with OpenCV into a C×H×W uint8 array (BGR for colour).

    Raises:
        ValueError: the bytes are not an image OpenCV can decode.
    """
    import cv2

    img = cv2.imdecode(np.frombuffer(data, np.uint8), _IMREAD[color])
    if img is None:
        raise ValueError("not a decodable image (corrupt or unsupported format)")
    if img.ndim == 2:
        return img[None]
    return img.transpose(2, 0, 1)  # "unchanged" keeps an alpha channel, as Caffe's native decode does


def image_format(data: bytes) -> str:
    """``"png"``, ``"jpeg"`` or ``"other"`` from the magic bytes."""
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:2] == b"\xff\xd8":
        return "jpeg"
    return "other"


# ----------------------------------------------------------------------------- column decoding

ColumnDecoder = Callable[[pa.Array, FieldSpec, np.ndarray, str | None], "np.ndarray | list"]
_DECODERS: dict[str, ColumnDecoder] = {}


def _decoder(codec: str):
    def deco(fn):
        _DECODERS[codec] = fn
        return fn
    return deco


def decode_column(column: pa.Array | pa.ChunkedArray, spec: FieldSpec, rows: np.ndarray,
                  color: str | None = None):
    """Decode rows `rows` (indices, in the wanted order) of an Arrow column.

    Args:
        column: the column of one row group (or several concatenated).
        spec: the field's description.
        rows: int64 row indices into `column`.
        color: image codec only: override of ``spec.color`` (transform_param force_color/force_gray).

    Returns:
        An array ``(len(rows), *shape)``, or a list of per-row arrays when row shapes differ.
    """
    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    decoder = _DECODERS.get(spec.codec)
    if decoder is None:
        raise DataSourceError(f"field {spec.name!r}: no decoder for codec {spec.codec!r}")
    return decoder(column, spec, np.asarray(rows, dtype=np.int64), color)


def _binary_values(column: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(offsets, data) numpy views of a binary/string Arrow array (no copies)."""
    if column.null_count:
        raise DataSourceError(f"column has {column.null_count} null value(s); every row needs data")
    large = pa.types.is_large_binary(column.type) or pa.types.is_large_string(column.type)
    _, off_buf, data_buf = column.buffers()
    offsets = np.frombuffer(off_buf, np.int64 if large else np.int32)[column.offset:
                                                                      column.offset + len(column) + 1]
    data = np.frombuffer(data_buf, np.uint8) if data_buf is not None else np.zeros(0, np.uint8)
    return offsets.astype(np.int64, copy=False), data


def _uniform_rows(column: pa.Array) -> tuple[np.ndarray, int] | None:
    """A (n, L) uint8 view of the values when every row has the same byte length L, else None."""
    offsets, data = _binary_values(column)
    n = len(offsets) - 1
    if n == 0:
        return None
    lengths = np.diff(offsets)
    width = int(lengths[0])
    if width == 0 or not np.all(lengths == width):
        return None
    return data[offsets[0]:offsets[0] + n * width].reshape(n, width), width


@_decoder("ndarray")
def _decode_ndarray(column, spec, rows, color):
    uniform = _uniform_rows(column)
    if uniform is not None:
        view, width = uniform
        parsed = _parse_npy_header(bytes(view[0, :min(width, 4096)]))
        if parsed is not None:
            hlen, shape, dtype = parsed
            if hlen + int(np.prod(shape)) * dtype.itemsize == width and np.all(view[:, :hlen] == view[0, :hlen]):
                out = np.ascontiguousarray(view[rows, hlen:]).view(dtype)
                return out.reshape((len(rows),) + tuple(shape))
    values = column.to_pylist()
    return _stack_if_uniform([np.load(io.BytesIO(values[i]), allow_pickle=False) for i in rows])


def _parse_npy_header(head: bytes) -> tuple[int, tuple[int, ...], np.dtype] | None:
    """(header length, shape, dtype) of a C-order ``numpy.save`` blob, or None if it is not one."""
    buf = io.BytesIO(head)
    try:
        version = np.lib.format.read_magic(buf)
        read = {(1, 0): np.lib.format.read_array_header_1_0,
                (2, 0): np.lib.format.read_array_header_2_0}[version]
        shape, fortran, dtype = read(buf)
    except (ValueError, EOFError, KeyError):
        return None
    if fortran or dtype.hasobject:
        return None
    return buf.tell(), tuple(shape), dtype


@_decoder("rawbytes")
def _decode_rawbytes(column, spec, rows, color):
    if not spec.fixed_shape:
        raise DataSourceError(f"field {spec.name!r}: raw image bytes need a fixed shape, got {spec.shape}")
    size = int(np.prod(spec.shape))
    uniform = _uniform_rows(column)
    if uniform is None or uniform[1] != size:
        lengths = np.diff(_binary_values(column)[0])
        bad = int(np.flatnonzero(lengths != size)[0])
        raise DataSourceError(f"field {spec.name!r}: row {bad} has {int(lengths[bad])} bytes, expected "
                              f"{size} for shape {spec.shape}")
    return np.ascontiguousarray(uniform[0][rows]).reshape((len(rows),) + spec.shape)


@_decoder("image")
def _decode_image_column(column, spec, rows, color):
    offsets, data = _binary_values(column)
    flag = color or spec.color
    arrays = []
    for i in rows:
        try:
            arrays.append(decode_image(data[offsets[i]:offsets[i + 1]], flag))
        except ValueError as exc:
            raise DataSourceError(f"field {spec.name!r}: row {int(i)}: {exc}") from None
    return _stack_if_uniform(arrays)


@_decoder("scalar")
def _decode_scalar(column, spec, rows, color):
    return column.to_numpy(zero_copy_only=False)[rows].astype(spec.dtype, copy=False)


@_decoder("string")
def _decode_string(column, spec, rows, color):
    values = column.to_numpy(zero_copy_only=False)[rows]
    if spec.dtype == "str":
        return values
    try:  # CaffeOnSpark STRING tops: numbers written as text
        return np.asarray([float(v) for v in values], dtype=spec.dtype)
    except (TypeError, ValueError) as exc:
        raise DataSourceError(f"field {spec.name!r}: expected numbers written as strings: {exc}") from None


@_decoder("list")
def _decode_list(column, spec, rows, color):
    if column.null_count:
        raise DataSourceError(f"field {spec.name!r}: {column.null_count} null list(s)")
    lengths = np.diff(column.offsets.to_numpy())
    values = column.flatten().to_numpy(zero_copy_only=False).astype(spec.dtype, copy=False)
    if len(lengths) and np.all(lengths == lengths[0]):
        return values.reshape(len(lengths), -1)[rows].reshape((len(rows),) + spec.shape)
    starts = column.offsets.to_numpy()
    return [values[starts[i]:starts[i + 1]] for i in rows]


def _stack_if_uniform(arrays: Sequence[np.ndarray]):
    if arrays and all(a.shape == arrays[0].shape for a in arrays):
        return np.stack(arrays)
    return list(arrays)
