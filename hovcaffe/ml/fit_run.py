"""The solver and nets one ``fit`` trains: the user's files with the estimator's overrides applied.

Every fit gets its own run folder under ``modelDir/runs/`` holding a self-contained
``solver.prototxt``: the train and test nets are inlined (``train_net_param`` /
``test_net_param``, same NetStates as Caffe gives the originals), relative paths inside them are
made absolute (Caffe's rule: current directory first, then the folder of the file naming them), and

* ``baseLr`` -> ``base_lr``, ``maxIter`` -> ``max_iter``, ``batchSize`` -> the batch size of the
  TRAIN data layer producing ``inputBlob``, applied before training, never scaled by the rank count;
* ``snapshot_prefix`` -> ``<run>/snapshots/<solver name>``;
* tests: with a held-out split (``validationFraction`` > 0) the test nets read it; without one
  they keep their own source when it exists, and testing is switched off (``test_iter`` cleared)
  when it does not - a DataFrame fit has no other test data.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import posixpath
from typing import Sequence

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe.data_layer_types import DATA_LAYERS, FILE_FIELDS, NET_INPUT_TYPES, set_batch_size
from hovcaffe.caffe.io import parse_solver, to_prototxt
from hovcaffe.caffe.state import filter_net
from hovcaffe.errors import DataSourceError, NetDefinitionError
from hovcaffe.ml.artifacts import read_url
from hovcaffe.training.nets import NetSpec, test_net_specs, train_net_spec
from hovcaffe.utils.paths import is_url, resolve_path

log = logging.getLogger(__name__)


@dataclasses.dataclass
class Overrides:
    """Estimator Params that change the solver (None = keep the prototxt's value)."""

    base_lr: float | None = None
    max_iter: int | None = None
    batch_size: int | None = None
    net: str = ""
    held_out_test: bool = False


@dataclasses.dataclass
class FitRun:
    """What the distributed runner trains.

    Attributes:
        solver: the self-contained SolverParameter (nets inlined).
        solver_path: where it is written (``<run>/solver.prototxt``).
        model_net: the net the model keeps (the first test net, else the train net); its TEST
            view is what transform runs.
        train_layer: the TRAIN data layer producing the input blob (for shape checks).
        testing: whether the solver runs test nets.
        run_dir: the run folder (local path).
    """

    solver: pb.SolverParameter
    solver_path: str
    model_net: pb.NetParameter
    train_layer: pb.LayerParameter
    testing: bool
    run_dir: str

    @property
    def net_path(self) -> str:
        """``<run>/net.prototxt``: the model's net (written by :meth:`write`)."""
        return posixpath.join(self.run_dir, "net.prototxt")

    def write(self) -> None:
        """Write ``solver.prototxt`` and ``net.prototxt`` into the run folder."""
        os.makedirs(posixpath.join(self.run_dir, "snapshots"), exist_ok=True)
        for path, message in ((self.solver_path, self.solver), (self.net_path, self.model_net)):
            with open(path, "w") as fh:
                fh.write(to_prototxt(message))


def load_solver(url: str) -> tuple[pb.SolverParameter, str]:
    """(upgraded SolverParameter, local path) of the solver at `url` (paths or file:// URLs)."""
    text = read_url(url, "solver prototxt").decode("utf-8")
    from hovcaffe.data import storage

    loc = storage.resolve(url)
    if not loc.is_local:
        raise DataSourceError(f"solver {url!r}: the estimator reads solver prototxts from local paths "
                              "(the nets it names are resolved relative to its folder)")
    return parse_solver(text, url), loc.path


def prepare_fit_run(solver_url: str, run_dir: str, overrides: Overrides, *, input_blob: str) -> FitRun:
    """Build the run's solver (see the module docstring); nothing is written yet.

    Raises:
        PrototxtError / SolverError: the solver or its nets are invalid.
        NetDefinitionError: no TRAIN data layer produces `input_blob`.
    """
    sp, solver_path = load_solver(solver_url)
    if overrides.net:
        sp.ClearField("train_net")
        sp.ClearField("train_net_param")
        sp.ClearField("net_param")
        sp.ClearField("test_net")
        sp.ClearField("test_net_param")
        sp.net = os.path.abspath(overrides.net)
    train = train_net_spec(sp, solver_path)
    tests = test_net_specs(sp, solver_path)
    model_net = _absolute_paths(tests[0] if tests else train)
    train_param = _absolute_paths(train)
    train_layer = _data_layer(train_param, train.state, input_blob)
    if overrides.batch_size is not None:
        set_batch_size(train_layer, overrides.batch_size)

    out = pb.SolverParameter()
    out.CopyFrom(sp)
    for name in ("net", "net_param", "train_net", "train_net_param", "test_net", "test_net_param",
                 "test_state"):
        out.ClearField(name)
    out.train_net_param.CopyFrom(train_param)
    testing = bool(tests) and (overrides.held_out_test or all(_has_source(t) for t in tests))
    if testing:
        for i, spec in enumerate(tests):
            out.test_net_param.add().CopyFrom(_absolute_paths(spec))
        if len(sp.test_state):
            out.test_state.extend(sp.test_state)
        del out.test_iter[len(tests):]
    else:
        if tests:
            log.warning("the solver's test nets read data that does not exist and no rows are held "
                        "out (validationFraction = 0); training runs without tests")
        out.ClearField("test_iter")
        out.test_interval = 0
        out.test_initialization = False
    if overrides.base_lr is not None:
        out.base_lr = overrides.base_lr
    if overrides.max_iter is not None:
        out.max_iter = overrides.max_iter
    name = os.path.splitext(os.path.basename(solver_path))[0]
    out.snapshot_prefix = posixpath.join(run_dir, "snapshots", name)
    out.ClearField("weights")
    return FitRun(out, posixpath.join(run_dir, "solver.prototxt"), model_net, train_layer,
                       testing, run_dir)


def solver_weights(sp_url: str) -> list[str]:
    """The solver's own ``weights`` entries, made absolute (passed to the runner explicitly)."""
    sp, path = load_solver(sp_url)
    base = os.path.dirname(path)
    return [resolve_path(w, base, what="weights", named_in=path) for w in sp.weights]


def _data_layer(net: pb.NetParameter, state: pb.NetState, blob: str) -> pb.LayerParameter:
    """The layer of `net` (the message itself, for editing) producing `blob` in view `state`."""
    view = {l.name for l in filter_net(net, state).layer}
    for layer in net.layer:
        if layer.name in view and layer.type in NET_INPUT_TYPES and blob in layer.top:
            if layer.type == "Input":
                raise NetDefinitionError(f"the train net feeds {blob!r} from Input layer "
                                         f"{layer.name!r}; fit needs a data layer (Data, MemoryData, "
                                         "CoSData...) there to feed the DataFrame rows through")
            return layer
    raise NetDefinitionError(f"no TRAIN data layer of the net produces blob {blob!r} (the inputBlob "
                             "Param); data-layer tops: " + ", ".join(
                                 t for l in net.layer if l.type in NET_INPUT_TYPES for t in l.top))


def _source_fields(layer: pb.LayerParameter) -> Sequence[tuple[object, str]]:
    row = DATA_LAYERS.get(layer.type)
    out = []
    if row is not None and (row.param, "source") in FILE_FIELDS and layer.HasField(row.param):
        out.append((getattr(layer, row.param), "source"))
    if layer.HasField("transform_param") and layer.transform_param.HasField("mean_file"):
        out.append((layer.transform_param, "mean_file"))
    return out


def _absolute_paths(spec: NetSpec) -> pb.NetParameter:
    """A copy of the spec's net with relative sources and mean files resolved (where they exist)."""
    from hovcaffe.distributed.portable import absolutize_net

    net = pb.NetParameter()
    net.CopyFrom(spec.param)
    # A missing one stays relative: the DataFrame's dataset replaces it, or testing is switched off.
    absolutize_net(net, spec.base_dir)
    return net


def _has_source(spec: NetSpec) -> bool:
    """Whether every data layer of a test net reads something that exists."""
    net = filter_net(spec.param, spec.state)
    for layer in net.layer:
        for msg, name in _source_fields(layer):
            if name == "source":
                value = getattr(msg, name)
                if not value:
                    return False
                if is_url(value):
                    continue
                try:
                    resolve_path(value, spec.base_dir)
                except DataSourceError:
                    return False
    return True
