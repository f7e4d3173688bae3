"""The run modes of hovcaffe.runtime: exact precision flags, the fast-path choice and its cache.

No test here needs a GPU or a compiler: the precision flags are plain booleans torch keeps on every
build, and `auto` is exercised with a registered candidate that is eager plus a fixed delay, so its
verdict (eager wins) does not depend on the machine's speed. The compiled path itself is checked
against Caffe's numbers in test_oracle_fastpath.py.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch

from hovcaffe.caffe.io import parse_net
from hovcaffe.errors import UserInputError
from hovcaffe.net import CaffeNet
from hovcaffe.runtime import fastpath
from hovcaffe.runtime.choice_cache import ChoiceCache, FastRecord, choice_key
from hovcaffe.runtime.precision import Precision, apply_precision

REPO = Path(__file__).resolve().parents[2]

NET = """
input: "data" input_shape { dim: 4 dim: 2 dim: 5 dim: 5 }
input: "label" input_shape { dim: 4 }
layer { name: "conv" type: "Convolution" bottom: "data" top: "conv"
        convolution_param { num_output: 3 kernel_size: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "bn" type: "BatchNorm" bottom: "conv" top: "conv" }
layer { name: "drop" type: "Dropout" bottom: "conv" top: "conv" dropout_param { dropout_ratio: 0.5 } }
layer { name: "ip" type: "InnerProduct" bottom: "conv" top: "ip"
        inner_product_param { num_output: 3 weight_filler { type: "gaussian" std: 0.5 } } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def _net(phase: str = "TRAIN", batch: int = 4) -> CaffeNet:
    torch.manual_seed(3)
    text = NET.replace("dim: 4 dim: 2", f"dim: {batch} dim: 2").replace("dim: 4 }", f"dim: {batch} }}")
    return CaffeNet(parse_net(text), phase)


def _inputs(batch: int = 4) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(5)
    return {"data": torch.randn(batch, 2, 5, 5, generator=g),
            "label": torch.tensor([0.0, 1.0, 2.0, 1.0] * (batch // 4))}


@pytest.fixture
def tf32_flags():
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    yield
    torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def test_cuda_runs_are_exact_unless_tf32_is_asked_for(tf32_flags):
    """Only the device string is CUDA here; the flags are set without touching a GPU."""
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    apply_precision("cuda:0", Precision())
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (False, False)
    apply_precision("cuda", Precision(tf32=True))
    assert (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32) == (True, True)
    apply_precision("cpu", Precision())  # not a CUDA run: flags left as they are
    assert torch.backends.cudnn.allow_tf32 is True
    assert Precision().exact and not Precision(amp=True).exact


def test_amp_on_cpu_is_a_user_error():
    with pytest.raises(UserInputError, match="--amp needs a CUDA device"):
        apply_precision("cpu", Precision(amp=True))


def test_trainer_applies_exact_precision_for_a_cuda_config(tf32_flags, monkeypatch):
    """TrainConfig(device="cuda") reaches apply_precision before anything is built; the build
    itself is stopped there (no GPU), so this checks the order, not a CUDA run."""
    from hovcaffe.caffe.io import parse_solver
    from hovcaffe.training import loop

    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = True
    seen = []
    monkeypatch.setattr(loop, "train_net_spec", lambda *a: seen.append(
        (torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32))
        or (_ for _ in ()).throw(RuntimeError("stop")))
    with pytest.raises(RuntimeError, match="stop"):
        loop.Trainer(loop.TrainConfig(parse_solver("base_lr: 0.1 max_iter: 1"), device="cuda"))
    assert seen == [(False, False)]


def test_cache_key_follows_shapes_threads_and_pass_kind():
    net = _net()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        key = choice_key(net, _inputs(4), training=True, candidates=("compile",))
        assert key == choice_key(net, _inputs(4), training=True, candidates=("compile",))
        assert key != choice_key(_net(batch=8), _inputs(8), training=True, candidates=("compile",))
        assert key != choice_key(net, _inputs(4), training=False, candidates=("compile",))
        torch.set_num_threads(2)
        assert key != choice_key(net, _inputs(4), training=True, candidates=("compile",))
    finally:
        torch.set_num_threads(threads)
    assert key != choice_key(_net("TEST"), _inputs(4), training=True, candidates=("compile",))


@pytest.fixture
def slow_candidate(monkeypatch):
    """A candidate that is eager plus 300 ms per pass: auto must keep eager."""
    def install(net):
        eager = type(net).forward.__get__(net)

        def slowed(**inputs):
            time.sleep(0.3)
            return eager(**inputs)
        net.forward = slowed
    monkeypatch.setitem(fastpath.CANDIDATES, "slow", install)
    return "slow"


def test_auto_measures_keeps_eager_caches_and_leaves_the_net_untouched(tmp_path, slow_candidate):
    """BatchNorm statistics, Dropout's RNG and the gradients are what they were before measuring,
    so the run that follows is the eager one."""
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    rng = torch.get_rng_state()
    cache = ChoiceCache(tmp_path)
    choice = fastpath.enable_fast_path(net, "auto", _inputs(), training=True, cache=cache,
                                       candidate=slow_candidate)
    assert (choice.path, choice.decided_by) == ("eager", "measured")
    assert fastpath.installed(net) == "eager"
    for k, v in net.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert all(p.grad is None for p in net.parameters())
    assert torch.equal(torch.get_rng_state(), rng)
    stored = json.loads((tmp_path / "fast_path.json").read_text())
    assert [r["path"] for r in stored.values()] == ["eager"]

    again = fastpath.enable_fast_path(net, "auto", _inputs(), training=True, cache=cache,
                                      candidate=slow_candidate)
    assert (again.path, again.decided_by) == ("eager", "cache")


def test_a_cached_winner_is_used_only_when_it_earns_its_compile_time(tmp_path, slow_candidate):
    net, inputs = _net(), _inputs()
    cache = ChoiceCache(tmp_path)
    key = choice_key(net, inputs, training=True, candidates=(slow_candidate,))
    cache.put(key, FastRecord(slow_candidate, eager_ms=11.0, fast_ms=10.0, compile_s=5.0))
    short = fastpath.enable_fast_path(net, "auto", inputs, training=True, planned_passes=100,
                                      cache=cache, candidate=slow_candidate)
    assert short.path == "eager"            # saves 0.1 s, costs 5 s
    long = fastpath.enable_fast_path(net, "auto", inputs, training=True, planned_passes=10_000,
                                     cache=cache, candidate=slow_candidate)
    assert long.path == slow_candidate and fastpath.installed(net) == slow_candidate
    fastpath.enable_fast_path(net, "off", inputs, training=True)
    assert fastpath.installed(net) == "eager"


def test_cache_folder_follows_hovcaffe_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("HOVCAFFE_CACHE", str(tmp_path / "c"))
    assert ChoiceCache().path == tmp_path / "c" / "fast_path.json"
    monkeypatch.delenv("HOVCAFFE_CACHE")
    assert ChoiceCache().path == Path.home() / ".cache" / "hovcaffe" / "fast_path.json"


def test_unknown_mode_is_a_user_error():
    with pytest.raises(UserInputError, match="choose one of auto, on, off"):
        fastpath.enable_fast_path(_net(), "fastest", _inputs(), training=True)


def test_fast_off_never_imports_the_compiler(tmp_path):
    """`forward --fast off` and a Trainer step with fast="off" leave torch._dynamo unimported
    (a fresh interpreter: imports are per process)."""
    net = tmp_path / "net.prototxt"
    net.write_text(NET)
    torch.save(None, tmp_path / "unused.pt")
    import numpy as np
    np.savez(tmp_path / "in.npz", **{k: v.numpy() for k, v in _inputs().items()})
    code = textwrap.dedent(f"""
        import json, sys
        from click.testing import CliRunner
        from hovcaffe.commands.forward import cli
        r = CliRunner().invoke(cli, [{str(net)!r}, "--input", {str(tmp_path / 'in.npz')!r},
                                     "--output", {str(tmp_path / 'out.npz')!r}, "--fast", "off"])
        print(json.dumps({{"exit": r.exit_code, "out": r.output[-300:],
                          "dynamo": "torch._dynamo" in sys.modules}}))
    """)
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                         timeout=300, env={**os.environ, "HOVCAFFE_CACHE": str(tmp_path)})
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["exit"] == 0, result
    assert result["dynamo"] is False


def test_a_process_that_may_not_measure_uses_the_cache_or_eager(tmp_path, slow_candidate):
    """Distributed ranks pass may_measure=False: their backward passes reach the collectives."""
    net, inputs = _net(), _inputs()
    cache = ChoiceCache(tmp_path)
    first = fastpath.enable_fast_path(net, "auto", inputs, training=True, cache=cache,
                                      candidate=slow_candidate, may_measure=False)
    assert (first.path, first.decided_by) == ("eager", "not measured")
    assert not (tmp_path / "fast_path.json").exists()
    key = choice_key(net, inputs, training=True, candidates=(slow_candidate,))
    cache.put(key, FastRecord(slow_candidate, eager_ms=20.0, fast_ms=10.0, compile_s=1.0))
    cached = fastpath.enable_fast_path(net, "auto", inputs, training=True, cache=cache,
                                       candidate=slow_candidate, may_measure=False)
    assert (cached.path, cached.decided_by) == (slow_candidate, "cache")


def test_measuring_in_the_trainer_leaves_caffes_trajectory_intact(tmp_path, monkeypatch,
                                                                  slow_candidate):
    """`train --fast auto` measures on the first batch before the first update; with the
    candidate slowed (so eager is kept) the 40 SGD iterations still match Caffe's losses and
    final weights - measuring's forward/backward passes left no gradient or state behind."""
    import numpy as np

    from conftest import ORACLE, load_json
    from test_oracle_train import (DEFAULT_LOSS_RTOL, DEFAULT_UPDATE_BOUNDS, run_case,
                                   update_errors)

    monkeypatch.setattr(fastpath, "AUTO_CANDIDATES", ("compile",))
    monkeypatch.setitem(fastpath.CANDIDATES, "compile", fastpath.CANDIDATES[slow_candidate])
    monkeypatch.setenv("HOVCAFFE_CACHE", str(tmp_path / "cache"))
    folder = ORACLE / "train" / "sgd_step"
    trainer, result, _ = run_case("sgd_step", tmp_path, fast="auto")
    stored = json.loads((tmp_path / "cache" / "fast_path.json").read_text())
    assert [r["path"] for r in stored.values()] == ["eager"]
    expected = load_json(folder / "losses.json")
    np.testing.assert_allclose(result.losses, expected["loss"], rtol=DEFAULT_LOSS_RTOL)
    worst, off = update_errors(trainer.train_net, folder / "init.caffemodel",
                               folder / "final.caffemodel", rel=1e-3)
    assert worst <= DEFAULT_UPDATE_BOUNDS[0] and off <= DEFAULT_UPDATE_BOUNDS[1], (worst, off)


def test_channels_last_moves_only_the_layout_and_uninstall_moves_it_back(tmp_path):
    """Same Parameter objects and values, NHWC strides while installed; a cached channels_last
    choice is not taken by a process that may not measure (a distributed rank)."""
    net, inputs = _net(), _inputs()
    weight = net.layers["conv"].blobs[0]
    values = weight.detach().clone()
    fastpath.enable_fast_path(net, "on", inputs, training=True, candidate="channels_last")
    assert fastpath.installed(net) == "channels_last"
    assert net.layers["conv"].blobs[0] is weight and torch.equal(weight, values)
    assert weight.is_contiguous(memory_format=torch.channels_last) and not weight.is_contiguous()
    fastpath.enable_fast_path(net, "off", inputs, training=True)
    assert fastpath.installed(net) == "eager" and weight.is_contiguous()
    assert torch.equal(weight, values)

    cache = ChoiceCache(tmp_path)
    key = choice_key(net, inputs, training=True, candidates=fastpath.AUTO_CANDIDATES)
    cache.put(key, FastRecord("channels_last", eager_ms=20.0, fast_ms=10.0, compile_s=0.1))
    rank = fastpath.enable_fast_path(net, "auto", inputs, training=True, cache=cache,
                                     may_measure=False)
    assert rank.path == "eager" and weight.is_contiguous()
    local = fastpath.enable_fast_path(net, "auto", inputs, training=True, cache=cache)
    assert local.path == "channels_last"
    fastpath.uninstall(net)


def test_a_candidate_that_fails_on_the_net_is_left_out(tmp_path, monkeypatch):
    def broken(net):
        def fails(**inputs):
            raise RuntimeError("view size is not compatible with input tensor's size and stride")
        net.forward = fails
    monkeypatch.setitem(fastpath.CANDIDATES, "broken", broken)
    net = _net()
    choice = fastpath.enable_fast_path(net, "auto", _inputs(), training=True,
                                       cache=ChoiceCache(tmp_path),
                                       candidate="broken")
    assert (choice.path, choice.decided_by) == ("eager", "measured")
    assert fastpath.installed(net) == "eager"
