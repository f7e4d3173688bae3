"""NetState filtering: which layers exist in the TRAIN / TEST (and stage / level) view of a net.

Rules (Caffe's `Net::FilterNet` / `StateMeetsRule`):

* a NetStateRule is met when every part it sets holds: phase equal, level >= min_level,
  level <= max_level, every `stage` present in the state, no `not_stage` present;
* a layer with no rules is kept; with `include` rules it is kept when any rule is met;
  with `exclude` rules it is dropped when any rule is met; having both is an error.

Solver-built nets get their state by merging, in this order: the phase (TRAIN for the
train net, TEST for test nets), the net file's own `state`, then the solver's
`train_state` / `test_state[i]` (later values win; stage lists are appended).
"""
from __future__ import annotations

from typing import Iterable

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.errors import NetDefinitionError

_PHASES = {"TRAIN": pb.TRAIN, "TEST": pb.TEST}


def phase_value(phase: int | str) -> int:
    """caffe_pb2.TRAIN / TEST from an int or a (case-insensitive) name."""
    if isinstance(phase, str):
        try:
            return _PHASES[phase.upper()]
        except KeyError:
            raise ValueError(f"unknown phase {phase!r}; use TRAIN or TEST") from None
    if phase not in (pb.TRAIN, pb.TEST):
        raise ValueError(f"unknown phase {phase!r}; use caffe_pb2.TRAIN or caffe_pb2.TEST")
    return int(phase)


def net_state(phase: int | str, level: int = 0, stages: Iterable[str] = ()) -> pb.NetState:
    """A NetState for `phase` (TRAIN/TEST, int or name), `level` and `stages`.

    `level` is only set when non-zero, so merging this state into another keeps that
    state's level unless a level was asked for.
    """
    state = pb.NetState(phase=phase_value(phase), stage=list(stages))
    if level:
        state.level = level
    return state


def state_meets_rule(state: pb.NetState, rule: pb.NetStateRule) -> bool:
    """True when `state` satisfies every condition set in `rule`."""
    if rule.HasField("phase") and rule.phase != state.phase:
        return False
    if rule.HasField("min_level") and state.level < rule.min_level:
        return False
    if rule.HasField("max_level") and state.level > rule.max_level:
        return False
    stages = set(state.stage)
    if any(s not in stages for s in rule.stage):
        return False
    return not any(s in stages for s in rule.not_stage)


def layer_included(layer: pb.LayerParameter, state: pb.NetState, source: str = "") -> bool:
    """Whether `layer` belongs to the view of the net for `state`.

    Raises:
        NetDefinitionError: the layer has both include and exclude rules.
    """
    if len(layer.include) and len(layer.exclude):
        where = f"{source}: " if source else ""
        raise NetDefinitionError(
            f"{where}layer {layer.name!r} has both include and exclude rules; "
            "Caffe allows only one kind per layer")
    if len(layer.include):
        return any(state_meets_rule(state, r) for r in layer.include)
    return not any(state_meets_rule(state, r) for r in layer.exclude)


def filter_net(net_param: pb.NetParameter, state: pb.NetState | None = None,
               source: str = "") -> pb.NetParameter:
    """A copy of `net_param` holding only the layers of the view `state`.

    `state` defaults to the net's own `state` field (phase TEST when unset, as in Caffe).
    The result's `state` is set to the state used.
    """
    if state is None:
        state = net_param.state
    out = pb.NetParameter()
    out.CopyFrom(net_param)
    out.ClearField("layer")
    out.layer.extend(l for l in net_param.layer if layer_included(l, state, source))
    out.state.CopyFrom(state)
    return out


def merged_state(phase: int, net_param: pb.NetParameter | None,
                 override: pb.NetState | None) -> pb.NetState:
    """phase, then the net file's `state`, then `override` (protobuf MergeFrom semantics)."""
    state = pb.NetState(phase=phase)
    if net_param is not None and net_param.HasField("state"):
        state.MergeFrom(net_param.state)
    if override is not None:
        state.MergeFrom(override)
    return state
