"""The NetState of each net of a solver, merged as Caffe's Solver does (net state, then the
solver's train_state / test_state override; solver.cpp InitTrainNet / InitTestNets)."""
from __future__ import annotations

import pytest

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe import io
from hovcaffe.caffe.state import net_state
from hovcaffe.errors import SolverError
from hovcaffe.training import nets  # (its test_net_specs would look like a test to pytest)

NET = 'net_param { state { stage: "base" level: 5 } layer { name: "x" type: "Input" top: "x" } }'


def test_solver_states_merge_like_caffe():
    solver = io.parse_solver(NET + """
        test_iter: 10 test_iter: 20 test_interval: 100
        train_state { stage: "t" level: 2 }
        test_state { stage: "val" } test_state { stage: "test-on-train" level: 1 }""")
    train = nets.train_net_spec(solver).state
    tests = [spec.state for spec in nets.test_net_specs(solver)]
    assert train.phase == pb.TRAIN and list(train.stage) == ["base", "t"] and train.level == 2
    assert [t.phase for t in tests] == [pb.TEST, pb.TEST]
    assert [list(t.stage) for t in tests] == [["base", "val"], ["base", "test-on-train"]]
    assert [t.level for t in tests] == [5, 1]


def test_solver_without_states_gives_plain_phases():
    solver = io.parse_solver('net_param { layer { name: "x" type: "Input" top: "x" } } '
                             'test_iter: 1 test_interval: 10')
    assert nets.train_net_spec(solver).state == net_state("TRAIN")
    assert [spec.state for spec in nets.test_net_specs(solver)] == [net_state("TEST")]


def test_wrong_number_of_test_states_is_an_error():
    solver = io.parse_solver(NET + ' test_iter: 1 test_iter: 2 test_interval: 5 test_state { stage: "x" }')
    with pytest.raises(SolverError, match="1 test_state entries for 2 test nets"):
        nets.test_net_specs(solver)
