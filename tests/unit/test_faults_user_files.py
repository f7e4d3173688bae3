"""Faults in the user's files that once passed silently: an empty net file is a user error
(exit 2, one line naming the file) wherever a net is needed."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from hovcaffe.cli import main

NO_LAYERS = "the net has no layers"


@pytest.fixture
def empty_net(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "empty.prototxt").write_text("")
    (tmp_path / "named.prototxt").write_text('name: "nothing"\n')
    (tmp_path / "solver.prototxt").write_text('net: "empty.prototxt"\nbase_lr: 0.1\nmax_iter: 2\n'
                                              'lr_policy: "fixed"\nsnapshot_prefix: "s"\n')
    return tmp_path


@pytest.mark.parametrize("net", ["empty.prototxt", "named.prototxt"])
@pytest.mark.parametrize("args", [
    ["inspect", "{net}"], ["inspect", "{net}", "--json"], ["test", "-model", "{net}", "-iterations", "1"],
    ["time", "-model", "{net}", "-iterations", "1"], ["export", "{net}", "--format", "onnx", "-o", "e.onnx"],
    ["upgrade", "{net}", "out.prototxt"]], ids=lambda a: "-".join(a[:2]) if isinstance(a, list) else a)
def test_a_net_without_layers_is_a_user_error(empty_net, net, args):
    result = CliRunner().invoke(main, [a.format(net=net) for a in args])
    assert result.exit_code == 2, result.output
    assert f"{net}: {NO_LAYERS}" in result.output
    assert "MACs" not in result.output and "Traceback" not in result.output
    assert sorted(p.name for p in empty_net.iterdir()) == ["empty.prototxt", "named.prototxt", "solver.prototxt"]


def test_training_an_empty_net_is_a_user_error(empty_net):
    result = CliRunner().invoke(main, ["train", "-solver", "solver.prototxt"])
    assert result.exit_code == 2, result.output
    assert f"empty.prototxt: {NO_LAYERS}" in result.output
    assert not list(empty_net.glob("s_iter_*"))


def test_check_net_refuses_a_net_without_layers():
    from hovcaffe.caffe import caffe_pb2
    from hovcaffe.caffe.check import check_net
    from hovcaffe.errors import NetDefinitionError

    with pytest.raises(NetDefinitionError, match=f"^net.prototxt: {NO_LAYERS}"):
        check_net(caffe_pb2.NetParameter(name="x"), "net.prototxt")
