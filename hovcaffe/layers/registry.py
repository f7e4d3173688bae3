"""The layer registry: Caffe `type` string -> builder. No layer code lives here.

A builder has one signature::

    build(param: LayerParameter, bottom_shapes: list[tuple[int, ...]], phase: int) -> CaffeLayer

`phase` is caffe_pb2.TRAIN (0) or caffe_pb2.TEST (1) - the layer's own phase
(LayerParameter.phase when set, else the net's). Builders read the typed proto
fields so caffe.proto's defaults apply; they never convert the proto to a dict.
"""
from __future__ import annotations

import difflib
from typing import Callable, TypeVar

from hovcaffe.errors import UnsupportedLayerError

Builder = Callable[..., "object"]
F = TypeVar("F", bound=Callable[..., object])

_BUILDERS: dict[str, Builder] = {}
_FAMILY: dict[str, str] = {}

# The commands that take --allow-python-layers (tests/unit/test_fork_cli.py keeps this true).
PYTHON_LAYER_COMMANDS = ("inspect", "forward", "export")

# Types Caffe registers that hovcaffe deliberately does not build here, with the reason.
REFUSED: dict[str, str] = {
    "Python": ("runs arbitrary code named in the prototxt; to import it pass "
               "allow_python_layers=True to CaffeNet, or --allow-python-layers to "
               f"{', '.join(f'hovcaffe {c}' for c in PYTHON_LAYER_COMMANDS)}; "
               "or register a PyTorch replacement"),
}

# Layer types from Caffe forks that users meet in model-zoo prototxts.
FORK_TYPES: dict[str, str] = {
    name: "a layer from a Caffe fork (SSD / Faster R-CNN / NVCaffe / MobileNet ports), not BVLC Caffe"
    for name in ("PriorBox", "DetectionOutput", "MultiBoxLoss", "AnnotatedData", "ROIPooling",
                 "Proposal")
}


def register_layer(caffe_type: str) -> Callable[[F], F]:
    """Decorator: register `fn` (or a CaffeLayer subclass) as the builder of `caffe_type`.

    Raises:
        ValueError: when the type is registered twice (two families claiming one type is a bug).
    """

    def deco(fn: F) -> F:
        if caffe_type in _BUILDERS:
            raise ValueError(f"layer type {caffe_type!r} registered twice "
                             f"({_FAMILY[caffe_type]} and {fn.__module__})")
        _BUILDERS[caffe_type] = fn
        _FAMILY[caffe_type] = fn.__module__.rsplit(".", 1)[-1]
        return fn

    return deco


def list_layers(family: str | None = None) -> list[str]:
    """Sorted registered Caffe types, optionally only those of one family module (e.g. "conv")."""
    return sorted(t for t in _BUILDERS if family is None or _FAMILY[t] == family)


def get_builder(caffe_type: str, layer_name: str = "?", source: str = "") -> Builder:
    """The builder of `caffe_type`, or an UnsupportedLayerError that says what to do."""
    try:
        return _BUILDERS[caffe_type]
    except KeyError:
        pass
    where = f"{source}: " if source else ""
    head = f"{where}layer {layer_name!r} has type {caffe_type!r}"
    if caffe_type in REFUSED:
        raise UnsupportedLayerError(f"{head}, which is refused: {REFUSED[caffe_type]}")
    hint = ""
    if caffe_type in FORK_TYPES:
        hint = f" ({FORK_TYPES[caffe_type]})"
    close = difflib.get_close_matches(caffe_type, list(_BUILDERS), n=3)
    suggestion = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
    raise UnsupportedLayerError(
        f"{head}, which hovcaffe does not support{hint}.{suggestion} "
        f"Supported types: {', '.join(list_layers())}")


def check_layer_type(layer, source: str = "", *, allow_python_layers: bool = False) -> None:
    """Raise UnsupportedLayerError unless `layer` (a LayerParameter) has a type this registry builds.

    A `type: "Python"` layer passes only with `allow_python_layers`; the net then imports the
    PyTorch replacement it names. This is the `check_type` that `caffe.check.check_net` takes.
    """
    from hovcaffe.layers.python_layers import builtin_type, refusal_hint

    if layer.type != "Python":
        get_builder(layer.type, layer.name, source)
        return
    if builtin_type(layer.python_param) is None and not allow_python_layers:
        where = f"{source}: " if source else ""
        raise UnsupportedLayerError(
            f"{where}layer {layer.name!r} has type 'Python' "
            f"({layer.python_param.module}.{layer.python_param.layer}), which is refused: "
            f"{REFUSED['Python']}. {refusal_hint(layer.python_param)}")
