"""`hovcaffe train -weights W` and `hovcaffe forward -weights W` read the same numbers from every
weights format: Caffe's .caffemodel, Caffe's HDF5 .caffemodel.h5 (`data/<layer>/<i>`),
.safetensors (`<layer>/<i>`) and a plain torch state_dict (.pt, read without unpickling code).

The .h5, .safetensors and .pt files are written here with h5py / safetensors / torch from the
numbers of a real Caffe caffemodel, decoded with the protobuf schema and numpy only. The results
must be identical across formats and agree with what Caffe itself computed (the oracle).
"""
from __future__ import annotations

import csv
import json

import h5py
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.numpy import save_file

from conftest import ORACLE
from hovcaffe.caffe import caffe_pb2
from hovcaffe.cli import main

FWD = ORACLE / "forward" / "lenet"
TRAIN = ORACLE / "train" / "sgd_multistep"
FORMATS = ("caffemodel", "v1.caffemodel", "caffemodel.h5", "safetensors", "pt")
#: V1LayerParameter.LayerType values of the weighted layers in these nets (caffe.proto)
V1_TYPES = {"Convolution": 4, "InnerProduct": 14}


def caffe_blobs(path) -> dict[str, list[np.ndarray]]:
    """layer name -> its blobs, straight from the protobuf (V2 `layer` with BlobShape)."""
    net = caffe_pb2.NetParameter()
    net.ParseFromString(path.read_bytes())
    assert len(net.layer) and not len(net.layers)
    return {layer.name: [np.asarray(b.data, np.float32).reshape(tuple(b.shape.dim))
                         for b in layer.blobs]
            for layer in net.layer if len(layer.blobs)}


def write_weights(src, folder) -> dict[str, str]:
    """The caffemodel `src` in every format, as {format: path}."""
    blobs = caffe_blobs(src)
    keyed = {f"{layer}/{i}": a for layer, arrays in blobs.items() for i, a in enumerate(arrays)}
    paths = {fmt: str(folder / f"w.{fmt}") for fmt in FORMATS}
    (folder / "w.caffemodel").write_bytes(src.read_bytes())
    v1 = caffe_pb2.NetParameter()  # the V1 form: `layers` with legacy 4-D blob dims
    for layer in caffe_pb2.NetParameter.FromString(src.read_bytes()).layer:
        if layer.name in blobs:
            old = v1.layers.add(name=layer.name, type=V1_TYPES[layer.type])
            for a in blobs[layer.name]:
                num, channels, height, width = (1,) * (4 - a.ndim) + a.shape
                old.blobs.add(num=num, channels=channels, height=height, width=width,
                              data=a.reshape(-1).tolist())
    (folder / "w.v1.caffemodel").write_bytes(v1.SerializeToString())
    with h5py.File(paths["caffemodel.h5"], "w") as fh:  # Caffe's Net::ToHDF5 layout
        data = fh.create_group("data")
        for layer, arrays in blobs.items():
            group = data.create_group(layer)
            for i, a in enumerate(arrays):
                group.create_dataset(str(i), data=a)
        fh.create_group("diff")
    save_file(keyed, paths["safetensors"])
    torch.save({k: torch.from_numpy(a) for k, a in keyed.items()}, paths["pt"])
    return paths


def invoke(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def test_forward_gives_the_same_blobs_for_every_format(tmp_path):
    paths = write_weights(FWD / "weights.caffemodel", tmp_path)
    outs = {}
    for fmt, path in paths.items():
        out = tmp_path / f"out-{fmt}.npz"
        res = invoke("forward", FWD / "net.prototxt", "-weights", path, "-input",
                     FWD / "input.npz", "-output", out)
        assert res.exit_code == 0, res.output
        assert "copied 4 layers" in res.output
        with np.load(out) as data:
            outs[fmt] = {k: data[k] for k in data.files}
    with np.load(FWD / "blobs.npz") as caffe:
        for name in caffe.files:  # Caffe's own forward
            np.testing.assert_allclose(outs["caffemodel"][name], caffe[name], rtol=1e-4,
                                       atol=1e-5 * float(np.abs(caffe[name]).max()), err_msg=name)
    for fmt in FORMATS[1:]:
        assert outs[fmt].keys() == outs["caffemodel"].keys()
        for name, value in outs["caffemodel"].items():
            np.testing.assert_array_equal(outs[fmt][name], value, err_msg=f"{fmt}: {name}")


def test_train_gives_the_same_losses_for_every_format(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    paths = write_weights(TRAIN / "init.caffemodel", tmp_path)
    losses = {}
    for fmt, path in paths.items():
        out = tmp_path / fmt
        res = invoke("train", "-solver", TRAIN / "solver.prototxt", "-weights", path,
                     "-iterations", 6, "--snapshot-prefix", out / "snap", "--metrics-csv",
                     out / "metrics.csv", "--no-tensorboard", "--no-progress")
        assert res.exit_code == 0, res.output
        with open(out / "metrics.csv", newline="") as fh:
            losses[fmt] = [float(r["loss"]) for r in csv.DictReader(fh) if r["lr"]]  # updates
        assert len(losses[fmt]) == 6
    caffe = json.loads((TRAIN / "losses.json").read_text())["loss"][:6]
    np.testing.assert_allclose(losses["caffemodel"], caffe, rtol=1e-5)
    for fmt in FORMATS[1:]:
        assert losses[fmt] == losses["caffemodel"], fmt


class _RunsCode:
    """Unpickling this would call print - what weights_only loading must refuse."""

    def __reduce__(self):
        return (print, ("UNPICKLED-CODE-RAN",))


@pytest.mark.parametrize("name,content,expect", [
    ("w.bin", b"\x00" * 16, "unknown weights format"),
    ("w.caffemodel", b"\xff\xff not a protobuf", "w.caffemodel"),
    ("w.caffemodel.h5", b"not hdf5", "cannot read HDF5 weights"),
    ("w.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{broken json}   ", "cannot read safetensors"),
    ("w.pt", None, "weights_only"),
])
def test_bad_weights_files_are_user_errors_naming_the_file(tmp_path, capsys, name, content, expect):
    path = tmp_path / name
    if content is None:
        torch.save({"ip/0": torch.zeros(2), "trap": _RunsCode()}, path)
    else:
        path.write_bytes(content)
    for args in (["forward", FWD / "net.prototxt", "-input", FWD / "input.npz", "-output",
                  tmp_path / "o.npz"],
                 ["test", "-model", FWD / "net.prototxt", "-iterations", 1, "--input-data",
                  FWD / "input.npz"]):
        res = invoke(*args, "-weights", path)
        assert res.exit_code == 2, res.output
        assert str(path) in res.output and expect in res.output, res.output
        assert "UNPICKLED-CODE-RAN" not in res.output + capsys.readouterr().out
