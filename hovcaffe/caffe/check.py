"""Validate a net definition without building it: the errors Caffe's `Net::Init` would raise.

Checks, per phase view (TRAIN and TEST unless a state is given):

* include and exclude rules on one layer;
* a layer without a type, an unknown type (with the supported list), the Python layer
  unless explicitly allowed;
* a bottom that no earlier layer produced ("Unknown bottom blob");
* a top produced twice, other than in place (`top[i] == bottom[i]`);
* `loss_weight` and `propagate_down` counts (none, or one per top / bottom);
* Input layers with a number of shapes other than 0, 1 or one per top.
"""
from __future__ import annotations

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe.data_layer_types import FED_TYPES
from hovcaffe.caffe.state import filter_net, layer_included, merged_state
from hovcaffe.errors import NetDefinitionError, UnsupportedLayerError


def check_net(net_param: pb.NetParameter, source: str = "", *,
              state: pb.NetState | None = None, allow_python_layers: bool = False,
              check_types: bool = True) -> None:
    """Raise the first problem found in `net_param` (see the module docstring).

    Args:
        net_param: an upgraded NetParameter (as returned by `read_net`).
        source: file name used in messages.
        state: check only this view; default: the TRAIN and the TEST view.
        allow_python_layers: accept `type: "Python"` layers.
        check_types: look each type up in the layer registry.

    Raises:
        NetDefinitionError: a structural problem (message names layer and blob).
        UnsupportedLayerError: an unknown or refused layer type.
    """
    where = f"{source}: " if source else ""
    for layer in net_param.layer:  # independent of the view
        layer_included(layer, pb.NetState(), source)
        if not layer.type:
            raise NetDefinitionError(f"{where}layer {layer.name!r} has no type")
        if check_types:
            _check_type(layer, source, allow_python_layers)
    states = [state] if state is not None else [
        merged_state(pb.TRAIN, net_param, None), merged_state(pb.TEST, net_param, None)]
    for st in states:
        _check_view(filter_net(net_param, st, source), where, pb.Phase.Name(st.phase))


def _check_type(layer: pb.LayerParameter, source: str, allow_python: bool) -> None:
    if layer.type == "Python":
        if allow_python:
            return
        from hovcaffe.layers.registry import REFUSED
        where = f"{source}: " if source else ""
        raise UnsupportedLayerError(
            f"{where}layer {layer.name!r} has type 'Python' "
            f"({layer.python_param.module}.{layer.python_param.layer}), which is refused: "
            f"{REFUSED['Python']}")
    if layer.type in FED_TYPES:
        return  # fed by a data source, not built from the layer registry
    import hovcaffe.layers  # noqa: F401 - registers every layer family
    from hovcaffe.layers.registry import get_builder
    get_builder(layer.type, layer.name, source)


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
    if len(layer.loss_weight) not in (0, len(layer.top)):
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
