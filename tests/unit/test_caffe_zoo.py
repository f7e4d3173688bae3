"""Every real-world prototxt under tests/zoo parses with our schema, as the kind it is."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

from conftest import ZOO
from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe import io
from hovcaffe.caffe.state import filter_net, net_state
from hovcaffe.errors import PrototxtError

FILES = sorted(ZOO.rglob("*.prototxt"))
# Top-level keys only a solver has; a net file never starts a line with them.
_SOLVER_KEY = re.compile(r"^\s*(base_lr|lr_policy|max_iter|net|train_net|test_iter|solver_mode)\s*:",
                         re.M)


def is_solver(path: Path) -> bool:
    return bool(_SOLVER_KEY.search(path.read_text()))


def test_zoo_is_there():
    assert len(FILES) >= 60
    assert sum(map(is_solver, FILES)) >= 20


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(ZOO)) for p in FILES])
def test_zoo_file_parses_as_its_kind(path: Path):
    text = path.read_text()
    if is_solver(path):
        solver = io.read_solver(path)
        assert solver.HasField("base_lr") or solver.HasField("net_param")
        with pytest.raises(PrototxtError):  # and it is not a net
            io.parse_net(text, str(path))
    else:
        net = io.read_net(path)
        assert len(net.layer) > 0 and not len(net.layers) and not len(net.input)
        for phase in ("TRAIN", "TEST"):
            filter_net(net, net_state(phase))
        with pytest.raises(PrototxtError):
            io.parse_solver(text, str(path))


def test_caffeonspark_extensions_are_read():
    net = io.read_net(ZOO / "caffeonspark" / "lenet_cos_train_test.prototxt")
    data = net.layer[0]
    assert data.type == "CoSData" and data.source_class == "com.yahoo.ml.caffe.DataFrameSource"
    p = data.cos_data_param
    assert p.batch_size == 64 and [t.name for t in p.top] == ["data", "label"]
    assert p.top[0].type == pb.CoSDataParameter.RAW_IMAGE and p.top[0].height == 28
    assert abs(p.top[0].transform_param.scale - 0.00390625) < 1e-12
    mem = io.read_net(ZOO / "caffeonspark" / "lenet_dataframe_train_test.prototxt").layer[0]
    assert mem.memory_data_param.source.endswith("mnist_train_dataframe/")
    assert mem.memory_data_param.share_in_parallel is False
    lrcn = io.read_net(ZOO / "caffeonspark" / "lrcn_cos.prototxt").layer[0].cos_data_param
    seq = lrcn.top[2]
    assert seq.type == pb.CoSDataParameter.INT_ARRAY and seq.transpose and seq.sample_num_axes == 1


def test_caffeonspark_fields_do_not_collide_with_bvlc_numbers():
    layer_numbers = {f.number for f in pb.LayerParameter.DESCRIPTOR.fields}
    ext = pb.LayerParameter.DESCRIPTOR.fields_by_name
    assert ext["source_class"].number > 10000 and ext["cos_data_param"].number > 10000
    assert ext["bias_param"].number == 141  # BVLC's, which yahoo/caffe once used for source_class
    assert len(layer_numbers) == len(pb.LayerParameter.DESCRIPTOR.fields)
