"""Options of `test`, `time` and `export` no other test used: --input-data, -stage, -level,
-phase, --data, --opset. Expected values come from real Caffe (the oracle's blobs) or by hand."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from conftest import ORACLE, load_npz
from data_fixtures import write_mnist
from hovcaffe.cli import main

LENET = ORACLE / "forward" / "lenet"

# y = x, plus a layer only the "double" stage has (y2 = 2x) and one only level >= 1 has (y3 = 3x)
STAGED = """
layer { name: "in" type: "Input" top: "x" input_param { shape { dim: 2 dim: 3 } } }
layer { name: "same" type: "Power" bottom: "x" top: "y" }
layer { name: "twice" type: "Power" bottom: "x" top: "y2" power_param { scale: 2 }
        include { stage: "double" } }
layer { name: "thrice" type: "Power" bottom: "x" top: "y3" power_param { scale: 3 }
        include { min_level: 1 } }
"""


def run(args):
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    return result


def test_test_input_data_gives_caffes_outputs():
    out = run(["test", "-model", str(LENET / "net.prototxt"), "-weights", str(LENET / "weights.caffemodel"),
               "--input-data", str(LENET / "input.npz"), "-iterations", "1", "--json"])
    got = json.loads(out.stdout)
    want = load_npz(LENET / "blobs.npz")["prob"].reshape(-1)
    assert got["iterations"] == 1 and list(got["outputs"]) == ["prob"]
    np.testing.assert_allclose(got["outputs"]["prob"], want, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("extra, outputs", [
    ([], {"y"}), (["-stage", "double"], {"y", "y2"}), (["-level", "1"], {"y", "y3"}),
    (["-stage", "double", "-level", "1"], {"y", "y2", "y3"})])
def test_test_stage_and_level_choose_the_layers(tmp_path, extra, outputs):
    (tmp_path / "net.prototxt").write_text(STAGED)
    x = np.arange(6, dtype=np.float32).reshape(2, 3) - 2.5
    np.savez(tmp_path / "x.npz", x=x)
    got = json.loads(run(["test", "-model", str(tmp_path / "net.prototxt"), "--input-data",
                          str(tmp_path / "x.npz"), "-iterations", "1", "--json", *extra]).stdout)["outputs"]
    assert set(got) == outputs
    for name, factor in (("y", 1), ("y2", 2), ("y3", 3)):
        if name in got:
            np.testing.assert_allclose(got[name], (factor * x).reshape(-1), rtol=1e-6)


def test_time_phase_builds_that_phases_net_and_data_feeds_it(tmp_path):
    src, _, _ = write_mnist(tmp_path / "src", n=64)
    from hovcaffe.data.convert import convert_source, make_source

    convert_source(make_source("mnist", str(src)), str(tmp_path / "digits"))
    net = (ORACLE.parent.parent / "examples" / "lenet" / "lenet_train_test.prototxt").read_text()
    (tmp_path / "net.prototxt").write_text(net.replace("batch_size: 64", "batch_size: 8")
                                           .replace("batch_size: 100", "batch_size: 8"))
    timings = {}
    for phase in ("TRAIN", "TEST"):
        out = run(["time", "-model", str(tmp_path / "net.prototxt"), "-phase", phase, "--data",
                   str(tmp_path / "digits"), "-iterations", "1", "--json"])
        timings[phase] = json.loads(out.stdout)
    train, test = timings["TRAIN"], timings["TEST"]
    # the TEST net has LeNet's Accuracy layer, the TRAIN net not; both end in the loss and, like
    # `caffe time`, run its backward pass in either phase
    assert "accuracy" in test["layers"] and "accuracy" not in train["layers"]
    assert "loss" in train["layers"] and "loss" in test["layers"]
    assert train["has_backward"] and any(v["backward_ms"] > 0.0 for v in train["layers"].values())
    # the data come from --data, not from the prototxt's source (which does not exist here)
    missing = CliRunner().invoke(main, ["time", "-model", str(tmp_path / "net.prototxt"), "--data",
                                        str(tmp_path / "nowhere"), "-iterations", "1"])
    assert missing.exit_code == 2 and "nowhere" in missing.output, missing.output


@pytest.mark.parametrize("opset", [13, 17])
def test_export_opset_is_the_models_opset_and_it_computes_caffes_output(tmp_path, opset):
    out = tmp_path / "m.onnx"
    run(["export", str(LENET / "net.prototxt"), "-weights", str(LENET / "weights.caffemodel"),
         "--format", "onnx", "-o", str(out), "--opset", str(opset)])
    model = onnx.load(str(out))
    assert {(o.domain or "ai.onnx", o.version) for o in model.opset_import if o.domain in ("", "ai.onnx")} == \
        {("ai.onnx", opset)}
    x = load_npz(LENET / "input.npz")["data"]
    (prob,) = ort.InferenceSession(str(out)).run(None, {"data": x})
    np.testing.assert_allclose(prob, load_npz(LENET / "blobs.npz")["prob"], rtol=1e-4, atol=1e-6)


def test_export_stage_adds_the_stages_layers(tmp_path):
    (tmp_path / "net.prototxt").write_text(STAGED)
    x = np.linspace(-1, 1, 6, dtype=np.float32).reshape(2, 3)
    outputs = {}
    for extra in ([], ["-stage", "double"]):
        out = tmp_path / f"m{len(extra)}.onnx"
        run(["export", str(tmp_path / "net.prototxt"), "--format", "onnx", "-o", str(out), *extra])
        sess = ort.InferenceSession(str(out))
        names = [o.name for o in sess.get_outputs()]
        outputs[tuple(extra)] = dict(zip(names, sess.run(None, {"x": x})))
    assert set(outputs[()]) == {"y"}
    staged = outputs[("-stage", "double")]
    assert set(staged) == {"y", "y2"}
    np.testing.assert_allclose(staged["y2"], 2 * x, rtol=1e-6)
