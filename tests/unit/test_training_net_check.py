"""`check_net` is the one validator of a net's structure: `CaffeNet` runs it on the view it
builds, so a local `hovcaffe train` (which builds its nets directly) reports Caffe's Net::Init
errors the same way the distributed preflight and `inspect` do."""
from __future__ import annotations

import pytest
from click.testing import CliRunner

from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.check import check_net
from hovcaffe.caffe.io import parse_net
from hovcaffe.cli import main
from hovcaffe.errors import NetDefinitionError
from hovcaffe.net import CaffeNet

NET = """
layer { name: "x" type: "DummyData" top: "x" top: "y"
        dummy_data_param { shape { dim: 4 dim: 3 } shape { dim: 4 dim: 2 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "out"
        inner_product_param { num_output: 2 } }
layer { name: "probe" type: "Power" bottom: "%s" top: "p" include { phase: TEST } }
layer { name: "loss" type: "EuclideanLoss" bottom: "out" bottom: "y" top: "loss" }
"""


def test_local_train_reports_check_nets_error_for_the_test_net(tmp_path):
    (tmp_path / "net.prototxt").write_text(NET % "ouy")  # a typo only the TEST net sees
    (tmp_path / "solver.prototxt").write_text(
        'net: "net.prototxt"\ntest_iter: 1\ntest_interval: 5\nbase_lr: 0.1\n'
        'lr_policy: "fixed"\nmax_iter: 5\nsnapshot_after_train: false\n')
    res = CliRunner().invoke(main, ["train", "-solver", str(tmp_path / "solver.prototxt"),
                                    "--snapshot-prefix", str(tmp_path / "s"), "--no-tensorboard"])
    assert res.exit_code == 2, res.output
    assert ("Unknown bottom blob 'ouy' (layer 'probe', bottom index 0) in the TEST net"
            in res.output), res.output
    assert "net.prototxt" in res.output


@pytest.mark.parametrize("layer,message", [
    ('layer { name: "a" type: "ReLU" bottom: "x" top: "x2" propagate_down: true '
     'propagate_down: false }', "has 2 propagate_down values for 1 bottoms"),
    ('layer { name: "a" type: "ReLU" bottom: "x" top: "a" loss_weight: 1 loss_weight: 2 }',
     "has 2 loss_weight values for 1 tops"),
    ('layer { name: "a" type: "ReLU" bottom: "x" top: "out" }',
     "Top blob 'out' produced by multiple sources: layer 'a'"),
])
def test_caffenet_raises_check_nets_messages(layer, message):
    net = parse_net(NET.replace('include { phase: TEST }', '') % "out" + layer)
    for build in (lambda: check_net(net, "n.prototxt", state=caffe_pb2.NetState(phase=0)),
                  lambda: CaffeNet(net, "TRAIN", source="n.prototxt")):
        with pytest.raises(NetDefinitionError, match=message):
            build()


def test_a_loss_layer_without_tops_may_weight_its_anonymous_top():
    net = parse_net(NET % "out" + 'layer { name: "l2" type: "EuclideanLoss" bottom: "out" '
                                  'bottom: "y" loss_weight: 0.5 }')
    check_net(net)
    built = CaffeNet(net, "TRAIN")
    assert built.loss_weights == {"loss": 1.0, "(l2 top 0)": 0.5}
