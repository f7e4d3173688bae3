"""Facts about the layer types whose tops enter a net from outside: one row per type.

Every question of the form "is this a data layer, is it fed by a reader, where is its source, what
is its batch size" is answered from the table below, so that the validator, the net builder, the
feeder, the distributed preflight and the Spark ML surgery agree.

A row names only what caffe.proto cannot tell: the LayerParameter field that holds the type's
settings, and whether a data feed (``hovcaffe.data.registry``) fills its tops. Which settings
that message has (``source``, ``batch_size``, a legacy ``mean_file``) is read from the proto schema.

Adding a type is one row here, plus (when ``fed``) its feed registered in ``hovcaffe/data/``
(``tests/unit/test_data_layer_types.py`` checks the table against the feed registry) and, when its
prototxt declares top shapes, a rule in ``caffe/shapes.py``. Torch-free on purpose: ``caffe/``
reads it.
"""
from __future__ import annotations

import dataclasses

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.errors import NetDefinitionError


@dataclasses.dataclass(frozen=True)
class DataLayerType:
    """One row: a layer type with no bottoms whose tops come from outside the net's computation.

    Attributes:
        name: the Caffe ``type`` string.
        param: the LayerParameter field with its settings (for SSD's AnnotatedData that is
            ``data_param``, which holds its source and batch size).
        fed: a data feed fills its tops; the net leaves them to the caller. False for the types
            that are built as ordinary layers (DummyData makes its own values, Input is given).
    """

    name: str
    param: str
    fed: bool


_ROWS = (
    DataLayerType("Data", "data_param", fed=True),
    DataLayerType("ImageData", "image_data_param", fed=True),
    DataLayerType("HDF5Data", "hdf5_data_param", fed=True),
    DataLayerType("MemoryData", "memory_data_param", fed=True),
    # Caffe accepts it; hovcaffe has no reader for its window files yet, and `make_feed` says so.
    DataLayerType("WindowData", "window_data_param", fed=True),
    DataLayerType("CoSData", "cos_data_param", fed=True),
    DataLayerType("DenseImageData", "dense_image_data_param", fed=True),   # SegNet
    DataLayerType("AnnotatedData", "data_param", fed=True),                # SSD
    DataLayerType("DummyData", "dummy_data_param", fed=False),
    DataLayerType("Input", "input_param", fed=False),
)

#: Every row by type name, in the order above.
DATA_LAYERS: dict[str, DataLayerType] = {row.name: row for row in _ROWS}
#: Types whose tops a data feed fills (the net builder treats their tops as net inputs).
FED_TYPES = frozenset(row.name for row in _ROWS if row.fed)
#: Every type in the table: the layers that start a net (data layers, DummyData, Input).
NET_INPUT_TYPES = frozenset(DATA_LAYERS)


def _has_setting(row: DataLayerType, setting: str) -> bool:
    message = pb.LayerParameter.DESCRIPTOR.fields_by_name[row.param].message_type
    return setting in message.fields_by_name


#: Types whose settings carry a batch size, in table order (for messages).
BATCHED_TYPES = tuple(row.name for row in _ROWS if _has_setting(row, "batch_size"))
#: (LayerParameter field, attribute) pairs that name files: the sources and legacy mean files.
FILE_FIELDS = tuple((row.param, setting) for row in _ROWS for setting in ("source", "mean_file")
                    if _has_setting(row, setting))


def _settings(layer: pb.LayerParameter, setting: str):
    """The layer's settings message when its type has `setting` and the prototxt sets the message."""
    row = DATA_LAYERS.get(layer.type)
    if row is None or not _has_setting(row, setting) or not layer.HasField(row.param):
        return None
    return getattr(layer, row.param)


def source_of(layer: pb.LayerParameter) -> str:
    """The source the data layer's prototxt names ("" for none, or a type without a source)."""
    settings = _settings(layer, "source")
    return settings.source if settings is not None else ""


def batch_size_of(layer: pb.LayerParameter) -> int:
    """The batch size the data layer's prototxt sets (0 when it sets none)."""
    settings = _settings(layer, "batch_size")
    return int(settings.batch_size) if settings is not None else 0


def set_batch_size(layer: pb.LayerParameter, batch_size: int) -> None:
    """Set the batch size of data layer `layer`, whatever its type.

    Raises:
        NetDefinitionError: the layer's type has no batch size.
    """
    if layer.type not in BATCHED_TYPES:
        raise NetDefinitionError(f"layer {layer.name!r} ({layer.type}) has no batch size to set; "
                                 f"a batch size applies to {', '.join(BATCHED_TYPES)} layers")
    getattr(layer, DATA_LAYERS[layer.type].param).batch_size = int(batch_size)
