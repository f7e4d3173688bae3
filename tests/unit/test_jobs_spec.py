"""Job spec loading: every mistake is a JobSpecError naming the file, the key path and (YAML) the line."""
from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from hovcaffe.errors import EXIT_USAGE, JobSpecError
from hovcaffe.jobs.spec import load_spec

GOOD = """\
name: nightly
state_dir: state
vars:
  root: out
steps:
  - name: make
    type: shell
    argv: [echo, "{outputs.data}"]
    outputs:
      data: "{vars.root}/{date:%Y/%m/%d}/data.txt"
  - name: train
    type: train
    solver: solver.prototxt
    iterations: 20
    snapshot_every: 5
    outputs:
      model: "{vars.root}/{date}/model.caffemodel"
  - name: score
    type: test
    model: net.prototxt
    weights: "{steps.train.outputs.model}"
    min_scores: {accuracy: 0.5}
"""


def write(tmp_path: Path, text: str, name: str = "job.yaml") -> Path:
    (tmp_path / "solver.prototxt").write_text("net: 'net.prototxt'\n")
    (tmp_path / "net.prototxt").write_text("name: 'n'\n")
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def error_of(tmp_path: Path, text: str, name: str = "job.yaml") -> str:
    path = write(tmp_path, text, name)
    with pytest.raises(JobSpecError) as info:
        load_spec(path)
    message = str(info.value)
    assert message.startswith(str(path)), message  # always names the file
    return message


def test_good_spec_loads_with_paths_against_the_spec_folder(tmp_path, monkeypatch):
    monkeypatch.chdir("/")  # cron starts jobs elsewhere: relative paths must not depend on the cwd
    spec = load_spec(write(tmp_path, GOOD))
    assert spec.name == "nightly"
    assert spec.state_dir == (tmp_path / "state").resolve()
    assert spec.workdir == tmp_path.resolve()
    assert [s.name for s in spec.steps] == ["make", "train", "score"]
    train = spec.step("train")
    assert train.type == "train" and train.options["iterations"] == 20
    assert train.options["snapshot_every"] == 5 and train.outputs == {"model": "{vars.root}/{date}/model.caffemodel"}
    assert spec.step("score").options["min_scores"] == {"accuracy": 0.5}
    assert spec.stale_after == 3600.0


def test_toml_spec_is_equivalent(tmp_path):
    toml = """\
    name = "nightly"
    state_dir = "state"
    [vars]
    root = "out"
    [[steps]]
    name = "make"
    type = "shell"
    argv = ["echo", "{outputs.data}"]
    outputs = { data = "{vars.root}/{date:%Y/%m/%d}/data.txt" }
    [[steps]]
    name = "train"
    type = "train"
    solver = "solver.prototxt"
    iterations = 20
    snapshot_every = 5
    outputs = { model = "{vars.root}/{date}/model.caffemodel" }
    [[steps]]
    name = "score"
    type = "test"
    model = "net.prototxt"
    weights = "{steps.train.outputs.model}"
    min_scores = { accuracy = 0.5 }
    """
    a = load_spec(write(tmp_path, GOOD))
    b = load_spec(write(tmp_path, toml, "job.toml"))
    assert len(a.steps) == len(b.steps) > 0
    for x, y in zip(a.steps, b.steps, strict=True):
        assert (x.name, x.type, x.options, x.outputs, x.fingerprint) == \
            (y.name, y.type, y.options, y.outputs, y.fingerprint)


def test_yaml_syntax_error_has_line_and_column(tmp_path):
    message = error_of(tmp_path, "name: x\nsteps: [\n  - a: b\n")
    assert "not valid YAML" in message
    assert f"{tmp_path / 'job.yaml'}:" in message and message.split(":")[1].isdigit()


def test_toml_syntax_error(tmp_path):
    message = error_of(tmp_path, 'name = "x"\nsteps = [\n', "job.toml")
    assert "not valid TOML" in message


def test_unknown_key_names_path_line_and_suggestion(tmp_path):
    text = GOOD.replace("    snapshot_every: 5\n", "    snapshot_evry: 5\n")
    message = error_of(tmp_path, text)
    line = text.splitlines().index("    snapshot_evry: 5") + 1
    assert f"job.yaml:{line}: steps[1].snapshot_evry: unknown key" in message
    assert "did you mean 'snapshot_every'" in message


def test_wrong_type_names_the_key(tmp_path):
    message = error_of(tmp_path, GOOD.replace("iterations: 20", "iterations: twenty"))
    assert "steps[1].iterations: expected an integer" in message and "'twenty'" in message


def test_bool_is_not_an_integer_and_minimum_applies(tmp_path):
    assert "expected an integer" in error_of(tmp_path, GOOD.replace("iterations: 20", "iterations: true"))
    assert "must be >= 1" in error_of(tmp_path, GOOD.replace("iterations: 20", "iterations: 0"))


def test_missing_required_keys(tmp_path):
    assert "name: required key is missing" in error_of(tmp_path, "steps: [{name: a, type: shell, argv: [x]}]\n")
    assert "steps: expected a non-empty list" in error_of(tmp_path, "name: x\n")
    assert "steps[0].solver: required key is missing" in error_of(
        tmp_path, "name: x\nsteps: [{name: t, type: train}]\n")


def test_unknown_step_type_lists_known_ones(tmp_path):
    message = error_of(tmp_path, GOOD.replace("type: train", "type: trian"))
    assert "steps[1].type: unknown step type 'trian'" in message
    assert "did you mean 'train'" in message and "shell" in message


def test_duplicate_step_name(tmp_path):
    assert "used twice" in error_of(tmp_path, GOOD.replace("name: score", "name: make"))


def test_placeholder_problems(tmp_path):
    assert "unknown placeholder {steps.tarin.outputs.model}" in error_of(
        tmp_path, GOOD.replace("{steps.train.outputs.model}", "{steps.tarin.outputs.model}"))
    assert "unknown placeholder {dat}" in error_of(tmp_path, GOOD.replace("{vars.root}/{date}", "{vars.root}/{dat}"))
    assert "unknown placeholder {vars.rot}" in error_of(tmp_path, GOOD.replace("{vars.root}/{date}", "{vars.rot}/{date}"))
    assert "only {date} takes a format" in error_of(tmp_path, GOOD.replace("{vars.root}/{date}/", "{job:%Y}/"))
    assert "unbalanced '{'" in error_of(tmp_path, GOOD.replace("{vars.root}/{date}/", "{vars.root/"))


def test_a_step_cannot_use_a_later_steps_output(tmp_path):
    text = GOOD.replace('argv: [echo, "{outputs.data}"]', 'argv: [echo, "{outputs.data}", "{steps.train.outputs.model}"]')
    assert "unknown placeholder {steps.train.outputs.model}" in error_of(tmp_path, text)


def test_outputs_must_be_known_or_passed_to_the_command(tmp_path):
    message = error_of(tmp_path, GOOD.replace("model: \"{vars.root}", "weights: \"{vars.root}"))
    assert "steps[1].outputs.weights: a train step has no output 'weights'" in message
    message = error_of(tmp_path, GOOD.replace('argv: [echo, "{outputs.data}"]', "argv: [echo]"))
    assert "steps[0].outputs.data: no argument mentions {outputs.data}" in message


def test_overlapping_outputs(tmp_path):
    text = GOOD.replace('"{vars.root}/{date}/model.caffemodel"', '"{vars.root}/{date:%Y/%m/%d}/data.txt"')
    assert "outputs must not overlap" in error_of(tmp_path, text)


def test_missing_solver_file(tmp_path):
    message = error_of(tmp_path, GOOD.replace("solver: solver.prototxt", "solver: nope.prototxt"))
    assert f"steps[1].solver: file not found: {tmp_path / 'nope.prototxt'}" in message


def test_unsupported_url_scheme(tmp_path):
    message = error_of(tmp_path, GOOD.replace('"{vars.root}/{date}/model.caffemodel"', '"nosuchfs://x/model"'))
    assert "URL scheme 'nosuchfs'" in message


def test_state_dir_uses_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("TEST_JOBS_ROOT", str(tmp_path / "elsewhere"))
    spec = load_spec(write(tmp_path, GOOD.replace("state_dir: state", "state_dir: '{env.TEST_JOBS_ROOT}/{job}'")))
    assert spec.state_dir == (tmp_path / "elsewhere" / "nightly").resolve()
    monkeypatch.delenv("TEST_JOBS_ROOT")
    assert "TEST_JOBS_ROOT is not set" in error_of(
        tmp_path, GOOD.replace("state_dir: state", "state_dir: '{env.TEST_JOBS_ROOT}/{job}'"))


def test_force_step_must_exist(tmp_path):
    spec = load_spec(write(tmp_path, GOOD))
    with pytest.raises(JobSpecError, match="no step named 'nope'"):
        spec.step("nope")


def test_cli_exit_code_2_and_one_line_message(tmp_path):
    path = write(tmp_path, GOOD.replace("iterations: 20", "iterations: twenty"))
    out = subprocess.run([sys.executable, "-m", "hovcaffe.cli", "job", "run", str(path)],
                         capture_output=True, text=True)
    assert out.returncode == EXIT_USAGE == 2
    assert "steps[1].iterations: expected an integer" in out.stderr and str(path) in out.stderr
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "state").exists()  # nothing ran, no lock taken


def test_train_step_takes_a_connect_url_only_with_ranks(tmp_path):
    """``remote`` (Spark Connect) is a train-step option like ``master``; alone it is refused."""
    lone = GOOD.replace("snapshot_every: 5", "snapshot_every: 5\n    remote: sc://127.0.0.1:15002")
    message = error_of(tmp_path, lone)
    assert "steps[1].remote" in message and "only matters with num_proc" in message
    ranked = lone.replace("iterations: 20", "iterations: 20\n    num_proc: 2")
    spec = load_spec(write(tmp_path, ranked))
    assert spec.steps[1].options["remote"] == "sc://127.0.0.1:15002"
