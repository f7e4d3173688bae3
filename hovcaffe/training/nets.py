"""Which nets a SolverParameter describes, with their NetStates (Caffe's `Solver::InitTrainNet` /
`InitTestNets`), as plain NetParameters - building the torch modules is the caller's business.

Train net: exactly one of `train_net_param`, `train_net`, `net_param`, `net`. Test nets, in
Caffe's order: every `test_net_param`, every `test_net`, then one more instance of the generic
`net_param`/`net` per remaining `test_iter` entry. NetState = phase ⊕ the file's `state` ⊕
`train_state` / `test_state[i]`.
"""
from __future__ import annotations

import dataclasses
import os

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import read_net
from hovcaffe.caffe.state import merged_state
from hovcaffe.errors import SolverError
from hovcaffe.utils.paths import resolve_path


@dataclasses.dataclass
class NetSpec:
    """One net to build.

    Attributes:
        param: the NetParameter (unfiltered; CaffeNet filters by `state`).
        state: the merged NetState (phase included).
        source: where it came from, for messages ("solver.prototxt (net_param)" or a path).
        base_dir: folder for relative paths named inside the net (data sources, mean files).
        test_iter: batches per test pass (test nets only).
    """

    param: caffe_pb2.NetParameter
    state: caffe_pb2.NetState
    source: str
    base_dir: str
    test_iter: int = 0

    @property
    def phase(self) -> int:
        return self.state.phase


def _solver_dir(solver_path: str | None) -> str:
    return os.path.dirname(os.path.abspath(solver_path)) if solver_path else os.getcwd()


def _from_file(path: str, solver_path: str | None, what: str) -> tuple[caffe_pb2.NetParameter, str, str]:
    resolved = resolve_path(path, _solver_dir(solver_path), what=what, named_in=solver_path)
    return read_net(resolved), resolved, os.path.dirname(os.path.abspath(resolved))


def _inline(param: caffe_pb2.NetParameter, solver_path: str | None, field: str):
    copy = caffe_pb2.NetParameter()
    copy.CopyFrom(param)
    return copy, f"{solver_path or '<solver>'} ({field})", _solver_dir(solver_path)


def train_net_spec(sp: caffe_pb2.SolverParameter, solver_path: str | None = None) -> NetSpec:
    """The train net of solver `sp` (read from disk when given by path)."""
    given = [f for f in ("train_net_param", "train_net", "net_param", "net") if sp.HasField(f)]
    if len(given) != 1:
        raise SolverError(f"{solver_path or 'solver'}: exactly one of train_net_param, "
                          f"train_net, net_param, net must be set to give the train net; "
                          f"found {given or 'none'}")
    field = given[0]
    if field.endswith("_param"):
        param, source, base = _inline(getattr(sp, field), solver_path, field)
    else:
        param, source, base = _from_file(getattr(sp, field), solver_path, f"train net ({field})")
    state = merged_state(caffe_pb2.TRAIN, param,
                         sp.train_state if sp.HasField("train_state") else None)
    return NetSpec(param, state, source, base)


def test_net_specs(sp: caffe_pb2.SolverParameter, solver_path: str | None = None) -> list[NetSpec]:
    """The test nets of solver `sp`, each with its `test_iter`."""
    generic = sp.HasField("net") or sp.HasField("net_param")
    explicit = len(sp.test_net_param) + len(sp.test_net)
    n_iter = len(sp.test_iter)
    if generic and n_iter < explicit:
        raise SolverError(f"{solver_path or 'solver'}: {n_iter} test_iter entries for at least "
                          f"{explicit} test nets; give one test_iter per test net")
    if not generic and n_iter != explicit:
        raise SolverError(f"{solver_path or 'solver'}: {n_iter} test_iter entries for "
                          f"{explicit} test nets; give exactly one test_iter per test net")
    sources: list[tuple[caffe_pb2.NetParameter, str, str]] = []
    for i, param in enumerate(sp.test_net_param):
        sources.append(_inline(param, solver_path, f"test_net_param #{i}"))
    for path in sp.test_net:
        sources.append(_from_file(path, solver_path, "test net (test_net)"))
    if generic:
        for _ in range(n_iter - explicit):
            if sp.HasField("net_param"):
                sources.append(_inline(sp.net_param, solver_path, "net_param"))
            else:
                sources.append(_from_file(sp.net, solver_path, "net"))
    if len(sp.test_state) and len(sp.test_state) != len(sources):
        raise SolverError(f"{solver_path or 'solver'}: {len(sp.test_state)} test_state entries "
                          f"for {len(sources)} test nets; give none or one per test net")
    if sources and sp.test_interval <= 0:
        raise SolverError(f"{solver_path or 'solver'}: test nets are defined but test_interval "
                          f"is {sp.test_interval}; set test_interval > 0 (or remove test_iter)")
    specs = []
    for i, (param, source, base) in enumerate(sources):
        override = sp.test_state[i] if len(sp.test_state) else None
        specs.append(NetSpec(param, merged_state(caffe_pb2.TEST, param, override), source, base,
                             test_iter=int(sp.test_iter[i])))
    return specs
