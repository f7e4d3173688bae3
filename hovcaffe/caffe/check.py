"""Validate a net definition without building it: the errors Caffe's `Net::Init` would raise.

Checks a net has at least one layer, then, per phase view (TRAIN and TEST unless a state is given):

* include and exclude rules on one layer;
* a layer without a type; with a `check_type` (the layer registry's
  `hovcaffe.layers.registry.check_layer_type`), every type that is not fed by a data feed;
* a bottom that no earlier layer produced ("Unknown bottom blob");
* a top produced twice, other than in place (`top[i] == bottom[i]`);
* `loss_weight` and `propagate_down` counts (none, or one per top / bottom);
* Input layers with a number of shapes other than 0, 1 or one per top.
"""
from __future__ import annotations

from typing import Callable

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe.data_layer_types import FED_TYPES
from hovcaffe.caffe.state import filter_net, layer_included, merged_state
from hovcaffe.errors import NetDefinitionError

#: Raises UnsupportedLayerError for a layer whose type cannot be built: (layer, source file).
TypeCheck = Callable[[pb.LayerParameter, str], None]


def check_net(net_param: pb.NetParameter, source: str = "", *,
              state: pb.NetState | None = None, check_type: TypeCheck | None = None) -> None:
    """Raise the first problem found in `net_param` (see the module docstring).

    Args:
        net_param: an upgraded NetParameter (as returned by `read_net`).
        source: file name used in messages.
        state: check only this view; default: the TRAIN and the TEST view.
        check_type: called on every layer whose type is not fed by a data feed; None checks
            the structure only. `caffe/` knows no layer implementations, so the caller passes
            the layer registry's check (which also decides on Python layers).

    Raises:
        NetDefinitionError: a structural problem (message names layer and blob).
        UnsupportedLayerError: an unknown or refused layer type.
    """
    where = f"{source}: " if source else ""
    if not net_param.layer:  # an empty or misnamed file would otherwise build a net that does nothing
        raise NetDefinitionError(f"{where}the net has no layers (is this a net prototxt?)")
    for layer in net_param.layer:  # independent of the view
        layer_included(layer, pb.NetState(), source)
        if not layer.type:
            raise NetDefinitionError(f"{where}layer {layer.name!r} has no type")
        if check_type is not None and layer.type not in FED_TYPES:
            check_type(layer, source)  # fed types are built by a data feed, not the registry
    states = [state] if state is not None else [
        merged_state(pb.TRAIN, net_param, None), merged_state(pb.TEST, net_param, None)]
    for st in states:
        _check_view(filter_net(net_param, st, source), where, pb.Phase.Name(st.phase))


def _check_view(net: pb.NetParameter, where: str, phase: str) -> None:
    producer: dict[str, str] = {}
    for layer in net.layer:
        name = layer.name
        for i, bottom in enumerate(layer.bottom):
            if bottom not in producer:
                raise NetDefinitionError(
                    f"{where}Unknown bottom blob {bottom!r} (layer {name!r}, bottom index {i}) "
                    f"in the {phase} net; no earlier layer produces it")
        for i, top in enumerate(layer.top):
            in_place = i < len(layer.bottom) and layer.bottom[i] == top
            if top in producer and not in_place:
                raise NetDefinitionError(
                    f"{where}Top blob {top!r} produced by multiple sources: layer {name!r} "
                    f"(top index {i}) and layer {producer[top]!r} in the {phase} net; only "
                    "in-place reuse (top[i] == bottom[i]) is allowed")
            if top not in producer or not in_place:
                producer[top] = name
        _check_counts(layer, where)


def _check_counts(layer: pb.LayerParameter, where: str) -> None:
    name = layer.name
    # A loss layer without tops gets one anonymous top from Caffe (AutoTopBlobs), which a
    # single loss_weight may weight.
    if len(layer.loss_weight) not in (0, len(layer.top) or 1):
        raise NetDefinitionError(
            f"{where}layer {name!r} has {len(layer.loss_weight)} loss_weight values for "
            f"{len(layer.top)} tops; give none or one per top")
    if len(layer.propagate_down) not in (0, len(layer.bottom)):
        raise NetDefinitionError(
            f"{where}layer {name!r} has {len(layer.propagate_down)} propagate_down values for "
            f"{len(layer.bottom)} bottoms; give none or one per bottom")
    if layer.type == "Input":
        n = len(layer.input_param.shape)
        if n not in (0, 1, len(layer.top)):
            raise NetDefinitionError(
                f"{where}Input layer {name!r} has {n} shapes for {len(layer.top)} tops; give "
                "one shape per top (or one for all)")
