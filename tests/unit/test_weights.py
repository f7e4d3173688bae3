"""Caffemodel loading (Caffe's matching rules) and saving; state_dict and safetensors round trips."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ORACLE
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import blob_to_array, parse_net, read_caffemodel, read_net
from hovcaffe.errors import WeightsError
from hovcaffe.net import CaffeNet
from hovcaffe.weights import (load_caffemodel, load_weights, net_to_netparam,
                              save_caffemodel, save_safetensors)

LENET = ORACLE / "forward" / "lenet"
RESNET = ORACLE / "forward" / "resnet_style"

SMALL = '''
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "ip" type: "InnerProduct" bottom: "x" top: "y"
        inner_product_param { num_output: 4 weight_filler { type: "gaussian" } } }
layer { name: "bn" type: "BatchNorm" bottom: "y" top: "y" }
layer { name: "relu" type: "ReLU" bottom: "y" top: "y" }
'''


def small(**kw) -> CaffeNet:
    return CaffeNet(parse_net(SMALL), caffe_pb2.TEST, **kw)


def file_layer(net_param, name, *arrays, legacy=False):
    lp = net_param.layer.add(name=name, type="InnerProduct")
    for a in arrays:
        b = lp.blobs.add()
        if legacy:
            dims = (1,) * (4 - a.ndim) + a.shape
            b.num, b.channels, b.height, b.width = dims
        else:
            b.shape.dim.extend(a.shape)
        b.data.extend(a.ravel().tolist())
    return lp


def blobs_of(net):
    return {f"{n}/{i}": p.detach().clone() for n, m in net.layers.items()
            for i, p in enumerate(m.blobs)}


def test_caffemodel_round_trip_keeps_every_layer_in_order(tmp_path):
    net = CaffeNet(read_net(RESNET / "net.prototxt"), caffe_pb2.TEST)
    load_caffemodel(net, RESNET / "weights.caffemodel", strict=True)
    save_caffemodel(net, tmp_path / "w.caffemodel")
    saved = read_caffemodel(tmp_path / "w.caffemodel")
    assert [lp.name for lp in saved.layer] == [lp.name for lp in net.net_param.layer]
    bn = next(lp for lp in saved.layer if lp.type == "BatchNorm")
    assert len(bn.blobs) == 3 and [p.lr_mult for p in bn.param] == [0, 0, 0]
    # the values are Caffe's, blob for blob
    original = {lp.name: lp for lp in read_caffemodel(RESNET / "weights.caffemodel").layer}
    for lp in saved.layer:
        for i, b in enumerate(lp.blobs):
            np.testing.assert_array_equal(blob_to_array(b), blob_to_array(original[lp.name].blobs[i]))
    torch.manual_seed(5)
    fresh = CaffeNet(read_net(RESNET / "net.prototxt"), caffe_pb2.TEST)
    report = load_caffemodel(fresh, tmp_path / "w.caffemodel", strict=True)
    assert report.missing == [] and len(report.copied) == sum(len(m.blobs) > 0
                                                            for m in net.layers.values())
    for k, v in blobs_of(net).items():
        assert torch.equal(v, blobs_of(fresh)[k]), k


def test_legacy_4d_blob_shapes_are_compared_right_aligned():
    net = small()
    w = np.arange(12, dtype=np.float32).reshape(4, 3)
    np_ = caffe_pb2.NetParameter()
    file_layer(np_, "ip", w, np.ones(4, np.float32), legacy=True)   # 1x1x4x3 and 1x1x1x4
    report = load_caffemodel(net, np_)
    assert report.copied == ["ip"] and report.missing == ["bn"]
    np.testing.assert_array_equal(net.layers["ip"].blobs[0].detach().numpy(), w)
    bad = caffe_pb2.NetParameter()
    file_layer(bad, "ip", w.T.copy(), np.ones(4, np.float32), legacy=True)
    with pytest.raises(WeightsError, match=r"layer 'ip'.*file blob \[1, 1, 3, 4\], net blob \[4, 3\]"):
        load_caffemodel(net, bad)


def test_blob_count_mismatch_strict_and_skip():
    net = small()
    one = caffe_pb2.NetParameter()
    file_layer(one, "ip", np.zeros((4, 3), np.float32))
    with pytest.raises(WeightsError, match="layer 'ip' has 1 blobs in the weights file but 2"):
        load_caffemodel(net, one)
    before = net.layers["ip"].blobs[0].detach().clone()
    report = load_caffemodel(net, one, skip_mismatched=True)
    assert report.mismatched == ["ip"] and torch.equal(before, net.layers["ip"].blobs[0])
    empty = caffe_pb2.NetParameter()
    file_layer(empty, "other", np.zeros(2, np.float32))
    report = load_caffemodel(net, empty)
    assert report.skipped == ["other"] and report.missing == ["ip", "bn"]
    with pytest.raises(WeightsError, match="no weights for layers ip, bn"):
        load_caffemodel(net, empty, strict=True)


def test_several_weight_files_apply_in_order(tmp_path):
    net = small()
    a, b = caffe_pb2.NetParameter(), caffe_pb2.NetParameter()
    file_layer(a, "ip", np.full((4, 3), 1, np.float32), np.zeros(4, np.float32))
    file_layer(b, "ip", np.full((4, 3), 2, np.float32), np.zeros(4, np.float32))
    (tmp_path / "a.caffemodel").write_bytes(a.SerializeToString())
    (tmp_path / "b.caffemodel").write_bytes(b.SerializeToString())
    report = load_weights(net, f"{tmp_path / 'a.caffemodel'},{tmp_path / 'b.caffemodel'}")
    assert torch.all(net.layers["ip"].blobs[0] == 2) and report.copied == ["ip"]
    with pytest.raises(WeightsError, match="not found"):
        load_weights(net, str(tmp_path / "missing.caffemodel"))


def test_state_dict_and_safetensors_round_trips(tmp_path):
    torch.manual_seed(0)
    net = CaffeNet(read_net(LENET / "net.prototxt"), caffe_pb2.TEST)
    load_caffemodel(net, LENET / "weights.caffemodel")
    x = torch.rand(net.blob_shapes["data"])
    want = net(data=x)["prob"]
    torch.manual_seed(1)
    other = CaffeNet(read_net(LENET / "net.prototxt"), caffe_pb2.TEST)
    assert not torch.equal(other(data=x)["prob"], want)
    other.load_state_dict(net.state_dict())
    assert torch.equal(other(data=x)["prob"], want)
    save_safetensors(net, tmp_path / "w.safetensors")
    torch.manual_seed(2)
    third = CaffeNet(read_net(LENET / "net.prototxt"), caffe_pb2.TEST)
    report = load_weights(third, str(tmp_path / "w.safetensors"))
    assert report.missing == [] and torch.equal(third(data=x)["prob"], want)
    bn_net = small()
    with torch.no_grad():
        bn_net.layers["bn"].blobs[2].fill_(3.0)
    save_safetensors(bn_net, tmp_path / "bn.safetensors")
    fresh = small()
    load_weights(fresh, str(tmp_path / "bn.safetensors"))
    assert float(fresh.layers["bn"].blobs[2]) == 3.0


def test_net_to_netparam_writes_layers_without_params_too():
    net = small()
    out = net_to_netparam(net)
    assert [(lp.name, len(lp.blobs)) for lp in out.layer] == [("in", 0), ("ip", 2), ("bn", 3),
                                                                 ("relu", 0)]
    assert all(lp.phase == caffe_pb2.TEST for lp in out.layer)


def test_corrupt_blob_names_file_and_layer_and_leaves_the_layer_untouched(tmp_path):
    net = small()
    before = [p.detach().clone() for p in net.layer("ip").blobs]
    netparam = caffe_pb2.NetParameter()
    lp = netparam.layer.add(name="ip", type="InnerProduct")
    lp.blobs.add().CopyFrom(caffe_pb2.BlobProto(data=[0.5] * 12, shape={"dim": [4, 3]}))
    lp.blobs.add().CopyFrom(caffe_pb2.BlobProto(data=[1.0] * 3, shape={"dim": [4]}))  # 3 of 4
    path = tmp_path / "corrupt.caffemodel"
    path.write_bytes(netparam.SerializeToString())
    with pytest.raises(WeightsError, match=r"corrupt\.caffemodel: layer 'ip': .*3 values"):
        load_caffemodel(net, path)
    for p, b in zip(net.layer("ip").blobs, before):
        assert torch.equal(p.detach(), b)
