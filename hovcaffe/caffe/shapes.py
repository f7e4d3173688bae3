"""Top shapes that a data / Input layer declares in the prototxt itself.

Caffe's data layers learn their shapes from the first record they read; much of that is
also written in the prototxt (batch size, crop size, MemoryData dims, CoSData tops, ...).
`declared_top_shapes` returns what can be known without touching any data, with None for
a top whose shape depends on the data (an LMDB's image size, an HDF5 file's datasets).
"""
from __future__ import annotations

from typing import Callable, Optional

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe.data_layer_types import DATA_LAYERS

Shape = tuple[int, ...]
_Rule = Callable[[pb.LayerParameter], list[Optional[Shape]]]
_RULES: dict[str, _Rule] = {}


def _rule(*types: str) -> Callable[[_Rule], _Rule]:
    def deco(fn: _Rule) -> _Rule:
        for t in types:
            _RULES[t] = fn
        return fn
    return deco


def declared_top_shapes(layer: pb.LayerParameter) -> list[Optional[Shape]] | None:
    """One entry per top (None where the data decides), or None for non-data layer types."""
    if layer.type not in DATA_LAYERS:
        return None
    rule = _RULES.get(layer.type)
    if rule is None:  # a data layer type whose prototxt declares no shapes
        return [None] * len(layer.top)
    shapes = rule(layer)
    shapes = (shapes + [None] * len(layer.top))[: len(layer.top)]
    return shapes


def _with_label(layer: pb.LayerParameter, data: Optional[Shape], batch: int) -> list[Optional[Shape]]:
    # Caffe's image data layers give a (batch,) label as their second top.
    return [data, (batch,)] if len(layer.top) > 1 else [data]


@_rule("Input")
def _input(layer: pb.LayerParameter) -> list[Optional[Shape]]:
    shapes = [tuple(int(d) for d in s.dim) for s in layer.input_param.shape]
    if len(shapes) == 1:
        return shapes * len(layer.top)
    return list(shapes) if shapes else [None] * len(layer.top)


@_rule("DummyData")
def _dummy(layer: pb.LayerParameter) -> list[Optional[Shape]]:
    p = layer.dummy_data_param
    if len(p.shape):
        shapes = [tuple(int(d) for d in s.dim) for s in p.shape]
    else:
        shapes = [tuple(int(v) for v in dims)
                  for dims in zip(p.num, p.channels, p.height, p.width)]
    if len(shapes) == 1:
        return shapes * len(layer.top)
    return shapes


@_rule("MemoryData")
def _memory(layer: pb.LayerParameter) -> list[Optional[Shape]]:
    p = layer.memory_data_param
    n = p.batch_size
    return _with_label(layer, (n, p.channels, p.height, p.width), n)


@_rule("WindowData")
def _window(layer: pb.LayerParameter) -> list[Optional[Shape]]:
    p = layer.window_data_param
    crop = layer.transform_param.crop_size or p.crop_size
    n = p.batch_size
    return _with_label(layer, (n, 3, crop, crop) if crop else None, n)


@_rule("ImageData")
def _image(layer: pb.LayerParameter) -> list[Optional[Shape]]:
    p = layer.image_data_param
    channels = 3 if p.is_color else 1
    crop = layer.transform_param.crop_size
    data: Optional[Shape] = None
    if crop:
        data = (p.batch_size, channels, crop, crop)
    elif p.new_height and p.new_width:
        data = (p.batch_size, channels, p.new_height, p.new_width)
    return _with_label(layer, data, p.batch_size)


@_rule("DenseImageData")
def _dense_image(layer: pb.LayerParameter) -> list[Optional[Shape]]:
    # SegNet: image (N, C, H, W) and label image (N, 1, H, W), cropped or resized as declared.
    p = layer.dense_image_data_param
    hw = (p.crop_height, p.crop_width) if p.crop_height and p.crop_width else \
        (p.new_height, p.new_width) if p.new_height and p.new_width else None
    if hw is None:
        return [None, None]
    return [(p.batch_size, 3 if p.is_color else 1, *hw), (p.batch_size, 1, *hw)]


@_rule("AnnotatedData")
def _annotated(layer: pb.LayerParameter) -> list[Optional[Shape]]:
    # SSD: colour images at the resize_param size; the ground-truth rows vary per batch.
    rp = layer.transform_param.resize_param
    hw = (rp.height, rp.width) if rp.height and rp.width else None
    return [(layer.data_param.batch_size, 3, *hw) if hw else None, None]


@_rule("Data")
def _data(layer: pb.LayerParameter) -> list[Optional[Shape]]:
    # Channels come from the stored Datum: unknown without the database.
    return _with_label(layer, None, layer.data_param.batch_size)


@_rule("CoSData")
def _cos(layer: pb.LayerParameter) -> list[Optional[Shape]]:
    p = layer.cos_data_param
    n = p.batch_size
    out: list[Optional[Shape]] = []
    for top in p.top:
        full = (top.out_channels or top.channels, top.out_height or top.height,
                top.out_width or top.width)
        sample = full[: top.sample_num_axes]
        out.append((sample[0], n) if top.transpose else (n, *sample))
    return out
