"""Spark ML Params of the Caffe stages, declared once as a table.

Each row of :data:`STAGE_PARAMS`, :data:`ESTIMATOR_PARAMS` is a :class:`ParamSpec` (name, doc, default,
converter). At import time every row becomes a ``Has<Name>`` mixin holding the ``Param`` attribute, a
``get<Name>`` getter and a ``set<Name>`` setter (the idea of pyspark's shared-params code generator,
done in code instead of generated files). The stages inherit the mixins; their ``__init__(**kwargs)``
checks the keys against the Params (:func:`check_param_names`) and calls ``self._set(**kwargs)``, so no
signature is written twice.

Converters check types and ranges; a bad value raises :class:`hovcaffe.errors.UserInputError` naming
the Param, the value and what is allowed (pyspark's own converters raise a bare TypeError).
"""
from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from typing import Any, Callable, Iterable, Sequence

from pyspark.ml.param import Param, Params

from hovcaffe.errors import UserInputError
from hovcaffe.runtime.modes import FAST_MODES

#: Default of a Param that has none: the getter returns None while the Param is unset.
UNSET = object()
Converter = Callable[[Any], Any]


@dataclasses.dataclass(frozen=True)
class ParamSpec:
    """One Param: camelCase name, one-sentence doc (with range and units), default, converter."""

    name: str
    doc: str
    default: Any
    converter: Converter

    @property
    def suffix(self) -> str:
        return self.name[0].upper() + self.name[1:]


# ----------------------------------------------------------------------------- converters

def _fail(expected: str) -> Callable[[Any], UserInputError]:
    return lambda value: UserInputError(f"expected {expected}, got {value!r}")


def to_str(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail("a string")(value)
    return value


def to_int(lo: int | None = None) -> Converter:
    def convert(value: Any) -> int:
        ok = isinstance(value, numbers.Integral) or (isinstance(value, numbers.Real)
                                                    and float(value).is_integer())
        if isinstance(value, bool) or not ok or (lo is not None and int(value) < lo):
            raise _fail("an integer" + (f" >= {lo}" if lo is not None else ""))(value)
        return int(value)
    return convert


def to_float(lo: float | None = None, hi: float | None = None, *, lo_open: bool = False,
             hi_open: bool = False) -> Converter:
    def convert(value: Any) -> float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
        if ok and lo is not None:
            ok = value > lo if lo_open else value >= lo
        if ok and hi is not None:
            ok = value < hi if hi_open else value <= hi
        if not ok:
            lo_txt = "" if lo is None else f"{'>' if lo_open else '>='} {lo}"
            hi_txt = "" if hi is None else f"{'<' if hi_open else '<='} {hi}"
            raise _fail(" and ".join(filter(None, ["a finite number", lo_txt, hi_txt])))(value)
        return float(value)
    return convert


def to_str_list(value: Any) -> list[str]:
    if isinstance(value, str):  # "fc7,prob" as CaffeOnSpark's -features spelled it
        value = [v.strip() for v in value.split(",") if v.strip()]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise _fail("a list of strings")(value)
    return list(value)


def to_int_list(value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)) or not all(
            isinstance(v, numbers.Integral) and not isinstance(v, bool) and v > 0 for v in value):
        raise _fail("a list of positive integers")(value)
    return [int(v) for v in value]


def one_of(*choices: str) -> Converter:
    def convert(value: Any) -> str:
        if value not in choices:
            raise _fail("one of " + ", ".join(repr(c) for c in choices))(value)
        return value
    return convert


# ----------------------------------------------------------------------------- options
#: distributed-training options (hovcaffe.options) that are Params of the estimator -> Param name
OPTION_PARAMS: dict[str, str] = {"num_proc": "numProc", "backend": "backend",
                                 "connection": "connection", "start_timeout": "startTimeout",
                                 "max_restarts": "maxRestarts"}

#: how estimator messages name the options (Params where they are Params)
PARAM_NAMES: dict[str, str] = {name: f"Param {param}" for name, param in OPTION_PARAMS.items()}


def _option_converter(name: str) -> Converter:
    """The option's own converter (one rule with the command line), failing as a Param does."""
    from hovcaffe.options import SPECS

    def convert(value: Any) -> Any:
        try:
            return SPECS[name].convert(value)
        except ValueError as exc:
            raise UserInputError(str(exc)) from None
    return convert


def _option_doc(name: str) -> str:
    """The option's help, its environment variable and its one default (an unset Param takes
    ``$HOVCAFFE_*``, then that default: the command line's rule)."""
    from hovcaffe.options import SPECS

    spec = SPECS[name]
    env = f"${spec.env}, else " if spec.env else ""
    return f"{spec.help} Unset: {env}{spec.default!r}."


def distributed_options(stage: Params, **settings: Any):
    """The stage's DistributedOptions (Param > environment > default); errors name the Params."""
    from hovcaffe.options import DistributedOptions, NamesOptions

    given = {}
    for name, param_name in OPTION_PARAMS.items():
        param = stage.getParam(param_name)
        given[name] = stage.getOrDefault(param) if stage.isDefined(param) else None
    try:
        return DistributedOptions.resolve(given, **settings)
    except NamesOptions as exc:
        raise exc.spelled(PARAM_NAMES) from None


# ----------------------------------------------------------------------------- the tables

#: Params of both stages (the estimator copies their values into the model it returns).
STAGE_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("featuresCol", "Input column with one sample per row: encoded PNG/JPEG bytes, raw uint8 "
              "C×H×W bytes, a Spark image struct, an array of numbers or a Spark ML vector of C·H·W "
              "values.", "image", to_str),
    ParamSpec("inputBlob", "Net blob fed from featuresCol: a top of the net's data layer or Input "
              "layer.", "data", to_str),
    ParamSpec("sampleShape", "Per-row feature shape before transform_param, C×H×W as a list of "
              "positive integers (e.g. [1, 28, 28]); empty = what the net's Input/MemoryData/CoSData "
              "layer declares, else the images' own size (fit) or the training images' size "
              "(model).", [], to_int_list),
    ParamSpec("outputBlob", "Blob with the class scores (or Softmax probabilities) behind prediction and "
              "probability; empty = the first bottom of the net's SoftmaxWithLoss/Accuracy layer, or "
              "its only output.", "", to_str),
    ParamSpec("predictionCol", "Output column for the predicted class index (double, argmax of the "
              "scores).", "prediction", to_str),
    ParamSpec("probabilityCol", "Output column for the class probabilities (Spark ML DenseVector "
              "summing to 1; softmax of the scores unless the output blob is a Softmax top); empty = "
              "no such column.", "probability", to_str),
    ParamSpec("featureBlobs", "Blobs of the TEST net added to the output as array<float> columns "
              "named after the blob (CaffeOnSpark's -features); empty list = none.", [], to_str_list),
    ParamSpec("inferenceBatchSize", "Rows per forward pass in transform (>= 1); larger batches "
              "amortise per-call overhead at the cost of executor memory.", 64, to_int(1)),
    ParamSpec("numThreads", "Torch intra-op threads per Spark task in transform (>= 1); 1 suits "
              "one task per executor core.", 1, to_int(1)),
    ParamSpec("fast", "Fast path of transform's forward passes (hovcaffe --fast): auto = time "
              "eager and torch.compile once per executor process and keep the faster (cached in "
              "the executor's ~/.cache/hovcaffe), on = compiled, off = eager.", "off",
              one_of(*FAST_MODES)),
)

#: Params only the estimator has (training inputs and knobs).
ESTIMATOR_PARAMS: tuple[ParamSpec, ...] = (
    ParamSpec("solver", "Path or URL of the solver prototxt; the net files it names are resolved "
              "relative to its folder.", UNSET, to_str),
    ParamSpec("net", "Path or URL of a net prototxt replacing the solver's net/train_net/test_net; "
              "empty = the solver's own.", "", to_str),
    ParamSpec("weights", "Path or URL of a .caffemodel to fine-tune from (layers copied by name); "
              "empty = the prototxt fillers' initialisation.", "", to_str),
    # fit always trains distributed: numProc has a default here, unlike the command line's
    # -num-proc (whose absence means a local run)
    ParamSpec("numProc", "Number of ranks, one per Spark task (>= 1); each rank uses the "
              "prototxt batch_size, so the global batch is batch_size × numProc.", 2,
              _option_converter("num_proc")),
    ParamSpec("labelCol", "Label column: integers, or doubles holding class indices (e.g. "
              "StringIndexer output); fed to labelBlob.", "label", to_str),
    ParamSpec("labelBlob", "Net blob fed from labelCol: the label top of the TRAIN/TEST data "
              "layers.", "label", to_str),
    ParamSpec("modelDir", "Folder (path or URL) for the materialised datasets, one sub-folder per fit "
              "(snapshots, metrics CSV, final .caffemodel); required for fit.", UNSET, to_str),
    ParamSpec("baseLr", "Learning rate replacing the solver's base_lr (> 0), used as written for "
              "every rank count; unset = the solver's own.", UNSET, to_float(0.0, lo_open=True)),
    ParamSpec("maxIter", "Training iterations replacing the solver's max_iter (>= 1); unset = the "
              "solver's own.", UNSET, to_int(1)),
    ParamSpec("batchSize", "Per-rank batch size replacing the TRAIN data layer's batch_size (>= 1); "
              "unset = the prototxt's own.", UNSET, to_int(1)),
    ParamSpec("validationFraction", "Fraction of rows held out as the TEST data layer's data "
              "(0 <= f < 1); 0 = the TEST layer keeps its own source, or testing is skipped when it "
              "has none.", 0.0, to_float(0.0, 1.0, hi_open=True)),
    ParamSpec("seed", "Seed (integer) of the validation split.", 0, to_int()),
    *(ParamSpec(param, _option_doc(name), UNSET, _option_converter(name))
      for name, param in OPTION_PARAMS.items() if name != "num_proc"),
)


# ----------------------------------------------------------------------------- generation

def _make_mixin(spec: ParamSpec) -> type:
    def getter(self):
        param = getattr(self, spec.name)
        return self.getOrDefault(param) if self.isDefined(param) else None

    def setter(self, value):
        return self._set(**{spec.name: value})

    def init(self):
        super(mixin, self).__init__()
        if spec.default is not UNSET:
            # a fresh list per instance: a shared mutable default would leak between stages
            default = list(spec.default) if isinstance(spec.default, list) else spec.default
            self._setDefault(**{spec.name: default})

    getter.__doc__ = f"Value of {spec.name} (None when unset and without default): {spec.doc}"
    setter.__doc__ = f"Set {spec.name}: {spec.doc} Returns self."
    getter.__name__, setter.__name__ = "get" + spec.suffix, "set" + spec.suffix
    mixin = type(f"Has{spec.suffix}", (Params,), {
        "__doc__": f"Mixin for Param {spec.name}: {spec.doc}",
        "__module__": __name__,
        "__init__": init,
        spec.name: Param(Params._dummy(), spec.name, spec.doc, typeConverter=spec.converter),
        getter.__name__: getter,
        setter.__name__: setter,
    })
    return mixin


def _register(specs: Iterable[ParamSpec]) -> tuple[type, ...]:
    mixins = []
    for spec in specs:
        mixin = _make_mixin(spec)
        globals()[mixin.__name__] = mixin  # importable by name, so instances pickle
        mixins.append(mixin)
    return tuple(mixins)


STAGE_MIXINS = _register(STAGE_PARAMS)
ESTIMATOR_MIXINS = _register(ESTIMATOR_PARAMS)


def check_param_names(stage: Params, names: Iterable[str]) -> None:
    """Raise UserInputError for keyword arguments that are not Params of `stage`.

    The message lists close matches (typos such as ``baselr``) and every valid name.
    """
    valid = sorted(p.name for p in stage.params)
    for name in names:
        if not stage.hasParam(name):
            close = difflib.get_close_matches(name, valid, n=2, cutoff=0.6) or \
                [v for v in valid if v.lower() == name.lower()]
            hint = f" Did you mean {' or '.join(map(repr, close))}?" if close else ""
            raise UserInputError(f"{type(stage).__name__} has no Param {name!r}.{hint} "
                                 f"Valid Params: {', '.join(valid)}")


def set_params(stage: Params, kwargs: dict[str, Any]):
    """``stage._set(**kwargs)`` after checking the names; converter errors name the Param."""
    check_param_names(stage, kwargs)
    for name, value in kwargs.items():
        try:
            stage._set(**{name: value})
        except UserInputError as exc:
            raise UserInputError(f"{type(stage).__name__} Param {name}: {exc}") from None
    return stage


def require_params(stage: Params, names: Sequence[str], action: str) -> None:
    """Raise UserInputError naming every Param in `names` that is not set (and has no default)."""
    missing = [n for n in names if not stage.isDefined(stage.getParam(n))]
    if missing:
        raise UserInputError(f"{type(stage).__name__}.{action} needs Param(s) {', '.join(missing)}; "
                             f"set them in the constructor or with set{missing[0][0].upper()}"
                             f"{missing[0][1:]}(...)")
