"""`hovcaffe export` (ONNX checked with onnxruntime, TorchScript, caffemodel) and
`hovcaffe forward` (the oracle's blobs.npz / grads.npz layouts)."""
from __future__ import annotations

import io
import os
import stat

import numpy as np
import onnxruntime as ort
import pytest
import torch
from click.testing import CliRunner

from conftest import ORACLE, load_npz
from hovcaffe.caffe import caffe_pb2
from hovcaffe.caffe.io import blob_to_array, read_caffemodel, read_net
from hovcaffe.cli import main
from hovcaffe.export import to_onnx_bytes, to_torchscript
from hovcaffe.net import CaffeNet
from hovcaffe.weights import load_caffemodel

FWD = ORACLE / "forward"


def oracle_net(case: str) -> CaffeNet:
    net = CaffeNet(read_net(FWD / case / "net.prototxt"), caffe_pb2.TEST)
    load_caffemodel(net, FWD / case / "weights.caffemodel", strict=True)
    return net.eval()


@pytest.mark.parametrize("case", ["resnet_style", "squeezenet_style", "cifar10_full"])
def test_onnx_export_runs_in_onnxruntime_with_another_batch_size(case):
    net = oracle_net(case)
    sess = ort.InferenceSession(to_onnx_bytes(net))
    assert [i.name for i in sess.get_inputs()] == net.input_names
    assert [o.name for o in sess.get_outputs()] == net.output_names
    shape = list(net.blob_shapes["data"])
    shape[0] = 5                                 # not the prototxt's batch
    x = np.random.RandomState(0).rand(*shape).astype(np.float32)
    got = sess.run(None, {"data": x})
    with torch.no_grad():
        want = net(data=torch.from_numpy(x))
    for name, value in zip(net.output_names, got):
        np.testing.assert_allclose(value, want[name].numpy(), rtol=1e-4, atol=1e-6)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.jit.save/load still work
def test_torchscript_export_has_a_dynamic_batch():
    net = oracle_net("lenet")
    scripted = to_torchscript(net)
    buf = io.BytesIO()
    torch.jit.save(scripted, buf)
    buf.seek(0)
    loaded = torch.jit.load(buf)
    x = torch.rand(7, 1, 28, 28)
    with torch.no_grad():
        (got,) = loaded(x)
        want = net(data=x)["prob"]
    torch.testing.assert_close(got, want)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")   # torch.jit.load still works
def test_export_command_writes_each_format(tmp_path):
    runner = CliRunner()
    case = FWD / "lenet"
    for fmt in ("onnx", "torchscript", "caffemodel"):
        out = tmp_path / f"m.{fmt}"
        res = runner.invoke(main, ["export", str(case / "net.prototxt"), "-weights",
                                   str(case / "weights.caffemodel"), "--format", fmt, "-o", str(out)])
        assert res.exit_code == 0, res.output
    # Each file is loaded by a runtime other than hovcaffe and run on the oracle's input; its
    # output must be the probabilities real Caffe computed (blobs.npz).
    x = load_npz(case / "input.npz")["data"]
    want = load_npz(case / "blobs.npz")["prob"]
    (got_onnx,) = ort.InferenceSession(str(tmp_path / "m.onnx")).run(None, {"data": x})
    np.testing.assert_allclose(got_onnx, want, rtol=1e-4, atol=1e-6)
    loaded = torch.jit.load(str(tmp_path / "m.torchscript"))
    with torch.no_grad():
        (got_script,) = loaded(torch.from_numpy(x))
    np.testing.assert_allclose(got_script.numpy(), want, rtol=1e-4, atol=1e-6)
    saved = read_caffemodel(tmp_path / "m.caffemodel")
    assert [lp.name for lp in saved.layer] == [lp.name for lp in read_net(case / "net.prototxt").layer]
    # the caffemodel holds the same blobs as the one it was exported from, bit for bit
    source = {lp.name: [blob_to_array(b) for b in lp.blobs] for lp in read_caffemodel(case / "weights.caffemodel").layer}
    exported = {lp.name: [blob_to_array(b) for b in lp.blobs] for lp in saved.layer}
    assert {k for k, v in source.items() if v} == {k for k, v in exported.items() if v} != set()
    for name, arrays in source.items():
        assert len(exported[name]) == len(arrays), name
        for got, ref in zip(exported[name], arrays):
            np.testing.assert_array_equal(got.reshape(ref.shape), ref, err_msg=name)
    res = runner.invoke(main, ["export", str(case / "net.prototxt"), "--format", "onnx", "-o",
                               str(tmp_path / "x.onnx"), "--outputs", "nope"])
    assert res.exit_code == 2 and "unknown output blobs ['nope']" in res.output


def test_exports_get_the_usual_file_mode_and_unwritable_outputs_are_user_errors(tmp_path):
    """Atomic writes go through mkstemp (mode 0600); the file must end up as `open()` would make
    it (0666 minus the umask), or other users of a shared cluster cannot read the model."""
    case = FWD / "lenet"
    out = tmp_path / "m.onnx"
    previous = os.umask(0o022)
    try:
        res = CliRunner().invoke(main, ["export", str(case / "net.prototxt"), "--format", "onnx",
                                        "-o", str(out)])
    finally:
        os.umask(previous)
    assert res.exit_code == 0, res.output
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    res = CliRunner().invoke(main, ["export", str(case / "net.prototxt"), "--format", "onnx",
                                    "-o", str(blocker / "m.onnx")])
    assert res.exit_code == 2 and f"cannot write '{blocker / 'm.onnx'}'" in res.output, res.output


def test_forward_command_reproduces_the_oracle_layouts(tmp_path):
    case = FWD / "conv_basic"
    out = tmp_path / "out.npz"
    res = CliRunner().invoke(main, [
        "forward", str(case / "net_train.prototxt"), "--weights", str(case / "weights.caffemodel"),
        "--input", str(case / "input.npz"), "--input", str(case / "train_input.npz"),
        "--output", str(out), "--phase", "TRAIN", "--grads"])
    assert res.exit_code == 0, res.output
    got = load_npz(out)
    want = load_npz(case / "train_blobs.npz") | load_npz(case / "grads.npz")
    assert set(got) == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-5 * max(np.abs(v).max(), 1e-30),
                                   err_msg=k)
    # TEST phase, no grads: exactly the blobs.npz keys
    res = CliRunner().invoke(main, ["forward", str(case / "net.prototxt"), "-weights",
                                    str(case / "weights.caffemodel"), "-input",
                                    str(case / "input.npz"), "-output", str(out)])
    assert res.exit_code == 0, res.output
    got, want = load_npz(out), load_npz(case / "blobs.npz")
    assert set(got) == set(want)
    for k, v in want.items():
        np.testing.assert_allclose(got[k], v, rtol=1e-4, atol=1e-5 * max(np.abs(v).max(), 1e-30),
                                   err_msg=k)


def test_forward_command_errors_are_user_errors(tmp_path):
    case = FWD / "conv_basic"
    np.savez(tmp_path / "bad.npz", other=np.zeros(3, np.float32))
    res = CliRunner().invoke(main, ["forward", str(case / "net.prototxt"), "--input",
                                    str(tmp_path / "bad.npz"), "--output", str(tmp_path / "o.npz")])
    assert res.exit_code == 2
    assert "missing net input 'data'" in res.output
