"""Bring legacy Caffe nets and solvers to the current format, following Caffe's upgrade rules.

Applied in Caffe's order to text prototxts and binary caffemodels alike:

1. V0 -> V1: `layers { layer { type: "conv" ... } }` with flat fields; standalone
   "padding" layers are folded into the conv / pool that reads them.
2. Data transformation: scale / mean_file / crop_size / mirror move from the V1 data
   layers' own params into `transform_param`.
3. V1 -> V2: `layers { type: CONVOLUTION blobs_lr: 1 }` -> `layer { type: "Convolution"
   param { lr_mult: 1 } }`.
4. Net inputs: `input` + `input_shape` / `input_dim` -> a first layer of type "Input".
5. BatchNorm: a BatchNorm layer with three `param {}` entries gets lr_mult = decay_mult = 0.

Solvers: the `solver_type` enum becomes the `type` string. Each upgraded file logs one
INFO line naming the steps applied.
"""
from __future__ import annotations

import logging

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe.upgrade_v0 import fold_padding_layers, upgrade_v0_layer
from hovcaffe.errors import NetDefinitionError, SolverError

log = logging.getLogger(__name__)

V1 = pb.V1LayerParameter

# V1 enum name -> V2 type string (every value of V1LayerParameter.LayerType).
V1_TYPE_NAMES: dict[str, str] = {
    "NONE": "", "ABSVAL": "AbsVal", "ACCURACY": "Accuracy", "ARGMAX": "ArgMax", "BNLL": "BNLL",
    "CONCAT": "Concat", "CONTRASTIVE_LOSS": "ContrastiveLoss", "CONVOLUTION": "Convolution",
    "DATA": "Data", "DECONVOLUTION": "Deconvolution", "DROPOUT": "Dropout",
    "DUMMY_DATA": "DummyData", "EUCLIDEAN_LOSS": "EuclideanLoss", "ELTWISE": "Eltwise",
    "EXP": "Exp", "FLATTEN": "Flatten", "HDF5_DATA": "HDF5Data", "HDF5_OUTPUT": "HDF5Output",
    "HINGE_LOSS": "HingeLoss", "IM2COL": "Im2col", "IMAGE_DATA": "ImageData",
    "INFOGAIN_LOSS": "InfogainLoss", "INNER_PRODUCT": "InnerProduct", "LRN": "LRN",
    "MEMORY_DATA": "MemoryData", "MULTINOMIAL_LOGISTIC_LOSS": "MultinomialLogisticLoss",
    "MVN": "MVN", "POOLING": "Pooling", "POWER": "Power", "RELU": "ReLU", "SIGMOID": "Sigmoid",
    "SIGMOID_CROSS_ENTROPY_LOSS": "SigmoidCrossEntropyLoss", "SILENCE": "Silence",
    "SOFTMAX": "Softmax", "SOFTMAX_LOSS": "SoftmaxWithLoss", "SPLIT": "Split", "SLICE": "Slice",
    "TANH": "TanH", "WINDOW_DATA": "WindowData", "THRESHOLD": "Threshold",
}

SOLVER_TYPE_NAMES: dict[int, str] = {
    pb.SolverParameter.SGD: "SGD", pb.SolverParameter.NESTEROV: "Nesterov",
    pb.SolverParameter.ADAGRAD: "AdaGrad", pb.SolverParameter.RMSPROP: "RMSProp",
    pb.SolverParameter.ADADELTA: "AdaDelta", pb.SolverParameter.ADAM: "Adam",
}

# Message-valued fields a V1 layer shares (by name) with LayerParameter; copied as they are.
_V1_SHARED_PARAMS = tuple(
    f.name for f in V1.DESCRIPTOR.fields
    if f.message_type is not None and f.name.endswith("_param")
    and f.name in pb.LayerParameter.DESCRIPTOR.fields_by_name)

# V1 data layer type -> the param holding its legacy transform fields.
_DATA_TRANSFORM_OWNERS = {V1.DATA: "data_param", V1.IMAGE_DATA: "image_data_param",
                          V1.WINDOW_DATA: "window_data_param"}
_TRANSFORM_FIELDS = ("scale", "mean_file", "crop_size", "mirror")


# ----------------------------------------------------------------------------- net

def upgrade_net(net: pb.NetParameter, source: str = "<net>") -> list[str]:
    """Upgrade `net` in place; return the names of the steps applied (empty if current).

    Raises:
        NetDefinitionError: the file mixes V1 `layers` with V2 `layer`, or a V0 padding
            layer feeds something other than a single-input conv / pool.
    """
    steps: list[str] = []
    if any(l.HasField("layer") for l in net.layers):
        fold_padding_layers(net, source)
        for v1 in net.layers:
            if v1.HasField("layer"):
                upgrade_v0_layer(v1, source)
        steps.append("V0 layers -> V1")
    if _needs_data_upgrade(net):
        _upgrade_data_transformation(net)
        steps.append("data-layer transform fields -> transform_param")
    if len(net.layers):
        if len(net.layer):
            raise NetDefinitionError(
                f"{source}: the net has both V1 `layers {{}}` and current `layer {{}}` entries; "
                "a file must use one form only")
        upgraded = [upgrade_v1_layer(v1) for v1 in net.layers]
        net.ClearField("layers")
        net.layer.extend(upgraded)
        steps.append("V1 layers -> current layer format")
    if len(net.input):
        _upgrade_inputs(net, source)
        steps.append("net inputs -> Input layer")
    if _upgrade_batchnorm(net):
        steps.append("BatchNorm params -> lr_mult 0")
    if steps:
        log.info("%s: upgraded from a legacy Caffe format (%s)", source, "; ".join(steps))
    return steps


def upgrade_v1_layer(v1: pb.V1LayerParameter) -> pb.LayerParameter:
    """The current-format LayerParameter equivalent to the V1 layer `v1`."""
    layer = pb.LayerParameter()
    layer.bottom.extend(v1.bottom)
    layer.top.extend(v1.top)
    if v1.HasField("name"):
        layer.name = v1.name
    layer.include.extend(v1.include)
    layer.exclude.extend(v1.exclude)
    if v1.HasField("type"):
        layer.type = V1_TYPE_NAMES[V1.LayerType.Name(v1.type)]
    layer.blobs.extend(v1.blobs)

    def spec(i: int) -> pb.ParamSpec:
        while len(layer.param) <= i:
            layer.param.add()
        return layer.param[i]

    for i, name in enumerate(v1.param):
        spec(i).name = name
    for i, mode in enumerate(v1.blob_share_mode):
        # Same numbers in both enums (STRICT=0, PERMISSIVE=1); map by name to stay honest.
        spec(i).share_mode = pb.ParamSpec.DimCheckMode.Value(V1.DimCheckMode.Name(mode))
    for i, lr in enumerate(v1.blobs_lr):
        spec(i).lr_mult = lr
    for i, decay in enumerate(v1.weight_decay):
        spec(i).decay_mult = decay
    layer.loss_weight.extend(v1.loss_weight)
    for name in _V1_SHARED_PARAMS:
        if v1.HasField(name):
            getattr(layer, name).CopyFrom(getattr(v1, name))
    if v1.HasField("layer"):
        log.warning("layer %r still holds a V0 definition after upgrading; ignored", v1.name)
    return layer


def _needs_data_upgrade(net: pb.NetParameter) -> bool:
    for v1 in net.layers:
        owner = _DATA_TRANSFORM_OWNERS.get(v1.type)
        if owner and v1.HasField(owner):
            params = getattr(v1, owner)
            if any(params.HasField(f) for f in _TRANSFORM_FIELDS):
                return True
    return False


def _upgrade_data_transformation(net: pb.NetParameter) -> None:
    for v1 in net.layers:
        owner = _DATA_TRANSFORM_OWNERS.get(v1.type)
        if not owner:
            continue
        params = getattr(v1, owner)
        transform = v1.transform_param
        transform.SetInParent()  # Caffe creates both messages for every such layer
        params.SetInParent()
        for field in _TRANSFORM_FIELDS:
            if params.HasField(field):
                setattr(transform, field, getattr(params, field))
                params.ClearField(field)


def _upgrade_inputs(net: pb.NetParameter, source: str) -> None:
    """`input` / `input_shape` / `input_dim` -> an "Input" layer placed first."""
    names = list(net.input)
    if len(net.input_shape) or len(net.input_dim):
        layer = pb.LayerParameter(name="input", type="Input", top=names)
        if len(net.input_shape):
            if len(net.input_shape) != len(names):
                raise NetDefinitionError(
                    f"{source}: {len(names)} net inputs but {len(net.input_shape)} input_shape "
                    "entries; give one input_shape per input")
            layer.input_param.shape.extend(net.input_shape)
        else:
            dims = list(net.input_dim)
            if len(dims) != 4 * len(names):
                raise NetDefinitionError(
                    f"{source}: {len(names)} net inputs need {4 * len(names)} input_dim values "
                    f"(N, C, H, W each), found {len(dims)}")
            for i in range(len(names)):
                layer.input_param.shape.add().dim.extend(dims[4 * i: 4 * i + 4])
        rest = list(net.layer)
        net.ClearField("layer")
        net.layer.append(layer)
        net.layer.extend(rest)
    # A bare `input` without dims (old caffemodels) carries no information: dropped.
    for field in ("input", "input_shape", "input_dim"):
        net.ClearField(field)


def _upgrade_batchnorm(net: pb.NetParameter) -> bool:
    changed = False
    for layer in net.layer:
        if layer.type == "BatchNorm" and len(layer.param) == 3:
            for spec in layer.param:
                # Only a non-zero learning rate changes behaviour (Caffe itself saves
                # BatchNorm layers with three `lr_mult: 0` specs and no decay_mult).
                changed |= spec.lr_mult != 0
                spec.lr_mult = 0.0
                spec.decay_mult = 0.0
    return changed


# ----------------------------------------------------------------------------- solver

def upgrade_solver(solver: pb.SolverParameter, source: str = "<solver>") -> list[str]:
    """Upgrade `solver` in place (`solver_type` enum -> `type`; inline nets upgraded too).

    Raises:
        SolverError: both `solver_type` and `type` are set.
    """
    steps: list[str] = []
    if solver.HasField("solver_type"):
        if solver.HasField("type"):
            raise SolverError(
                f"{source}: both the legacy `solver_type: "
                f"{pb.SolverParameter.SolverType.Name(solver.solver_type)}` and `type: "
                f"\"{solver.type}\"` are set; keep only `type`")
        solver.type = SOLVER_TYPE_NAMES[solver.solver_type]
        solver.ClearField("solver_type")
        steps.append(f"solver_type -> type: \"{solver.type}\"")
    if steps:
        log.info("%s: upgraded from a legacy Caffe format (%s)", source, "; ".join(steps))
    for field in ("net_param", "train_net_param"):
        if solver.HasField(field):
            upgrade_net(getattr(solver, field), f"{source} ({field})")
    for i, net in enumerate(solver.test_net_param):
        upgrade_net(net, f"{source} (test_net_param #{i})")
    return steps
