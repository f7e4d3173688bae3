"""Feature columns as mapInArrow hands them to transform: Arrow arrays decoded per batch, checked
against hand-built pixel arrays (no Spark needed: the arrays are what Spark sends)."""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from hovcaffe.ml.columns import decode_arrow_column
from hovcaffe.ml.inference import _dense_vectors, _float_lists, _shift_row

SHAPE = (1, 2, 3)


def test_flat_arrays_are_read_in_one_go():
    rows = np.arange(12, dtype=np.float64).reshape(2, 6)
    got = decode_arrow_column("array", pa.array(rows.tolist(), pa.list_(pa.float64())), SHAPE)
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, rows.reshape(2, *SHAPE).astype(np.float32))


def test_arrays_of_the_wrong_length_name_the_row():
    column = pa.array([[0.0] * 6, [1.0] * 5], pa.list_(pa.float64()))
    with pytest.raises(ValueError, match=r"^row 1: 5 values, expected 6 \(= 1×2×3\)$"):
        decode_arrow_column("array", column, SHAPE)


def test_vector_structs_dense_and_sparse():
    vtype = pa.struct([("type", pa.int8()), ("size", pa.int32()), ("indices", pa.list_(pa.int32())),
                       ("values", pa.list_(pa.float64()))])
    column = pa.array([{"type": 1, "size": None, "indices": None, "values": [1, 2, 3, 4, 5, 6]},
                       {"type": 0, "size": 6, "indices": [0, 5], "values": [7, 8]}], vtype)
    got = decode_arrow_column("vector", column, SHAPE)
    np.testing.assert_array_equal(got[0].ravel(), [1, 2, 3, 4, 5, 6])
    np.testing.assert_array_equal(got[1].ravel(), [7, 0, 0, 0, 0, 8])


def test_raw_binary_rows():
    pixels = np.array([[[9, 8, 7], [6, 5, 4]]], np.uint8)
    got = decode_arrow_column("binary", pa.array([pixels.tobytes()] * 3, pa.binary()), SHAPE)
    assert got.shape == (3, *SHAPE) and got.dtype == np.uint8
    np.testing.assert_array_equal(got[2], pixels)


def test_output_columns_have_spark_ml_layouts():
    probs = np.array([[0.25, 0.75], [1.0, 0.0]])
    vectors = _dense_vectors(probs).to_pylist()
    assert vectors == [{"type": 1, "size": None, "indices": None, "values": [0.25, 0.75]},
                       {"type": 1, "size": None, "indices": None, "values": [1.0, 0.0]}]
    assert _float_lists(np.array([[1.5, 2.5, 3.5]])).to_pylist() == [[1.5, 2.5, 3.5]]


def test_row_numbers_count_from_the_start_of_the_partition():
    assert _shift_row("row 3: null value", 100) == "row 103 of this partition: null value"
