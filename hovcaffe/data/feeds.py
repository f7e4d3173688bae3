"""Feeds for Caffe's dataset layers: Data, ImageData, MemoryData and CoSData (CaffeOnSpark).

Each registered factory turns a ``LayerParameter`` into a :class:`~hovcaffe.data.reader.BatchIterator`
over a Parquet dataset, keeping Caffe's meaning of the layer:

* ``Data``: ``data_param.source`` is an LMDB (converted on first use, see
  :mod:`hovcaffe.data.resolve`) or a Parquet dataset URL. Records are read in stored order, not
  shuffled (Caffe reads LMDB sequentially); ranks take records i ≡ rank (mod ranks).
* ``ImageData``: the list file is converted on first use with its ``root_folder``,
  ``new_height``/``new_width`` and ``is_color``; ``shuffle: true`` shuffles in TRAIN.
* ``MemoryData`` with CaffeOnSpark's ``source_class``: ``com.yahoo.ml.caffe.LMDB`` (an LMDB in
  ``memory_data_param.source``) or ``com.yahoo.ml.caffe.ImageDataFrame`` (a Parquet DataFrame with
  ``data`` bytes and a ``label``, optional ``channels``/``height``/``width``/``encoded`` columns).
* ``CoSData`` (``com.yahoo.ml.caffe.DataFrameSource``): a DataFrame with one column per declared
  top, each top with its own type, shape and transform_param.

The source given in the FeedContext (CLI ``-input``, ``--train-data``, ``--test-data``) replaces
the layer's own. ``transform_param`` is applied as Caffe's DataTransformer does
(:mod:`hovcaffe.data.transform`). Labels and all other tops come out as float32 tensors, like
Caffe's blobs. Reader tuning through the environment: ``HOVCAFFE_READER_WORKERS``,
``HOVCAFFE_READER_PREFETCH``, ``HOVCAFFE_SHARD`` (``rows`` | ``row_groups``, see
:mod:`hovcaffe.data.order`).
"""
from __future__ import annotations

import logging
import os
import re
from typing import Any, Callable

import torch

from hovcaffe.data import reader as reader_mod
from hovcaffe.data.dataset import open_dataset
from hovcaffe.data.registry import FeedContext, register_feed
from hovcaffe.data.resolve import dataset_url
from hovcaffe.data.schema import FieldSpec
from hovcaffe.data.transform import TransformSpec
from hovcaffe.errors import DataSourceError, NetDefinitionError, UnsupportedLayerError

log = logging.getLogger(__name__)

LMDB_CLASS = "com.yahoo.ml.caffe.LMDB"
IMAGE_DATAFRAME_CLASS = "com.yahoo.ml.caffe.ImageDataFrame"
DATAFRAME_CLASS = "com.yahoo.ml.caffe.DataFrameSource"
SEQUENCE_CLASS = "com.yahoo.ml.caffe.SeqImageDataSource"


def reader_settings() -> dict[str, Any]:
    """Reader tuning from the environment (defaults: :mod:`hovcaffe.data.reader`'s)."""
    out: dict[str, Any] = {}
    for key, env in (("workers", "HOVCAFFE_READER_WORKERS"), ("prefetch", "HOVCAFFE_READER_PREFETCH")):
        if os.environ.get(env):
            out[key] = int(os.environ[env])
    if os.environ.get("HOVCAFFE_SHARD"):
        out["shard"] = os.environ["HOVCAFFE_SHARD"]
    return out


def _transform(param, ctx: FeedContext, has: bool = True) -> TransformSpec | None:
    return TransformSpec.from_proto(param, ctx.base_dir) if has else None


def _batch_size(layer, value: int) -> int:
    if value <= 0:
        raise NetDefinitionError(f"data layer {layer.name!r} ({layer.type}) needs a positive batch_size")
    return int(value)


def _iterator(url: str, layer, ctx: FeedContext, *, batch_size: int, transform=None, shuffle: bool = False,
              **kwargs: Any) -> reader_mod.BatchIterator:
    settings = {**reader_settings(), **kwargs}
    return reader_mod.make_batch_iterator(
        url, rank=ctx.rank, world_size=ctx.world_size, phase=ctx.phase, batch_size=batch_size,
        tops=list(layer.top), seed=ctx.seed, transform=transform, shuffle=shuffle, **settings)


def _warn_rand_skip(layer, value: int) -> None:
    if value:
        log.warning("data layer %r: rand_skip %d is ignored (ranks shard the data instead)", layer.name, value)


# ----------------------------------------------------------------------------- Caffe layers

@register_feed("Data")
def make_data_feed(layer, ctx: FeedContext):
    """Feed for a Caffe ``Data`` layer (LMDB or Parquet source)."""
    p = layer.data_param
    _warn_rand_skip(layer, p.rand_skip)
    tp = _transform(layer.transform_param, ctx, layer.HasField("transform_param"))
    url = dataset_url(ctx.source_override or p.source, base_dir=ctx.base_dir, layer_name=layer.name,
                      expect="lmdb")
    return _iterator(url, layer, ctx, batch_size=_batch_size(layer, p.batch_size), transform=tp,
                     color=tp.color if tp else None)


@register_feed("ImageData")
def make_image_data_feed(layer, ctx: FeedContext):
    """Feed for a Caffe ``ImageData`` layer (list file or Parquet source)."""
    p = layer.image_data_param
    _warn_rand_skip(layer, p.rand_skip)
    tp = _transform(layer.transform_param, ctx, layer.HasField("transform_param"))
    url = dataset_url(ctx.source_override or p.source, base_dir=ctx.base_dir, layer_name=layer.name,
                      expect="imagelist", root_folder=p.root_folder, new_height=p.new_height,
                      new_width=p.new_width, is_color=p.is_color)
    return _iterator(url, layer, ctx, batch_size=_batch_size(layer, p.batch_size), transform=tp,
                     shuffle=p.shuffle)


@register_feed("MemoryData")
def make_memory_data_feed(layer, ctx: FeedContext):
    """Feed for a ``MemoryData`` layer whose data CaffeOnSpark's ``source_class`` names."""
    p = layer.memory_data_param
    batch = _batch_size(layer, p.batch_size)
    tp = _transform(layer.transform_param, ctx, layer.HasField("transform_param"))
    source = ctx.source_override or p.source
    cls = layer.source_class
    if not source:
        raise DataSourceError(f"MemoryData layer {layer.name!r} has no source: plain Caffe pushes its data "
                              f"from the calling program; give it CaffeOnSpark's source_class and "
                              f"memory_data_param.source, or pass a dataset URL (--train-data/--test-data)")
    if cls in ("", LMDB_CLASS) or ctx.source_override:
        url = dataset_url(source, base_dir=ctx.base_dir, layer_name=layer.name, expect="lmdb")
        return _iterator(url, layer, ctx, batch_size=batch, transform=tp, color=tp.color if tp else None)
    if cls == IMAGE_DATAFRAME_CLASS:
        _check_format(layer, p.dataframe_format)
        fields, renames = _image_dataframe_fields(layer, source, ctx)
        tops = {layer.top[0]: renames.get("data", "data")}
        if len(layer.top) > 1:
            tops[layer.top[1]] = renames.get("label", "label")
        it = reader_mod.make_batch_iterator(
            source, base_dir=ctx.base_dir, fields=fields, rank=ctx.rank, world_size=ctx.world_size,
            phase=ctx.phase, batch_size=batch, tops=tops, seed=ctx.seed, transform=tp, shuffle=False,
            **reader_settings())
        return it
    return _unsupported_class(layer, cls, (LMDB_CLASS, IMAGE_DATAFRAME_CLASS))


@register_feed("CoSData")
def make_cos_data_feed(layer, ctx: FeedContext):
    """Feed for CaffeOnSpark's ``CoSData`` layer: one DataFrame column per declared top."""
    p = layer.cos_data_param
    cls = layer.source_class
    if cls not in ("", DATAFRAME_CLASS):
        return _unsupported_class(layer, cls, (DATAFRAME_CLASS,))
    _check_format(layer, p.dataframe_format)
    source = ctx.source_override or p.source
    if not source:
        raise DataSourceError(f"CoSData layer {layer.name!r} has no cos_data_param.source")
    renames = _renames(layer, p.dataframe_column_select)
    fields, tops, transforms, shapes, transposed = [], {}, {}, {}, []
    for top in p.top:
        column = renames.get(top.name, top.name)
        fields.append(_cos_field(layer, top, column))
        tops[top.name] = column
        if top.HasField("transform_param"):
            transforms[top.name] = TransformSpec.from_proto(top.transform_param, ctx.base_dir)
        full = (top.out_channels or top.channels, top.out_height or top.height, top.out_width or top.width)
        if top.type not in _IMAGE_TYPES:
            shapes[top.name] = full[: top.sample_num_axes]
        if top.transpose:
            transposed.append(top.name)
    missing = [t for t in layer.top if t not in tops]
    if missing:
        raise NetDefinitionError(f"CoSData layer {layer.name!r}: tops {missing} have no cos_data_param.top entry")
    it = reader_mod.make_batch_iterator(
        source, base_dir=ctx.base_dir, fields=fields, rank=ctx.rank, world_size=ctx.world_size,
        phase=ctx.phase, batch_size=_batch_size(layer, p.batch_size), tops=tops, seed=ctx.seed,
        transform=transforms or None, shuffle=False, top_shapes=shapes, **reader_settings())
    if transposed:
        def transpose(batch):
            return {k: (v.t().contiguous() if k in transposed else v) for k, v in batch.items()}
        return MappedFeed(it, transpose)
    return it


# ----------------------------------------------------------------------------- CaffeOnSpark helpers

_IMAGE_TYPES = (5, 6, 7)  # RAW_IMAGE, ENCODED_IMAGE, ENCODED_IMAGE_WITH_DIM


def _cos_field(layer, top, column: str) -> FieldSpec:
    t = top.type
    shape = (top.channels, top.height, top.width)
    if t == 0:   # STRING: numbers written as text
        return FieldSpec(column, "string", "float32", ())
    if t in (1, 2):  # INT, FLOAT
        return FieldSpec(column, "scalar", "float32", ())
    if t in (3, 4):  # INT_ARRAY, FLOAT_ARRAY
        return FieldSpec(column, "list", "float32", (top.channels * top.height * top.width,))
    if t == 5:   # RAW_IMAGE
        return FieldSpec(column, "rawbytes", "uint8", shape)
    if t == 6:   # ENCODED_IMAGE: decoded like CaffeOnSpark, by the declared channel count
        color = {1: "gray", 3: "color"}.get(top.channels, "unchanged")
        return FieldSpec(column, "image", "uint8", (top.channels, None, None), color=color)
    raise UnsupportedLayerError(f"CoSData layer {layer.name!r}: top {top.name!r} has type "
                                f"ENCODED_IMAGE_WITH_DIM, which hovcaffe does not read; store the image "
                                f"bytes in a binary column and declare it ENCODED_IMAGE")


def _image_dataframe_fields(layer, source: str, ctx: FeedContext) -> tuple[list[FieldSpec], dict[str, str]]:
    """Fields of a CaffeOnSpark ImageDataFrame (label string/number, data raw or encoded bytes)."""
    p = layer.memory_data_param
    renames = _renames(layer, p.dataframe_column_select)
    data_col, label_col = renames.get("data", "data"), renames.get("label", "label")
    ds = open_dataset(source, ctx.base_dir)
    present = {f.name: f for f in ds.info.fields}
    for col in (data_col,) + ((label_col,) if len(layer.top) > 1 else ()):
        if col not in present:
            raise DataSourceError(f"{source}: the ImageDataFrame has no {col!r} column "
                                  f"(columns: {', '.join(sorted(present))})")
    encoded = p.image_encoded
    if "encoded" in present:
        first = ds.read_group(0, ["encoded"]).column("encoded")
        encoded = bool(first[0].as_py()) if len(first) else encoded
    shape = (p.channels, p.height, p.width)
    if encoded:
        color = {1: "gray", 3: "color"}.get(p.channels, "unchanged")
        data = FieldSpec(data_col, "image", "uint8", (p.channels or None, None, None), color=color)
    else:
        if not all(shape):
            raise DataSourceError(f"MemoryData layer {layer.name!r}: raw ImageDataFrame bytes need "
                                  f"memory_data_param channels, height and width")
        data = FieldSpec(data_col, "rawbytes", "uint8", shape)
    fields = [data]
    if label_col in present and present[label_col].codec == "string":
        fields.append(FieldSpec(label_col, "string", "float32", ()))
    return fields, renames


_SELECT = re.compile(r"^\s*(\w+)\s+as\s+(\w+)\s*$", re.IGNORECASE)


def _renames(layer, select: str) -> dict[str, str]:
    """{alias: column} from ``dataframe_column_select`` entries of the form ``column as alias``."""
    out = {}
    for part in filter(str.strip, (select or "").split(",")):
        m = _SELECT.match(part)
        if not m:
            raise DataSourceError(f"data layer {layer.name!r}: dataframe_column_select {part.strip()!r} is "
                                  f"not 'column as alias'; hovcaffe reads columns without Spark SQL, so "
                                  f"write the DataFrame with the columns already computed")
        out[m.group(2)] = m.group(1)
    return out


def _check_format(layer, fmt: str) -> None:
    if fmt and fmt.lower() != "parquet":
        raise DataSourceError(f"data layer {layer.name!r}: dataframe_format {fmt!r} is not supported; "
                              f"hovcaffe reads Parquet DataFrames (write it with df.write.parquet)")


def _unsupported_class(layer, cls: str, supported: tuple[str, ...]):
    hint = (" (Hadoop SequenceFiles cannot be read without a JVM; convert them to a DataFrame with "
            "CaffeOnSpark's Binary2DataFrame or to LMDB)") if cls == SEQUENCE_CLASS else ""
    raise UnsupportedLayerError(f"{layer.type} layer {layer.name!r}: source_class {cls!r} is not supported"
                                f"{hint}; supported: {', '.join(supported)}")


class MappedFeed:
    """A feed whose batches pass through `fn` (CoSData's transposed tops)."""

    def __init__(self, inner, fn: Callable[[dict[str, torch.Tensor]], dict[str, torch.Tensor]]):
        self.inner, self.fn = inner, fn

    def __iter__(self):
        return self

    def __next__(self):
        return self.fn(next(self.inner))

    def __len__(self) -> int:
        return len(self.inner)

    def shapes(self) -> dict[str, tuple[int, ...]]:
        state = self.inner.state_dict()
        batch = next(self)
        self.inner.load_state_dict(state)
        return {k: tuple(v.shape) for k, v in batch.items()}

    def __getattr__(self, name: str):
        return getattr(self.inner, name)

    def state_dict(self):
        return self.inner.state_dict()

    def load_state_dict(self, state) -> None:
        self.inner.load_state_dict(state)
