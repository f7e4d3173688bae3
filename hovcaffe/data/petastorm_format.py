"""Petastorm's dataset metadata, read and written without needing petastorm.

A Petastorm dataset keeps two keys in the key-value metadata of ``_common_metadata`` (facts of the
format, petastorm 0.13):

* ``dataset-toolkit.num_row_groups_per_file.v1``: JSON ``{file name: row groups}``;
* ``dataset-toolkit.unischema.v1``: a *pickle* of ``petastorm.unischema.Unischema`` (its fields,
  each with a numpy type, a shape and a codec object holding pyspark SQL types).

Reading the pickle is the risky part: a folder can hold any pickle. :func:`read_unischema` loads it
with :func:`~hovcaffe.utils.safe_pickle.restricted_loads` and an allow-list of exactly what a
Unischema holds. The Petastorm names resolve to petastorm's classes when it imports, else to the
stand-ins below (same names and attributes), so hovcaffe reads Petastorm datasets with or without
petastorm. :func:`unischema_bytes` writes the key when petastorm imports (petastorm 0.13.1 needs
pyarrow < 16: the ``petastorm`` install profile).
"""
from __future__ import annotations

import copyreg
import functools
import importlib
import logging
import pickle
from collections import OrderedDict
from typing import Any, Callable, NamedTuple

import numpy as np

from hovcaffe.data.schema import DatasetInfo, FieldSpec
from hovcaffe.errors import DataSourceError
from hovcaffe.utils.safe_pickle import restricted_loads

log = logging.getLogger(__name__)

UNISCHEMA_KEY = b"dataset-toolkit.unischema.v1"
ROW_GROUPS_KEY = b"dataset-toolkit.num_row_groups_per_file.v1"
WHAT = "Petastorm Unischema"


# ----------------------------------------------------------------------------- stand-ins
# Same class names and instance attributes as petastorm 0.13's, so a pickle's BUILD/NEWOBJ steps
# fill them the way they fill petastorm's own classes.

class UnischemaField(NamedTuple):
    name: str
    numpy_dtype: Any
    shape: tuple
    codec: Any = None
    nullable: bool = False


class Unischema:
    def __init__(self, name: str, fields: list[UnischemaField]):
        self._name = name
        self._fields = OrderedDict((f.name, f) for f in fields)

    @property
    def fields(self) -> "OrderedDict[str, UnischemaField]":
        return self._fields


class DataframeColumnCodec:
    """Base of the codec stand-ins: they only carry what the pickle sets."""


class NdarrayCodec(DataframeColumnCodec):
    pass


class CompressedNdarrayCodec(DataframeColumnCodec):
    pass


class CompressedImageCodec(DataframeColumnCodec):
    def __init__(self, image_codec: str = "png", quality: int = 80):
        self._image_codec = "." + image_codec
        self._quality = quality

    @property
    def image_codec(self) -> str:
        return self._image_codec[1:]


class ScalarCodec(DataframeColumnCodec):
    def __init__(self, spark_type: Any):
        self._spark_type = spark_type


class SparkTypeStandIn:
    """Any ``pyspark.sql.types`` type, when pyspark is absent: keeps its constructor arguments."""

    def __init__(self, *args: Any, **kwargs: Any):
        self.args, self.kwargs = args, kwargs


_STAND_INS: dict[str, type] = {c.__name__: c for c in (
    Unischema, UnischemaField, DataframeColumnCodec, NdarrayCodec, CompressedNdarrayCodec,
    CompressedImageCodec, ScalarCodec)}
_PETASTORM_MODULES = {"petastorm.unischema": ("Unischema", "UnischemaField"),
                      "petastorm.codecs": ("DataframeColumnCodec", "NdarrayCodec",
                                           "CompressedNdarrayCodec", "CompressedImageCodec",
                                           "ScalarCodec")}
# Petastorm's older package names (petastorm maps them the same way when it reads).
_LEGACY_PACKAGES = ("av.experimental.deepdrive.dataset_toolkit", "av.ml.dataset_toolkit")
_SPARK_TYPES = ("NullType", "StringType", "CharType", "VarcharType", "BinaryType", "BooleanType",
                "DateType", "TimestampType", "TimestampNTZType", "DecimalType", "DoubleType",
                "FloatType", "ByteType", "IntegerType", "LongType", "ShortType", "ArrayType",
                "MapType", "StructField", "StructType")
# numpy scalar types a field's numpy_dtype can name; old spellings map to numpy 2's.
_NUMPY_SCALARS = ("bool_", "bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32",
                  "uint64", "float16", "float32", "float64", "longdouble", "complex64", "complex128",
                  "str_", "bytes_", "unicode_", "string_", "float_", "int_", "intc", "uintc",
                  "longlong", "ulonglong", "datetime64", "timedelta64")
_NUMPY_RENAMED = {"bool": "bool_", "unicode_": "str_", "string_": "bytes_", "float_": "float64"}


@functools.cache
def _petastorm_class(module: str, name: str) -> type:
    """petastorm's own class when petastorm imports (pyarrow < 16), else hovcaffe's stand-in."""
    try:
        return getattr(importlib.import_module(module), name)
    except Exception:  # noqa: BLE001 - ImportError, or petastorm failing on a newer pyarrow/numpy
        return _STAND_INS[name]


@functools.cache
def _spark_type(name: str) -> type:
    try:
        from pyspark.sql import types
    except ImportError:
        return SparkTypeStandIn
    return getattr(types, name, SparkTypeStandIn)


def _numpy_scalar_type(name: str) -> type:
    found = getattr(np, name, None)
    if not (isinstance(found, type) and issubclass(found, np.generic)):
        found = getattr(np, _NUMPY_RENAMED[name])
    return found


def _numpy_scalar(dtype: np.dtype, *args: Any) -> Any:
    """numpy's pickle helper for scalars (``numpy._core.multiarray.scalar``, ``numpy.core...`` before
    numpy 2), refusing dtypes that hold Python objects."""
    if not isinstance(dtype, np.dtype) or dtype.hasobject:
        raise pickle.UnpicklingError(f"numpy scalar of dtype {dtype!r} is not allowed")
    try:
        from numpy._core.multiarray import scalar
    except ImportError:
        from numpy.core.multiarray import scalar
    return scalar(dtype, *args)


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """What protocol-2 pickles use for bytes (``_codecs.encode``), for Latin-1 only."""
    if encoding.lower().replace("-", "") != "latin1":
        raise pickle.UnpicklingError(f"_codecs.encode with {encoding!r} is not allowed")
    return text.encode("latin1")


def _constant(value: Any) -> Callable[[], Any]:
    return lambda: value


@functools.cache
def allowed_globals() -> dict[str, Callable[[], Any]]:
    """Every global a Petastorm Unischema pickle may name -> what it resolves to."""
    allowed: dict[str, Callable[[], Any]] = {}
    for module, names in _PETASTORM_MODULES.items():
        for name in names:
            resolve = functools.partial(_petastorm_class, module, name)
            allowed[f"{module}.{name}"] = resolve
            for legacy in _LEGACY_PACKAGES:
                allowed[f"{legacy}.{module.split('.')[1]}.{name}"] = resolve
    for name in _SPARK_TYPES:
        allowed[f"pyspark.sql.types.{name}"] = functools.partial(_spark_type, name)
    for name in _NUMPY_SCALARS:
        allowed[f"numpy.{name}"] = functools.partial(_numpy_scalar_type, name)
    allowed["numpy.dtype"] = _constant(np.dtype)
    for module in ("numpy.core.multiarray", "numpy._core.multiarray"):
        allowed[f"{module}.scalar"] = _constant(_numpy_scalar)
    for builtins in ("builtins", "__builtin__"):  # protocol 0-2 pickles may use Python 2's names
        for name, value in (("object", object), ("tuple", tuple), ("list", list), ("dict", dict),
                            ("set", set), ("frozenset", frozenset)):
            allowed[f"{builtins}.{name}"] = _constant(value)
    for name in ("copyreg", "copy_reg"):  # protocol 0/1: rebuilds objects of the classes above
        allowed[f"{name}._reconstructor"] = _constant(copyreg._reconstructor)
    allowed["collections.OrderedDict"] = _constant(OrderedDict)
    allowed["_codecs.encode"] = _constant(_latin1_encode)
    return allowed


# ----------------------------------------------------------------------------- reading

def read_unischema(data: bytes, where: str) -> Any:
    """The Unischema pickled in `data` (petastorm's class or the stand-in); never runs other code.

    Raises:
        DataSourceError: the pickle names anything outside :func:`allowed_globals`, or holds
            something other than a Unischema; the message names `where` (the metadata file).
    """
    unischema = restricted_loads(data, allowed_globals(), where=where, what=WHAT)
    expected = _petastorm_class("petastorm.unischema", "Unischema")
    fields = getattr(unischema, "_fields", None)
    if type(unischema) is not expected or not isinstance(fields, dict):
        raise DataSourceError(f"{where}: its {WHAT} key holds a {type(unischema).__name__}, "
                              f"not a Unischema")
    field_type = _petastorm_class("petastorm.unischema", "UnischemaField")
    bad = [k for k, f in fields.items() if type(f) is not field_type]
    if bad:
        raise DataSourceError(f"{where}: {WHAT} field {bad[0]!r} is not a UnischemaField")
    return unischema


def fields_from_unischema(unischema: Any, where: str) -> list[FieldSpec]:
    """hovcaffe field descriptions of a Unischema's fields (codecs hovcaffe cannot decode are left
    out with a warning)."""
    out = []
    for uf in unischema._fields.values():
        codec = type(uf.codec).__name__ if uf.codec is not None else "ScalarCodec"
        try:
            dtype = np.dtype(uf.numpy_dtype)
            dtype_name = "str" if dtype.kind in "US" else dtype.name
            shape = tuple(None if d is None else int(d) for d in uf.shape)
            if codec == "NdarrayCodec":
                out.append(FieldSpec(uf.name, "ndarray", dtype_name, shape))
            elif codec == "CompressedImageCodec":
                chw = (1,) + shape if len(shape) == 2 else (shape[2], shape[0], shape[1])
                out.append(FieldSpec(uf.name, "image", "uint8", chw,
                                     image_format=str(uf.codec.image_codec)))
            elif codec == "ScalarCodec":
                out.append(FieldSpec(uf.name, "string" if dtype_name == "str" else "scalar",
                                     dtype_name, ()))
            else:
                log.warning("%s: field %s uses %s, which hovcaffe does not decode; ignored",
                            where, uf.name, codec)
        except (TypeError, ValueError, AttributeError, IndexError) as exc:
            raise DataSourceError(f"{where}: {WHAT} field {uf.name!r} is malformed: {exc}") from None
    return out


# ----------------------------------------------------------------------------- writing

def to_unischema(info: DatasetInfo, name: str = "hovcaffe") -> Any:
    """Petastorm Unischema describing `info`'s fields (imports petastorm and pyspark types).

    Raises:
        ImportError: petastorm (or pyspark) cannot be imported.
        ValueError: a field whose codec Petastorm has no equivalent for.
    """
    from petastorm.codecs import CompressedImageCodec as Image
    from petastorm.codecs import NdarrayCodec as Ndarray
    from petastorm.codecs import ScalarCodec as Scalar
    from petastorm.unischema import Unischema as PetastormUnischema
    from petastorm.unischema import UnischemaField as Field
    from pyspark.sql import types as T

    spark_scalars = {"int32": T.IntegerType(), "int64": T.LongType(), "float32": T.FloatType(),
                     "float64": T.DoubleType(), "uint8": T.ShortType(), "bool": T.BooleanType()}
    fields = []
    for f in info.fields:
        if f.codec == "ndarray":
            fields.append(Field(f.name, np.dtype(f.dtype).type, f.shape, Ndarray(), False))
        elif f.codec == "image":
            # Petastorm's image codec works on H×W×3 / H×W arrays.
            c, h, w = f.shape
            shape = (h, w) if c == 1 else (h, w, c)
            fields.append(Field(f.name, np.uint8, shape, Image(f.image_format or "png"), False))
        elif f.codec == "scalar":
            fields.append(Field(f.name, np.dtype(f.dtype).type, (), Scalar(spark_scalars[f.dtype]),
                                False))
        elif f.codec == "string":
            fields.append(Field(f.name, np.str_, (), Scalar(T.StringType()), False))
        else:
            raise ValueError(f"field {f.name!r}: codec {f.codec!r} has no Petastorm equivalent")
    return PetastormUnischema(name, fields)


def unischema_bytes(info: DatasetInfo, where: str) -> bytes | None:
    """The pickled Unischema for ``_common_metadata``, or None when petastorm cannot be imported
    (the default profile) or a field has no Petastorm codec."""
    try:
        return pickle.dumps(to_unischema(info))
    except ImportError as exc:
        log.info("dataset at %s gets no Petastorm Unischema (petastorm not importable: %s); "
                 "hovcaffe and petastorm.make_batch_reader read it without one", where, exc)
    except ValueError as exc:
        log.warning("dataset at %s gets no Petastorm Unischema: %s", where, exc)
    return None
