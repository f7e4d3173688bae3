"""NetState rules: include / exclude, phase, stage, not_stage, min / max level."""
from __future__ import annotations

import pytest

from conftest import ZOO
from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe import io
from hovcaffe.caffe.state import filter_net, net_state, state_meets_rule
from hovcaffe.errors import NetDefinitionError


def rule(text: str) -> pb.NetStateRule:
    return io.parse_text(text, pb.NetStateRule())


@pytest.mark.parametrize("rule_text, state, met", [
    ("", net_state("TRAIN"), True),
    ("phase: TRAIN", net_state("TRAIN"), True),
    ("phase: TRAIN", net_state("TEST"), False),
    ("min_level: 2", net_state("TEST", level=2), True),
    ("min_level: 2", net_state("TEST", level=1), False),
    ("max_level: 2", net_state("TEST", level=3), False),
    ("max_level: 2", net_state("TEST", level=-5), True),
    ("stage: 'a' stage: 'b'", net_state("TEST", stages=["b", "a", "c"]), True),
    ("stage: 'a' stage: 'b'", net_state("TEST", stages=["a"]), False),
    ("not_stage: 'deploy'", net_state("TEST", stages=["deploy"]), False),
    ("not_stage: 'deploy'", net_state("TEST", stages=["x"]), True),
    ("phase: TEST stage: 'x' not_stage: 'y' min_level: 0 max_level: 0",
     net_state("TEST", stages=["x"]), True),
])
def test_state_meets_rule(rule_text, state, met):
    assert state_meets_rule(state, rule(rule_text)) is met


NET = """
layer { name: "a" type: "ReLU" }
layer { name: "train_only" type: "ReLU" include { phase: TRAIN } }
layer { name: "test_or_stage" type: "ReLU" include { phase: TEST } include { stage: "s" } }
layer { name: "not_deploy" type: "ReLU" exclude { stage: "deploy" } }
layer { name: "level1" type: "ReLU" include { min_level: 1 } }
"""


@pytest.mark.parametrize("state, names", [
    (net_state("TRAIN"), ["a", "train_only", "not_deploy"]),
    (net_state("TEST"), ["a", "test_or_stage", "not_deploy"]),
    (net_state("TRAIN", stages=["s"]), ["a", "train_only", "test_or_stage", "not_deploy"]),
    (net_state("TEST", level=1, stages=["deploy"]), ["a", "test_or_stage", "level1"]),
])
def test_filter_net(state, names):
    view = filter_net(io.parse_net(NET), state)
    assert [l.name for l in view.layer] == names
    assert view.state == state


def test_filter_defaults_to_the_nets_own_state_which_defaults_to_test():
    assert [l.name for l in filter_net(io.parse_net(NET)).layer] == ["a", "test_or_stage", "not_deploy"]
    net = io.parse_net("state { phase: TRAIN }" + NET)
    assert "train_only" in [l.name for l in filter_net(net).layer]


def test_include_and_exclude_together_is_an_error():
    net = io.parse_net('layer { name: "bad" type: "ReLU" include { phase: TRAIN } exclude { phase: TEST } }')
    with pytest.raises(NetDefinitionError, match="layer 'bad' has both include and exclude"):
        filter_net(net, net_state("TRAIN"))


def test_net_state_accepts_names_and_numbers():
    assert net_state("train").phase == pb.TRAIN and net_state(pb.TEST).phase == pb.TEST
    with pytest.raises(ValueError):
        net_state("VALIDATE")


def test_caffeonspark_lrcn_stages():
    # lrcn_cos.prototxt selects its data layers with stages and not_stage.
    net = io.read_net(ZOO / "caffeonspark" / "lrcn_cos.prototxt")
    train = [l for l in filter_net(net, net_state("TRAIN")).layer if l.type == "CoSData"]
    assert len(train) == 1
    on_train = filter_net(net, net_state("TEST", stages=["test-on-train"]))
    assert any(l.type == "CoSData" for l in on_train.layer)
