"""Net surgery for inference: the TEST view of a train/val net, fed from a DataFrame column.

A Caffe train/val prototxt reads its inputs from data layers and ends in loss and accuracy layers that
need labels. ``CaffeModel.transform`` has only the feature column, so :func:`plan_inference` makes
the net Caffe's "deploy" form does by hand:

1. take the TEST view (phase filtering, the net's own state);
2. find the layer that produces ``inputBlob`` and keep its ``transform_param`` (the TEST-phase
   preprocessing: center crop, mean, scale), then replace it by an ``Input`` layer of the
   post-transform shape;
3. keep only the layers the wanted blobs (scores + feature blobs) depend on, walking backwards;
   in-place layers that rewrite a kept blob stay, so every blob has its final value, as in Caffe.

The class-score blob is found the way a Caffe user reads a net: a ``Softmax`` output when there is
one (already probabilities), else the scores of the main ``SoftmaxWithLoss`` head (largest
loss_weight), else those of the last ``Accuracy`` layer, else the net's only non-loss output.
"""
from __future__ import annotations

import dataclasses
from typing import Sequence

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe.data_layer_types import NET_INPUT_TYPES
from hovcaffe.caffe.state import filter_net, merged_state
from hovcaffe.errors import NetDefinitionError, UserInputError

LOSS_SUFFIX = "Loss"


@dataclasses.dataclass(frozen=True)
class InferencePlan:
    """What transform runs on the executors.

    Attributes:
        net_param: the pruned TEST net with an ``Input`` layer for ``input_blob``.
        input_blob: the blob fed from the feature column.
        sample_shape: per-sample shape of the rows before transform (C×H×W).
        net_input_shape: per-sample C×H×W the net takes (after any crop).
        transform: the TEST-phase ``transform_param`` of the replaced data layer (empty for ``Input``).
        score_blob: the blob behind prediction/probability.
        scores_are_probabilities: the score blob is a Softmax top (no softmax applied again).
        feature_blobs: extra blobs returned per row.
    """

    net_param: pb.NetParameter
    input_blob: str
    sample_shape: tuple[int, ...]
    net_input_shape: tuple[int, ...]
    transform: pb.TransformationParameter
    score_blob: str
    scores_are_probabilities: bool
    feature_blobs: tuple[str, ...]


def test_view(net_param: pb.NetParameter) -> pb.NetParameter:
    """The TEST-phase layers of `net_param` (its own `state` stages and level apply)."""
    return filter_net(net_param, merged_state(pb.TEST, net_param, None))


def input_layer(net: pb.NetParameter, blob: str) -> pb.LayerParameter:
    """The source layer (data layer or Input) producing `blob`.

    Raises:
        NetDefinitionError: no source layer of `net` has `blob` as a top; the message lists the
            blobs that the source layers do produce.
    """
    for layer in net.layer:
        if layer.type in NET_INPUT_TYPES and blob in layer.top:
            return layer
    tops = [t for layer in net.layer if layer.type in NET_INPUT_TYPES for t in layer.top]
    raise NetDefinitionError(f"net {net.name or '?'}: no data or Input layer produces blob {blob!r} "
                             f"(the inputBlob/labelBlob Param); blobs from data layers: "
                             f"{', '.join(tops) or 'none'}")


def transform_of(layer: pb.LayerParameter, blob: str) -> pb.TransformationParameter:
    """The transform_param applied to `blob` by data layer `layer` (CoSData: per top)."""
    if layer.type == "CoSData":
        for top in layer.cos_data_param.top:
            if top.name == blob:
                return top.transform_param
    return layer.transform_param


def declared_sample_shape(layer: pb.LayerParameter, blob: str) -> tuple[int, ...] | None:
    """Per-sample shape (before transform) that the layer's prototxt fixes for `blob`, if any."""
    if layer.type == "Input":
        shapes = layer.input_param.shape
        if not shapes:
            return None
        shape = shapes[list(layer.top).index(blob)] if len(shapes) > 1 else shapes[0]
        return tuple(shape.dim[1:])
    if layer.type == "MemoryData":
        m = layer.memory_data_param
        if m.channels and m.height and m.width:
            return (m.channels, m.height, m.width)
    if layer.type == "CoSData":
        for top in layer.cos_data_param.top:
            if top.name == blob:
                return (top.channels, top.height, top.width)[:top.sample_num_axes]
    if layer.type == "ImageData":
        p = layer.image_data_param
        if p.new_height and p.new_width:
            return (3 if p.is_color else 1, p.new_height, p.new_width)
    return None


def net_input_shape(sample_shape: Sequence[int], transform: pb.TransformationParameter) -> tuple[int, ...]:
    """Per-sample shape after `transform` (only crop_size changes it)."""
    shape = tuple(int(d) for d in sample_shape)
    crop = transform.crop_size
    if crop and len(shape) == 3:
        if shape[1] < crop or shape[2] < crop:
            raise UserInputError(f"crop_size {crop} is larger than the images ({shape[1]}x{shape[2]})")
        return (shape[0], crop, crop)
    return shape


def find_score_blob(net: pb.NetParameter) -> tuple[str, bool]:
    """(score blob, it is already probabilities) for a TEST view; see the module docstring.

    With several SoftmaxWithLoss heads (GoogLeNet's auxiliary classifiers) the one with the largest
    loss_weight wins, the deepest on ties; without any, the last Accuracy layer's scores.
    """
    consumed = {b for layer in net.layer for b in layer.bottom}
    for layer in net.layer:
        if layer.type == "Softmax" and layer.top and layer.top[0] not in consumed:
            return layer.top[0], True
    heads = [(layer.loss_weight[0] if len(layer.loss_weight) else 1.0, i, layer.bottom[0])
             for i, layer in enumerate(net.layer) if layer.type == "SoftmaxWithLoss" and layer.bottom]
    if not heads:
        heads = [(0.0, i, layer.bottom[0]) for i, layer in enumerate(net.layer)
                 if layer.type == "Accuracy" and layer.bottom]
    if heads:
        blob = max(heads)[2]
        return blob, _is_softmax_top(net, blob)
    outputs = [t for layer in net.layer if not layer.type.endswith(LOSS_SUFFIX)
               and layer.type not in NET_INPUT_TYPES for t in layer.top if t not in consumed]
    if len(outputs) == 1:
        return outputs[0], _is_softmax_top(net, outputs[0])
    raise NetDefinitionError(f"net {net.name or '?'}: cannot tell which blob holds the class scores "
                             f"(candidates: {', '.join(outputs) or 'none'}); set the outputBlob Param")


def _is_softmax_top(net: pb.NetParameter, blob: str) -> bool:
    producer = [layer for layer in net.layer if blob in layer.top]
    return bool(producer) and producer[-1].type == "Softmax"


def prune(net: pb.NetParameter, targets: Sequence[str]) -> pb.NetParameter:
    """A copy of `net` with only the layers that `targets` (blob names) depend on."""
    produced = {t for layer in net.layer for t in layer.top}
    missing = [t for t in targets if t not in produced]
    if missing:
        raise NetDefinitionError(f"net {net.name or '?'}: no layer of the TEST net produces blob(s) "
                                 f"{', '.join(map(repr, missing))} (outputBlob/featureBlobs); blobs: "
                                 f"{', '.join(sorted(produced))}")
    needed, keep = set(targets), []
    for layer in reversed(net.layer):
        if needed & set(layer.top):
            keep.append(layer)
            needed |= set(layer.bottom)
    out = pb.NetParameter()
    out.CopyFrom(net)
    out.ClearField("layer")
    out.layer.extend(reversed(keep))
    return out


def plan_inference(net_param: pb.NetParameter, *, input_blob: str, sample_shape: Sequence[int] | None,
                   batch_size: int, output_blob: str = "", feature_blobs: Sequence[str] = ()
                   ) -> InferencePlan:
    """Build the inference net for `net_param` (a train/val or deploy net).

    Args:
        net_param: the net as written (both phases).
        input_blob: blob fed from the feature column.
        sample_shape: per-sample C×H×W before transform (the training images' shape); None = the
            one the prototxt declares (Input, MemoryData, CoSData, ImageData resize).
        batch_size: rows per forward pass (the Input layer's first dimension).
        output_blob: the class-score blob; empty = found by :func:`find_score_blob`.
        feature_blobs: more blobs to return per row.

    Raises:
        NetDefinitionError: the blobs do not exist, or the net needs inputs transform cannot feed.
    """
    view = test_view(net_param)
    source = input_layer(view, input_blob)
    transform = pb.TransformationParameter()
    if source.type != "Input":
        transform.CopyFrom(transform_of(source, input_blob))
    shape = tuple(sample_shape) if sample_shape else declared_sample_shape(source, input_blob)
    if not shape:
        raise NetDefinitionError(f"layer {source.name!r} ({source.type}) does not say the shape of "
                                 f"{input_blob!r}; set the sampleShape Param to the images' [C, H, W]")
    in_shape = net_input_shape(shape, transform)
    if output_blob:
        score, is_prob = output_blob, _is_softmax_top(view, output_blob)
    else:
        score, is_prob = find_score_blob(view)
    targets = [score] + [b for b in feature_blobs if b != score]
    pruned = prune(view, targets)
    layers, available = [], set()
    for layer in pruned.layer:
        lacking = [b for b in layer.bottom if b not in available]
        if lacking:
            raise NetDefinitionError(
                f"layer {layer.name!r} needs {', '.join(lacking)}, which transform cannot feed; only "
                f"{input_blob!r} comes from the feature column (set outputBlob/featureBlobs to blobs "
                "that do not depend on labels)")
        available.update(layer.top)
        if layer.type in NET_INPUT_TYPES:
            available.difference_update(set(layer.top) - {input_blob})
            if input_blob not in layer.top:
                raise NetDefinitionError(
                    f"the wanted blobs need {', '.join(layer.top)} from layer {layer.name!r} "
                    f"({layer.type}), which transform cannot feed; only {input_blob!r} comes from "
                    "the feature column")
            layers.append(_input_layer(layer.name, input_blob, (batch_size,) + in_shape))
        else:
            layers.append(layer)
    pruned.ClearField("layer")
    pruned.layer.extend(layers)
    return InferencePlan(pruned, input_blob, tuple(int(d) for d in shape), in_shape, transform, score,
                         is_prob, tuple(feature_blobs))


def _input_layer(name: str, blob: str, shape: Sequence[int]) -> pb.LayerParameter:
    layer = pb.LayerParameter(name=name, type="Input", top=[blob])
    layer.input_param.shape.add().dim.extend(int(d) for d in shape)
    return layer
