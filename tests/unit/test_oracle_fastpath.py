"""The fast paths (`--fast on`: torch.compile; `auto`'s channels_last) against real Caffe's numbers.

The same oracle data and tolerances as test_oracle_forward.py / test_oracle_train.py, on the
small cases only (every compile costs tens of seconds on a 2-core machine): a layer and a whole
net forward in TEST, LeNet's TRAIN blobs and parameter gradients, and one 40-iteration training
trajectory. The eager path runs the full oracle suite in those files.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from conftest import ORACLE, forward_case_dir, load_json, load_npz
from hovcaffe.caffe import caffe_pb2
from hovcaffe.runtime.fastpath import enable_fast_path, installed
from test_oracle_forward import _assert_close, _net, _tolerances
from test_oracle_train import DEFAULT_LOSS_RTOL, DEFAULT_UPDATE_BOUNDS, run_case, update_errors


@pytest.fixture(autouse=True)
def own_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HOVCAFFE_CACHE", str(tmp_path / "cache"))


#: the fast-path candidates, each checked against Caffe's numbers on its own
CANDIDATES = ("compile", "channels_last")


@pytest.mark.parametrize("candidate", CANDIDATES)
@pytest.mark.parametrize("case", ["conv_basic", "lenet"])
def test_fast_forward_matches_caffe(case, candidate):
    d = forward_case_dir(case)
    rtol, atol = _tolerances(d)
    net = _net(d, "net.prototxt", caffe_pb2.TEST)
    inputs = {k: torch.from_numpy(v) for k, v in load_npz(d / "input.npz").items()}
    choice = enable_fast_path(net, "on", inputs, training=False, candidate=candidate)
    assert choice.path == candidate and installed(net) == candidate
    with torch.inference_mode():
        blobs = net(**inputs)
    for name, value in load_npz(d / "blobs.npz").items():
        _assert_close(blobs[name], value, rtol, atol, f"{case} ({candidate}): blob {name!r}")


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_fast_lenet_train_blobs_and_gradients_match_caffe(candidate):
    d = forward_case_dir("lenet")
    rtol, atol = _tolerances(d)
    net = _net(d, "net_train.prototxt", caffe_pb2.TRAIN)
    inputs = {k: torch.from_numpy(v) for k, v in load_npz(d / "input.npz").items()}
    if (d / "train_input.npz").exists():
        inputs.update({k: torch.from_numpy(v) for k, v in load_npz(d / "train_input.npz").items()})
    enable_fast_path(net, "on", inputs, training=True, candidate=candidate)
    blobs = net(**inputs)
    if candidate == "channels_last":  # the layout really changed, and reached the tops
        conv2 = net.layers["conv2"].blobs[0]
        assert conv2.is_contiguous(memory_format=torch.channels_last) and not conv2.is_contiguous()
        assert not blobs["conv1"].is_contiguous()
    net.objective(blobs).backward()
    for name, value in load_npz(d / "train_blobs.npz").items():
        if not name.startswith("params_"):
            _assert_close(blobs[name], value, rtol, atol, f"lenet ({candidate}): TRAIN blob {name!r}")
    params = {k: v for k, v in load_npz(d / "grads.npz").items() if not k.startswith("blob_diff/")}
    assert params
    for key, value in params.items():
        layer, i = key.rsplit("/", 1)
        grad = net.layers[layer].blobs[int(i)].grad
        _assert_close(grad, value, 1e-4, 1e-5, f"lenet ({candidate}): {key}")


@pytest.mark.parametrize("candidate", CANDIDATES)
def test_fast_training_trajectory_matches_caffe(tmp_path, monkeypatch, candidate):
    """40 SGD iterations (step policy) on the candidate (for channels_last the snapshot and the
    final weights are written from channels-last weights): losses and the final weights'
    updates within test_oracle_train's bounds for the eager path."""
    import functools

    from hovcaffe.runtime import fastpath
    from hovcaffe.training import loop

    monkeypatch.setattr(loop, "enable_fast_path",
                        functools.partial(fastpath.enable_fast_path, candidate=candidate))
    folder = ORACLE / "train" / "sgd_step"
    trainer, result, _ = run_case("sgd_step", tmp_path, fast="on")
    assert installed(trainer.train_net) == candidate
    expected = load_json(folder / "losses.json")
    np.testing.assert_allclose(result.losses, expected["loss"], rtol=DEFAULT_LOSS_RTOL)
    worst, off = update_errors(trainer.train_net, folder / "init.caffemodel",
                               folder / "final.caffemodel", rel=1e-3)
    assert worst <= DEFAULT_UPDATE_BOUNDS[0] and off <= DEFAULT_UPDATE_BOUNDS[1], (worst, off)


def test_transform_predictor_on_the_compiled_path_matches_caffe():
    """CaffeModel.transform's executor side with the `fast` Param on: LeNet's scores and a feature
    blob for the oracle's input rows, against Caffe's blobs (no Spark: the Predictor alone)."""
    from hovcaffe.caffe.io import read_net
    from hovcaffe.data.transform import TransformSpec
    from hovcaffe.ml.deploy import plan_inference
    from hovcaffe.ml.inference import PredictorSpec, Predictor

    d = forward_case_dir("lenet")
    rtol, atol = _tolerances(d)
    rows = load_npz(d / "input.npz")["data"]
    want = load_npz(d / "blobs.npz")
    plan = plan_inference(read_net(d / "net.prototxt"), input_blob="data", sample_shape=None,
                          batch_size=len(rows), output_blob="prob", feature_blobs=("ip1",))
    spec = PredictorSpec(plan.net_param.SerializeToString(), "data", "prob", True, ("ip1",),
                         plan.sample_shape, TransformSpec(), "array", "unchanged", len(rows),
                         fast="on")
    predictor = Predictor(spec, (d / "weights.caffemodel").read_bytes())
    assert installed(predictor.net) == "compile"
    got = predictor.forward(rows)
    for blob in ("prob", "ip1"):
        _assert_close(torch.from_numpy(got[blob]), want[blob].reshape(len(rows), -1), rtol, atol,
                      f"transform (compiled): {blob}")


def test_hovcaffe_test_on_the_compiled_path_matches_caffe_and_reads_the_same_batches(monkeypatch):
    """`hovcaffe test --fast on` over the sgd_step case's TEST set (2 batches of 32) with the
    initial weights gives Caffe's iteration-0 test scores; with one batch it scores the same
    batch as eager (measuring rewinds the feeder: the set has two batches, so a skipped batch
    would score the other one)."""
    import json

    from click.testing import CliRunner

    from hovcaffe.cli import main

    folder = ORACLE / "train" / "sgd_step"
    monkeypatch.chdir(folder)
    args = ["test", "-model", "net_train_test.prototxt", "-weights", "init.caffemodel", "--json"]

    def scores(*extra):
        result = CliRunner().invoke(main, args + list(extra))
        assert result.exit_code == 0, result.output
        return json.loads(result.output.strip().splitlines()[-1])["outputs"]

    caffe = load_json(folder / "test.json")["exact"]["0"]
    both = scores("-iterations", "2", "--fast", "on")
    assert both["accuracy"] == caffe["accuracy"]
    np.testing.assert_allclose(both["loss"], caffe["loss"], rtol=1e-5)
    one_fast = scores("-iterations", "1", "--fast", "on")
    one_eager = scores("-iterations", "1", "--fast", "off")
    assert one_fast["accuracy"] == one_eager["accuracy"]
    np.testing.assert_allclose(one_fast["loss"], one_eager["loss"], rtol=1e-5)
    other_loss = 2 * both["loss"] - one_fast["loss"]   # the second batch's, from the mean
    assert abs(other_loss - one_fast["loss"]) > 1e-3     # so a skipped batch would show
