"""Binary and text I/O of Caffe files against files real Caffe wrote (tests/oracle)."""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pytest
from google.protobuf import unknown_fields

from hovcaffe.caffe import caffe_pb2 as pb
from hovcaffe.caffe import io
from hovcaffe.caffe.wire import encode_varint, len_field
from hovcaffe.errors import PrototxtError, WeightsError
from conftest import ORACLE, SHARED_ORACLE

CAFFEMODELS = sorted(ORACLE.rglob("*.caffemodel"))
SOLVERSTATES = sorted(ORACLE.rglob("*.solverstate"))
NET_PROTOTXTS = sorted(p for p in ORACLE.rglob("*.prototxt") if p.name != "solver.prototxt")
SOLVER_PROTOTXTS = sorted(ORACLE.rglob("solver.prototxt"))


def _ids(paths):
    return [str(p.relative_to(ORACLE)) for p in paths]


def unknown_field_paths(msg, prefix: str = "") -> list[str]:
    """Every place in `msg` (recursively) holding fields our schema does not know."""
    found = [prefix or "<root>"] if len(unknown_fields.UnknownFieldSet(msg)) else []
    for field, value in msg.ListFields():
        if field.message_type is None:
            continue
        items = value if field.is_repeated else [value]
        for i, item in enumerate(items):
            found += unknown_field_paths(item, f"{prefix}.{field.name}[{i}]")
    return found


def blobs_by_layer(net: pb.NetParameter) -> dict[str, list[np.ndarray]]:
    return {layer.name: [io.blob_to_array(b) for b in layer.blobs] for layer in net.layer}


def test_oracle_has_files_of_each_kind():
    assert len(CAFFEMODELS) > 40 and len(SOLVERSTATES) >= 10 and len(NET_PROTOTXTS) > 40


@pytest.mark.parametrize("path", CAFFEMODELS, ids=_ids(CAFFEMODELS))
def test_caffemodel_from_caffe_loads_fully_and_round_trips(path: Path, tmp_path: Path):
    raw = io.read_caffemodel(path, upgrade=False)
    # Every byte Caffe wrote maps onto a field of our schema.
    assert unknown_field_paths(raw) == []
    net = io.read_caffemodel(path)
    assert len(net.layer) > 0 and not len(net.layers)
    blobs = blobs_by_layer(net)
    meta = path.parent / "meta.json"
    if path.name == "weights.caffemodel" and meta.is_file():
        # The parameter shapes Caffe reported for this case.
        expected = json.loads(meta.read_text())["params"]
        got = {k: [list(a.shape) for a in v] for k, v in blobs.items() if v}
        assert got == expected
    out = tmp_path / "copy.caffemodel"
    io.write_caffemodel(net, out)
    again = blobs_by_layer(io.read_caffemodel(out))
    assert again.keys() == blobs.keys()
    for name, arrays in blobs.items():
        assert len(again[name]) == len(arrays)
        for a, b in zip(arrays, again[name], strict=True):
            assert a.shape == b.shape and np.array_equal(a, b), name


@pytest.mark.parametrize("path", SOLVERSTATES, ids=_ids(SOLVERSTATES))
def test_solverstate_loads_and_round_trips(path: Path, tmp_path: Path):
    state = io.read_solverstate(path)
    assert unknown_field_paths(state) == []
    assert state.iter > 0 and state.learned_net.endswith(".caffemodel")
    assert len(state.history) > 0
    out = tmp_path / "copy.solverstate"
    io.write_solverstate(state, out)
    again = io.read_solverstate(out)
    assert again.iter == state.iter and again.learned_net == state.learned_net
    assert len(again.history) == len(state.history)
    for a, b in zip(state.history, again.history, strict=True):
        assert np.array_equal(io.blob_to_array(a), io.blob_to_array(b))


def test_solverstate_history_matches_the_learnable_blobs(tmp_path: Path):
    # SGD-family history holds one blob per learnable parameter, shaped like it.
    case = ORACLE / "train" / "sgd_step"
    state = io.read_solverstate(case / "final.solverstate")
    model = io.read_caffemodel(case / "final.caffemodel")
    shapes = [io.blob_to_array(b).shape for layer in model.layer for b in layer.blobs]
    assert [io.blob_to_array(h).shape for h in state.history] == shapes


@pytest.mark.parametrize("path", NET_PROTOTXTS, ids=_ids(NET_PROTOTXTS))
def test_oracle_net_prototxt_parses(path: Path):
    net = io.read_net(path)
    assert len(net.layer) > 0
    assert unknown_field_paths(net) == []


@pytest.mark.parametrize("path", SOLVER_PROTOTXTS, ids=_ids(SOLVER_PROTOTXTS))
def test_oracle_solver_prototxt_parses(path: Path):
    solver = io.read_solver(path)
    assert solver.max_iter == 40 and solver.random_seed == 1701


def test_prototxt_round_trip(tmp_path: Path):
    src = ORACLE / "forward" / "lenet" / "net.prototxt"
    net = io.read_net(src)
    out = tmp_path / "net.prototxt"
    io.write_prototxt(net, out)
    assert io.read_net(out) == net
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".tmp-")]


def test_big_caffemodel_over_64_mib_parses(tmp_path: Path):
    # Some protobuf builds refuse messages over 64 MiB; Caffe's own files are often larger.
    weights = np.arange(17 * 1024 * 1024, dtype=np.float32).reshape(17 * 1024, 1024)
    net = pb.NetParameter(name="big")
    io.array_to_blob(weights, net.layer.add(name="fc", type="InnerProduct").blobs.add())
    path = tmp_path / "big.caffemodel"
    io.write_caffemodel(net, path)
    assert path.stat().st_size > 64 * 2**20
    back = io.read_caffemodel(path)
    assert np.array_equal(io.blob_to_array(back.layer[0].blobs[0]), weights)


def test_blob_to_array_legacy_dims_and_double_data():
    blob = pb.BlobProto(num=2, channels=1, height=1, width=3)
    blob.data.extend([9.0] * 6)
    blob.double_data.extend([0.5, 1.5, 2.5, 3.5, 4.5, 5.5])
    arr = io.blob_to_array(blob)
    assert arr.shape == (2, 1, 1, 3) and arr.dtype == np.float32
    assert np.array_equal(arr.ravel(), np.array([0.5, 1.5, 2.5, 3.5, 4.5, 5.5], np.float32))
    assert io.has_legacy_shape(blob)


def test_blob_shape_rules_follow_caffe():
    # Legacy dims win over `shape` when both are present (Caffe's Blob::FromProto).
    blob = pb.BlobProto(num=1, channels=1, height=2, width=3)
    blob.shape.dim.extend([6])
    blob.data.extend(range(6))
    assert io.blob_to_array(blob).shape == (1, 1, 2, 3)
    # No shape information at all is a 0-axis scalar (how Caffe writes 0-d blobs).
    scalar = pb.BlobProto()
    scalar.data.append(2.5)
    assert io.blob_to_array(scalar).shape == () and float(io.blob_to_array(scalar)) == 2.5
    blob.data.append(7)
    with pytest.raises(WeightsError, match="7 values"):
        io.blob_to_array(blob)


def test_array_to_blob_matches_protobuf_api_encoding():
    arr = np.random.default_rng(0).standard_normal((3, 4, 5)).astype(np.float32)
    fast = io.array_to_blob(arr, diff=arr * 2)
    slow = pb.BlobProto()
    slow.shape.dim.extend([3, 4, 5])
    slow.data.extend(arr.ravel().tolist())
    slow.diff.extend((arr * 2).ravel().tolist())
    assert fast == slow
    assert np.array_equal(io.blob_to_array(fast, diff=True), arr * 2)
    assert io.blob_to_array(io.array_to_blob(np.float32(3.0))).shape == ()


def test_binaryproto_mean_file_round_trip(tmp_path: Path):
    mean = np.random.default_rng(1).uniform(0, 255, (1, 3, 8, 8)).astype(np.float32)
    legacy = pb.BlobProto(num=1, channels=3, height=8, width=8)  # how Caffe's tools write means
    legacy.data.extend(mean.ravel().tolist())
    path = tmp_path / "mean.binaryproto"
    path.write_bytes(legacy.SerializeToString())
    assert np.array_equal(io.blob_to_array(io.read_blobproto(path)), mean)
    io.write_blobproto(mean[0], tmp_path / "mean2.binaryproto")
    assert np.array_equal(io.blob_to_array(io.read_blobproto(tmp_path / "mean2.binaryproto")), mean[0])


def test_caffemodel_that_is_not_a_protobuf(tmp_path: Path):
    bad = tmp_path / "random.caffemodel"
    bad.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(WeightsError, match="random.caffemodel.*not a binary caffemodel"):
        io.read_caffemodel(bad)


def test_caffemodel_that_is_a_text_prototxt(tmp_path: Path):
    bad = tmp_path / "net.caffemodel"
    bad.write_text('name: "x"\nlayer { name: "a" type: "ReLU" }\n')
    with pytest.raises(WeightsError, match="looks like a text prototxt"):
        io.read_caffemodel(bad)


def test_missing_files_name_the_path(tmp_path: Path):
    with pytest.raises(WeightsError, match="nope.caffemodel"):
        io.read_caffemodel(tmp_path / "nope.caffemodel")
    with pytest.raises(PrototxtError, match="nope.prototxt: file not found"):
        io.read_net(tmp_path / "nope.prototxt")


def test_yahoo_fork_source_class_on_field_141_is_dropped(tmp_path: Path, caplog):
    # yahoo/caffe stored source_class as a string on LayerParameter field 141.
    data_layer = pb.LayerParameter(name="data", type="MemoryData", top=["data"])
    conv = pb.LayerParameter(name="conv", type="Convolution", bottom=["data"], top=["c"])
    io.array_to_blob(np.ones((2, 1, 3, 3), np.float32), conv.blobs.add())
    fork_layer = data_layer.SerializeToString() + len_field(141, b"com.yahoo.ml.caffe.LMDB")
    raw = len_field(100, fork_layer) + len_field(100, conv.SerializeToString())
    path = tmp_path / "cos.caffemodel"
    path.write_bytes(raw)
    with caplog.at_level(logging.INFO):
        net = io.read_caffemodel(path)
    assert [l.name for l in net.layer] == ["data", "conv"]
    assert not net.layer[0].HasField("bias_param")
    assert np.array_equal(io.blob_to_array(net.layer[1].blobs[0]), np.ones((2, 1, 3, 3)))
    assert "source_class" in caplog.text


def test_shared_oracle_big_models_load():
    found = sorted(SHARED_ORACLE.glob("forward/*/weights.caffemodel")) if SHARED_ORACLE.is_dir() else []
    big = [p for p in found if p.parent.name in ("caffenet", "googlenet")]
    if not big:
        pytest.skip(f"{SHARED_ORACLE} with the caffenet/googlenet cases is not on this machine")
    for path in big:
        net = io.read_caffemodel(path)
        assert sum(io.blob_to_array(b).size for l in net.layer for b in l.blobs) > 1_000_000


def test_encode_varint_is_protobuf_compatible():
    msg = pb.SolverState(iter=300, current_step=2**20)
    assert msg.SerializeToString() == b"\x08" + encode_varint(300) + b"\x20" + encode_varint(2**20)
