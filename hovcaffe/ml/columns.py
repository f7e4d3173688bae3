"""DataFrame columns the Caffe stages accept, checked on the driver and decoded on the executors.

Feature column kinds (one sample per row, C×H×W once decoded):

=========  ==============================================================================
binary     encoded PNG/JPEG bytes (decoded with OpenCV: BGR, Caffe's order), or raw uint8
           pixels C×H×W when the length matches and the bytes are not PNG/JPEG
image      a Spark image struct (``pyspark.ml.image.ImageSchema``: H×W×C BGR bytes)
array      ``array<number>`` of C·H·W values (float32 after decoding)
vector     a Spark ML vector (dense or sparse) of C·H·W values
=========  ==============================================================================

Labels are integer columns, or floating columns holding class indices (StringIndexer output).
"""
from __future__ import annotations

import numbers
from typing import Any, Sequence

import numpy as np
from pyspark.sql import types as T

from hovcaffe.errors import UserInputError

IMAGE_STRUCT_FIELDS = {"height", "width", "nChannels", "data"}
INTEGER_TYPES = (T.ByteType, T.ShortType, T.IntegerType, T.LongType)
FLOAT_TYPES = (T.FloatType, T.DoubleType)
FEATURE_HELP = ("binary (PNG/JPEG or raw uint8 C×H×W bytes), a Spark image struct, array<number> or a "
                "Spark ML vector")


class ColumnError(UserInputError):
    """A DataFrame column is missing, has an unsupported type, or holds values of the wrong size."""


class EmptyDataFrameError(UserInputError):
    """fit was given a DataFrame without rows."""


def _field(schema: T.StructType, column: str, role: str) -> T.StructField:
    if column not in schema.fieldNames():
        raise ColumnError(f"{role} column {column!r} is not in the DataFrame; its columns are: "
                          f"{', '.join(schema.fieldNames()) or 'none'} (set the {role}Col Param)")
    return schema[column]


def feature_kind(schema: T.StructType, column: str) -> str:
    """The kind of feature column `column` (see the module docstring).

    Raises:
        ColumnError: the column is missing or its type is not one of the accepted kinds.
    """
    from pyspark.ml.linalg import VectorUDT

    dtype = _field(schema, column, "features").dataType
    if isinstance(dtype, T.BinaryType):
        return "binary"
    if isinstance(dtype, T.StructType) and IMAGE_STRUCT_FIELDS <= set(dtype.fieldNames()):
        return "image"
    if isinstance(dtype, T.ArrayType) and isinstance(dtype.elementType, T.NumericType):
        return "array"
    if isinstance(dtype, VectorUDT):
        return "vector"
    raise ColumnError(f"features column {column!r} has type {dtype.simpleString()}; expected "
                      f"{FEATURE_HELP}")


def label_dtype(schema: T.StructType, column: str) -> str:
    """``"int32"`` for integer label columns, ``"float32"`` for floating ones.

    Raises:
        ColumnError: the column is missing or not numeric.
    """
    dtype = _field(schema, column, "label").dataType
    if isinstance(dtype, INTEGER_TYPES):
        return "int32"
    if isinstance(dtype, FLOAT_TYPES):
        return "float32"
    raise ColumnError(f"label column {column!r} has type {dtype.simpleString()}; expected an integer "
                      "column or a double holding class indices (e.g. from StringIndexer)")


# ----------------------------------------------------------------------------- executor side

def decode_feature(kind: str, value: Any, sample_shape: Sequence[int] | None,
                   color: str = "unchanged") -> np.ndarray:
    """One row's feature value as a C×H×W (or the net's sample shape) numpy array.

    Args:
        kind: from :func:`feature_kind`.
        value: the row's value.
        sample_shape: the expected per-sample shape; None accepts any image size (encoded images
            and image structs only, which carry their size).
        color: how encoded images decode: "color", "gray" or "unchanged" (transform_param's
            force_color / force_gray; otherwise taken from the expected channel count).

    Raises:
        ValueError: the value cannot be decoded or does not have `sample_shape`; the message says
            what was found and what was expected (the caller adds the column and row).
    """
    if value is None:
        raise ValueError("null value")
    if kind == "binary":
        out = _decode_binary(bytes(value), sample_shape, color)
    elif kind == "image":
        h, w, c = int(value["height"]), int(value["width"]), int(value["nChannels"])
        data = np.frombuffer(bytes(value["data"]), np.uint8)
        if data.size != h * w * c:
            raise ValueError(f"image struct holds {data.size} bytes, but height×width×nChannels = "
                             f"{h}×{w}×{c} = {h * w * c}")
        out = data.reshape(h, w, c).transpose(2, 0, 1)
    elif kind == "vector":
        out = _reshape(_vector_values(value), sample_shape)
    elif kind == "array":
        if any(v is None for v in value):
            raise ValueError("array holds null elements")
        out = _reshape(np.asarray(value, np.float32), sample_shape)
    else:
        raise ValueError(f"unknown feature kind {kind!r}")
    check_shape(out.shape, sample_shape)
    return out


def _vector_values(value: Any) -> np.ndarray:
    """A Spark ML vector as float32 values: a Vector object, or its SQL struct as Arrow gives it
    (``type`` 0 sparse with ``size``/``indices``/``values``, 1 dense with ``values``)."""
    if hasattr(value, "toArray"):
        return np.asarray(value.toArray(), np.float32)
    if value["type"] == 1:
        return np.asarray(value["values"], np.float32)
    out = np.zeros(int(value["size"]), np.float32)
    out[np.asarray(value["indices"], np.int64)] = np.asarray(value["values"], np.float32)
    return out


def decode_arrow_column(kind: str, column: Any, sample_shape: Sequence[int] | None,
                        color: str = "unchanged") -> np.ndarray:
    """A feature column of an Arrow record batch (N ≥ 1 rows) as one N × sample_shape array.

    Flat numeric arrays of the expected length are read in one go; other kinds go row by row
    through :func:`decode_feature`.

    Raises:
        ValueError: as :func:`decode_feature`, with ``row I: `` (the row's index in `column`) first.
    """
    n = len(column)
    if (kind == "array" and sample_shape is not None and column.null_count == 0
            and column.values.null_count == 0):
        size = int(np.prod(sample_shape))
        offsets = column.offsets.to_numpy()
        if np.all(np.diff(offsets) == size):
            flat = column.flatten().to_numpy(zero_copy_only=False)
            return flat.astype(np.float32, copy=False).reshape((n, *sample_shape))
    if kind == "binary" and sample_shape is not None and column.null_count == 0:
        raw = _raw_pixels(column, tuple(int(d) for d in sample_shape))
        if raw is not None:
            return raw
    images = []
    for i, value in enumerate(column.to_pylist()):
        try:
            images.append(decode_feature(kind, value, sample_shape, color))
        except ValueError as exc:
            raise ValueError(f"row {i}: {exc}") from None
    return np.stack(images)


def _raw_pixels(column: Any, sample_shape: tuple[int, ...]) -> np.ndarray | None:
    """A binary column of raw C×H×W pixels read straight from its Arrow buffers, or None.

    None (the row-by-row path decides) unless every row has exactly C·H·W bytes and none starts
    like a PNG or JPEG: those rows are what :func:`_decode_binary` would read as raw pixels, and
    reading the data buffer at once avoids a Python bytes object and an array per row.
    """
    import pyarrow as pa

    size, n = int(np.prod(sample_shape)), len(column)
    _, offsets_buffer, data = column.buffers()  # validity (no nulls here), offsets, bytes
    offset_type = np.int64 if pa.types.is_large_binary(column.type) else np.int32
    offsets = np.frombuffer(offsets_buffer, offset_type)[column.offset:column.offset + n + 1]
    if size == 0 or not np.all(np.diff(offsets) == size):
        return None
    rows = np.frombuffer(data, np.uint8)[offsets[0]:offsets[-1]].reshape(n, size)
    # the magic bytes of hovcaffe.data.codecs.image_format
    for magic in (b"\x89PNG\r\n\x1a\n", b"\xff\xd8"):
        if size >= len(magic) and np.all(rows[:, :len(magic)] == np.frombuffer(magic, np.uint8),
                                         axis=1).any():
            return None
    return rows.reshape((len(column), *sample_shape))


def _decode_binary(data: bytes, sample_shape: Sequence[int] | None, color: str) -> np.ndarray:
    from hovcaffe.data.codecs import decode_image, image_format

    if image_format(data) in ("png", "jpeg"):
        if color == "unchanged" and sample_shape and len(sample_shape) == 3:
            color = {1: "gray", 3: "color"}.get(int(sample_shape[0]), "unchanged")
        return decode_image(data, color)
    if sample_shape is None:
        raise ValueError(f"{len(data)} bytes that are neither PNG nor JPEG, and no image shape to "
                         "read them as raw pixels")
    size = int(np.prod(sample_shape))
    if len(data) != size:
        raise ValueError(f"{len(data)} bytes that are neither PNG nor JPEG nor raw pixels of shape "
                         f"{format_shape(sample_shape)} ({size} bytes)")
    return np.frombuffer(data, np.uint8).reshape(tuple(sample_shape))


def _reshape(flat: np.ndarray, sample_shape: Sequence[int] | None) -> np.ndarray:
    if sample_shape is None:
        return flat
    size = int(np.prod(sample_shape))
    if flat.size != size:
        raise ValueError(f"{flat.size} values, expected {size} (= {format_shape(sample_shape)})")
    return flat.reshape(tuple(sample_shape))


def check_shape(shape: Sequence[int], expected: Sequence[int] | None) -> None:
    """Raise ValueError when `shape` differs from `expected` (None entries match any size)."""
    if expected is None:
        return
    if len(shape) != len(expected) or any(e is not None and e != s for s, e in zip(shape, expected)):
        raise ValueError(f"shape {format_shape(shape)}, expected {format_shape(expected)}")


def format_shape(shape: Sequence[int | None]) -> str:
    return "×".join("?" if d is None else str(d) for d in shape)


def label_value(value: Any, dtype: str) -> int | float:
    """A row's label as int (int32 labels) or float; raises ValueError for nulls and fractions."""
    if value is None:
        raise ValueError("null label")
    if not isinstance(value, numbers.Real) or isinstance(value, bool):
        raise ValueError(f"label {value!r} is not a number")
    if dtype == "int32":
        return int(value)
    if not np.isfinite(value):
        raise ValueError(f"label {value!r} is not finite")
    return float(value)
