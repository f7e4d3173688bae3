"""The V0 -> V1 step of the net upgrade (Caffe's 2013-era flat layer definitions).

A V0 layer is `layers { bottom top layer { name type: "conv" num_output kernelsize ... } }`:
one flat V0LayerParameter for every layer type. This module moves each flat field into
the typed `*_param` of the V1 wrapper, maps the type string onto the V1 enum, and folds
standalone "padding" layers into the conv / pool layer that consumes them.
"""
from __future__ import annotations

import logging
from typing import Callable

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.errors import NetDefinitionError

log = logging.getLogger(__name__)

V1 = pb.V1LayerParameter

V0_TYPES: dict[str, int] = {
    "accuracy": V1.ACCURACY, "bnll": V1.BNLL, "concat": V1.CONCAT, "conv": V1.CONVOLUTION,
    "data": V1.DATA, "dropout": V1.DROPOUT, "euclidean_loss": V1.EUCLIDEAN_LOSS,
    "flatten": V1.FLATTEN, "hdf5_data": V1.HDF5_DATA, "hdf5_output": V1.HDF5_OUTPUT,
    "im2col": V1.IM2COL, "images": V1.IMAGE_DATA, "infogain_loss": V1.INFOGAIN_LOSS,
    "innerproduct": V1.INNER_PRODUCT, "lrn": V1.LRN,
    "multinomial_logistic_loss": V1.MULTINOMIAL_LOGISTIC_LOSS, "pool": V1.POOLING,
    "relu": V1.RELU, "sigmoid": V1.SIGMOID, "softmax": V1.SOFTMAX,
    "softmax_loss": V1.SOFTMAX_LOSS, "split": V1.SPLIT, "tanh": V1.TANH,
    "window_data": V1.WINDOW_DATA,
}

# V0 field -> {V0 layer type -> (V1 param message, field in it)}. A repeated target field
# (conv pad/kernel_size/stride) receives one value.
_MOVES: dict[str, dict[str, tuple[str, str]]] = {
    "num_output": {"conv": ("convolution_param", "num_output"),
                   "innerproduct": ("inner_product_param", "num_output")},
    "biasterm": {"conv": ("convolution_param", "bias_term"),
                 "innerproduct": ("inner_product_param", "bias_term")},
    "weight_filler": {"conv": ("convolution_param", "weight_filler"),
                      "innerproduct": ("inner_product_param", "weight_filler")},
    "bias_filler": {"conv": ("convolution_param", "bias_filler"),
                    "innerproduct": ("inner_product_param", "bias_filler")},
    "pad": {"conv": ("convolution_param", "pad"), "pool": ("pooling_param", "pad")},
    "kernelsize": {"conv": ("convolution_param", "kernel_size"),
                   "pool": ("pooling_param", "kernel_size")},
    "group": {"conv": ("convolution_param", "group")},
    "stride": {"conv": ("convolution_param", "stride"), "pool": ("pooling_param", "stride")},
    "pool": {"pool": ("pooling_param", "pool")},
    "dropout_ratio": {"dropout": ("dropout_param", "dropout_ratio")},
    "local_size": {"lrn": ("lrn_param", "local_size")},
    "alpha": {"lrn": ("lrn_param", "alpha")},
    "beta": {"lrn": ("lrn_param", "beta")},
    "k": {"lrn": ("lrn_param", "k")},
    "source": {"data": ("data_param", "source"), "images": ("image_data_param", "source"),
               "window_data": ("window_data_param", "source"),
               "infogain_loss": ("infogain_loss_param", "source"),
               "hdf5_data": ("hdf5_data_param", "source")},
    # The transform fields land in the data params; the next upgrade step moves them on.
    "scale": {"data": ("data_param", "scale"), "images": ("image_data_param", "scale"),
              "window_data": ("window_data_param", "scale")},
    "meanfile": {"data": ("data_param", "mean_file"),
                 "images": ("image_data_param", "mean_file"),
                 "window_data": ("window_data_param", "mean_file")},
    "batchsize": {"data": ("data_param", "batch_size"),
                  "hdf5_data": ("hdf5_data_param", "batch_size"),
                  "images": ("image_data_param", "batch_size"),
                  "window_data": ("window_data_param", "batch_size")},
    "cropsize": {"data": ("data_param", "crop_size"),
                 "images": ("image_data_param", "crop_size"),
                 "window_data": ("window_data_param", "crop_size")},
    "mirror": {"data": ("data_param", "mirror"), "images": ("image_data_param", "mirror"),
               "window_data": ("window_data_param", "mirror")},
    "rand_skip": {"data": ("data_param", "rand_skip"),
                  "images": ("image_data_param", "rand_skip")},
    "shuffle_images": {"images": ("image_data_param", "shuffle")},
    "new_height": {"images": ("image_data_param", "new_height")},
    "new_width": {"images": ("image_data_param", "new_width")},
    "concat_dim": {"concat": ("concat_param", "concat_dim")},
    "det_fg_threshold": {"window_data": ("window_data_param", "fg_threshold")},
    "det_bg_threshold": {"window_data": ("window_data_param", "bg_threshold")},
    "det_fg_fraction": {"window_data": ("window_data_param", "fg_fraction")},
    "det_context_pad": {"window_data": ("window_data_param", "context_pad")},
    "det_crop_mode": {"window_data": ("window_data_param", "crop_mode")},
    "hdf5_output_param": {"hdf5_output": ("", "hdf5_output_param")},
}

# Fields copied onto the V1 wrapper itself, whatever the type.
_DIRECT = ("name", "blobs", "blobs_lr", "weight_decay")
_IGNORED = ("type",)


def upgrade_v0_layer(v1: pb.V1LayerParameter, source: str) -> None:
    """Replace the V0 definition nested in `v1` by the equivalent V1 fields, in place."""
    v0 = v1.layer
    kind = v0.type
    if v0.HasField("name"):
        v1.name = v0.name
    if v0.HasField("type"):
        if kind not in V0_TYPES:
            log.error("%s: layer %r has unknown V0 type %r; left as NONE", source, v0.name, kind)
        v1.type = V0_TYPES.get(kind, V1.NONE)
    v1.blobs.extend(v0.blobs)
    v1.blobs_lr.extend(v0.blobs_lr)
    v1.weight_decay.extend(v0.weight_decay)
    for field, value in v0.ListFields():
        name = field.name
        if name in _DIRECT or name in _IGNORED:
            continue
        target = _MOVES.get(name, {}).get(kind)
        if target is None:
            log.error("%s: V0 field %r does not apply to layer %r of type %r; dropped",
                      source, name, v0.name, kind)
            continue
        _assign(v1, target, value, field)
    v1.ClearField("layer")


def _assign(v1: pb.V1LayerParameter, target: tuple[str, str], value: object, field) -> None:
    owner_name, attr = target
    owner = getattr(v1, owner_name) if owner_name else v1
    dest = owner.DESCRIPTOR.fields_by_name[attr]
    if dest.message_type is not None:
        getattr(owner, attr).CopyFrom(value)
    elif _is_repeated(dest):
        getattr(owner, attr).append(value)
    elif dest.enum_type is not None and field.enum_type is not None:
        setattr(owner, attr, dest.enum_type.values_by_name[field.enum_type.values_by_number[value].name].number)
    else:
        setattr(owner, attr, value)


def _is_repeated(field) -> bool:
    # `is_repeated` exists on newer protobuf runtimes; `label` on older ones.
    flag: Callable[[], bool] | bool | None = getattr(field, "is_repeated", None)
    if flag is not None:
        return bool(flag)
    return field.label == field.LABEL_REPEATED


def fold_padding_layers(net: pb.NetParameter, source: str) -> None:
    """Drop V0 "padding" layers, giving their pad to the conv / pool that reads their top."""
    producer: dict[str, int] = {name: -1 for name in net.input}
    layers = list(net.layers)
    kept: list[pb.V1LayerParameter] = []
    for i, wrapper in enumerate(layers):
        kind = wrapper.layer.type
        new = pb.V1LayerParameter()
        new.CopyFrom(wrapper)
        for j, bottom in enumerate(wrapper.bottom):
            if bottom not in producer:
                raise NetDefinitionError(
                    f"{source}: unknown bottom blob {bottom!r} (V0 layer "
                    f"{wrapper.layer.name!r}, bottom index {j})")
            src = producer[bottom]
            if src < 0 or layers[src].layer.type != "padding":
                continue
            pad_layer = layers[src]
            if kind not in ("conv", "pool") or len(wrapper.bottom) != 1:
                raise NetDefinitionError(
                    f"{source}: V0 padding layer {pad_layer.layer.name!r} feeds layer "
                    f"{wrapper.layer.name!r} of type {kind!r}; only a single-input conv or "
                    "pool can absorb a padding layer")
            if len(pad_layer.bottom) != 1 or len(pad_layer.top) != 1:
                raise NetDefinitionError(
                    f"{source}: V0 padding layer {pad_layer.layer.name!r} must have one "
                    "bottom and one top")
            new.layer.pad = pad_layer.layer.pad
            new.bottom[j] = pad_layer.bottom[0]
        if kind != "padding":
            kept.append(new)
        for top in wrapper.top:
            producer[top] = i
    net.ClearField("layers")
    net.layers.extend(kept)
