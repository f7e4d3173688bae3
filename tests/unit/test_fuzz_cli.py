"""Property-based fuzzing of the CLI: zoo prototxts, a caffemodel, a solverstate and a job spec,
mutated by byte flips, truncation, swapped lines and deleted spans, given to the commands that
read them. Whatever the damage, a command exits 0, 1 or 2; a failure is one line on stderr
(`hovcaffe: error: ...`, never a traceback nor the "unexpected error" hint), and it leaves no
partial output behind (no output file, no `.tmp-*` staging).

Commands run in-process (click's CliRunner); one test runs a few mutations as real processes to
check stderr as a user sees it. Bounded: a few dozen examples per input kind, the same ones
each run (derandomized); HOVCAFFE_FUZZ_EXAMPLES=N hunts with N random ones.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import HealthCheck, event, given, settings, strategies as st

from conftest import ORACLE, ZOO
from hovcaffe.cli import main

LENET_DEPLOY = ORACLE / "forward" / "lenet" / "net.prototxt"
LENET_WEIGHTS = ORACLE / "forward" / "lenet" / "weights.caffemodel"
ZOO_NETS = [ZOO / "bvlc" / "mnist" / "lenet.prototxt", ZOO / "bvlc" / "cifar10" / "cifar10_quick.prototxt",
            ZOO / "bvlc" / "bvlc_alexnet" / "deploy.prototxt", ZOO / "bvlc" / "bvlc_googlenet" / "deploy.prototxt"]
TRAIN_CASE = ORACLE / "train" / "sgd_inv"
JOB_SPEC = """\
name: fuzzed
state_dir: state
env: {OMP_NUM_THREADS: "1"}
steps:
  - name: train
    type: train
    solver: case/solver.prototxt
    iterations: 4
    snapshot_every: 2
    outputs:
      model: models/{date}/lenet.caffemodel
  - name: score
    type: test
    model: case/net_train_test.prototxt
    weights: "{steps.train.outputs.model}"
    iterations: 2
    min_scores: {accuracy: 0.5}
"""
# HOVCAFFE_FUZZ_EXAMPLES=N runs N random examples per test instead (a longer hunt for bugs).
HUNT = int(os.environ.get("HOVCAFFE_FUZZ_EXAMPLES", "0"))


def fuzz_settings(examples: int) -> settings:
    return settings(max_examples=HUNT or examples, deadline=None, derandomize=not HUNT,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


FUZZ = fuzz_settings(40)


@st.composite
def mutation(draw, data: bytes, text: bool = False) -> bytes:
    """`data` damaged one way or another (text inputs also get whole lines swapped/dropped)."""
    kinds = ["flip", "truncate", "delete_span", "duplicate_span"] + (["swap_lines", "drop_line"] if text else [])
    kind = draw(st.sampled_from(kinds))
    n = len(data)
    if kind == "flip":
        out = bytearray(data)
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, n - 1))
            out[i] ^= draw(st.integers(1, 255))
        return bytes(out)
    if kind == "truncate":
        return data[: draw(st.integers(0, n - 1))]
    start = draw(st.integers(0, n - 1))
    end = draw(st.integers(start, min(n, start + 64)))
    if kind == "delete_span":
        return data[:start] + data[end:]
    if kind == "duplicate_span":
        return data[:end] + data[start:end] + data[end:]
    lines = data.split(b"\n")
    i, j = draw(st.integers(0, len(lines) - 1)), draw(st.integers(0, len(lines) - 1))
    if kind == "swap_lines":
        lines[i], lines[j] = lines[j], lines[i]
    else:
        del lines[i]
    return b"\n".join(lines)


def check_outcome(result, outputs: list[Path], folder: Path) -> None:
    """The contract: 0/1/2, one error line, nothing partial left."""
    assert result.exit_code in (0, 1, 2), (result.exit_code, result.output)
    event(f"exit {result.exit_code}")
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise AssertionError(f"uncaught {type(result.exception).__name__}: {result.exception}") from result.exception
    assert "Traceback" not in result.output
    if result.exit_code != 0:
        assert "HOVCAFFE_DEBUG" not in result.stderr, f"unexpected error: {result.stderr}"
        errors = [l for l in result.stderr.splitlines() if l.startswith(("hovcaffe: error:", "Error:"))]
        assert len(errors) == 1, result.stderr
        for out in outputs:
            assert not out.exists(), f"{out.name} left behind after exit {result.exit_code}: {result.stderr}"
    assert not [p for p in folder.rglob(".tmp-*")], sorted(folder.rglob(".tmp-*"))


def invoke(args: list[str]):
    return CliRunner().invoke(main, args, catch_exceptions=True)


@FUZZ
@given(data=st.data())
def test_mutated_zoo_prototxt(data):
    source = data.draw(st.sampled_from(ZOO_NETS))
    damaged = data.draw(mutation(source.read_bytes(), text=True))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        net = folder / "net.prototxt"
        net.write_bytes(damaged)
        check_outcome(invoke(["inspect", str(net)]), [], folder)
        out = folder / "up.prototxt"
        check_outcome(invoke(["upgrade", str(net), str(out)]), [out], folder)


@FUZZ
@given(data=st.data())
def test_mutated_deploy_prototxt_export(data):
    damaged = data.draw(mutation(LENET_DEPLOY.read_bytes(), text=True))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        net = folder / "net.prototxt"
        net.write_bytes(damaged)
        out = folder / "m.onnx"
        check_outcome(invoke(["export", str(net), "--format", "onnx", "-o", str(out)]), [out], folder)


@FUZZ
@given(data=st.data())
def test_mutated_caffemodel(data):
    damaged = data.draw(mutation(LENET_WEIGHTS.read_bytes()))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        weights = folder / "w.caffemodel"
        weights.write_bytes(damaged)
        check_outcome(invoke(["inspect", str(LENET_DEPLOY), "-weights", str(weights)]), [], folder)
        out = folder / "up.caffemodel"
        check_outcome(invoke(["upgrade", str(weights), str(out)]), [out], folder)


def _train_case(folder: Path) -> Path:
    for name in ("net_train_test.prototxt", "train_h5_list.txt", "test_h5_list.txt"):
        shutil.copy(TRAIN_CASE / name, folder / name)
    data = folder.parent / "_data"
    if not data.exists():
        shutil.copytree(ORACLE / "train" / "_data", data)
    solver = folder / "solver.prototxt"
    solver.write_text((TRAIN_CASE / "solver.prototxt").read_text()
                      .replace("max_iter: 40", "max_iter: 42").replace("test_interval: 20", "test_interval: 1000")
                      .replace("snapshot_after_train: false", "snapshot_after_train: true")
                      .replace('snapshot_prefix: "snap"', f'snapshot_prefix: "{folder}/snap"'))
    return solver


@fuzz_settings(15)
@given(data=st.data())
def test_mutated_solverstate_resume(data):
    damaged = data.draw(mutation((TRAIN_CASE / "final.solverstate").read_bytes()))
    with tempfile.TemporaryDirectory() as root:
        folder = Path(root) / "case"
        folder.mkdir()
        solver = _train_case(folder)
        state = folder / "resume_iter_40.solverstate"
        state.write_bytes(damaged)
        shutil.copy(TRAIN_CASE / "final.caffemodel", folder / "resume_iter_40.caffemodel")
        result = invoke(["train", "-solver", str(solver), "-snapshot", str(state), "--no-tensorboard",
                         "--no-progress", "--metrics-csv", str(folder / "m.csv")])
        check_outcome(result, [], folder)
        if result.exit_code != 0:  # nothing was trained, so no snapshot of this run exists
            assert not list(folder.glob("snap_iter_*"))


@FUZZ
@given(data=st.data())
def test_mutated_job_spec(data):
    damaged = data.draw(mutation(JOB_SPEC.encode(), text=True))
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        (folder / "case").mkdir()
        _train_case(folder / "case")
        spec = folder / "job.yaml"
        spec.write_bytes(damaged)
        result = invoke(["job", "status", str(spec), "--json"])
        check_outcome(result, [], folder)


def test_the_unmutated_inputs_succeed(tmp_path):
    """The fuzz tests above are only worth something if the intact files pass every command."""
    for net in ZOO_NETS:
        assert invoke(["inspect", str(net)]).exit_code == 0, net
        assert invoke(["upgrade", str(net), str(tmp_path / "up.prototxt")]).exit_code == 0, net
    result = invoke(["export", str(LENET_DEPLOY), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0, result.output
    assert invoke(["inspect", str(LENET_DEPLOY), "-weights", str(LENET_WEIGHTS)]).exit_code == 0
    assert invoke(["upgrade", str(LENET_WEIGHTS), str(tmp_path / "up.caffemodel")]).exit_code == 0
    folder = tmp_path / "case"
    folder.mkdir()
    solver = _train_case(folder)
    (tmp_path / "job.yaml").write_text(JOB_SPEC)
    result = invoke(["job", "status", str(tmp_path / "job.yaml"), "--json"])
    assert result.exit_code == 0, result.output
    shutil.copy(TRAIN_CASE / "final.solverstate", folder / "resume_iter_40.solverstate")
    shutil.copy(TRAIN_CASE / "final.caffemodel", folder / "resume_iter_40.caffemodel")
    result = invoke(["train", "-solver", str(solver), "-snapshot", str(folder / "resume_iter_40.solverstate"),
                     "--no-tensorboard", "--no-progress", "--metrics-csv", str(folder / "m.csv")])
    assert result.exit_code == 0, result.output
    assert (folder / "snap_iter_42.solverstate").exists()


@pytest.mark.parametrize("kind, make", [
    ("truncated net", lambda: LENET_DEPLOY.read_bytes()[:700]),
    ("net with binary garbage", lambda: LENET_DEPLOY.read_bytes()[:300] + bytes(range(256))),
    ("truncated caffemodel", lambda: LENET_WEIGHTS.read_bytes()[:5000]),
], ids=lambda v: v if isinstance(v, str) else "")
def test_damaged_files_end_with_one_stderr_line_in_a_real_process(tmp_path, kind, make):
    path = tmp_path / ("w.caffemodel" if "caffemodel" in kind else "net.prototxt")
    path.write_bytes(make())
    args = (["inspect", str(LENET_DEPLOY), "-weights", str(path)] if path.suffix == ".caffemodel"
            else ["export", str(path), "--format", "onnx", "-o", str(tmp_path / "m.onnx")])
    env = {k: v for k, v in os.environ.items() if k != "HOVCAFFE_DEBUG"}
    proc = subprocess.run([sys.executable, "-m", "hovcaffe.cli", *args], capture_output=True, text=True,
                          timeout=120, env=env)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hovcaffe: error: ") and str(path) in lines[0], proc.stderr
    assert not (tmp_path / "m.onnx").exists()
