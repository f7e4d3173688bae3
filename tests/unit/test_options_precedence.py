"""One options object for every entry point: flag > $HOVCAFFE_* > default, the same default
whoever asks, and errors that name the option in the caller's own words."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from hovcaffe.errors import DistributedError, UserInputError
from hovcaffe.options import (OPTIONS, SPECS, ClusterOptionError, DistributedOptions,
                              OptionError)

#: (option, value from the environment, value given explicitly, each as text and parsed)
WITH_ENV = [
    ("connection", "HOVCAFFE_CONNECTION", ("gloo", "gloo"), ("mpi", "mpi")),
    ("backend", "HOVCAFFE_BACKEND", ("local", "local"), ("horovod", "horovod")),
    ("nics", "HOVCAFFE_NICS", ("eth0, ib0", ("eth0", "ib0")), ("lo", ("lo",))),
    ("start_timeout", "HOVCAFFE_START_TIMEOUT", ("300", 300), ("45", 45)),
    ("threads_per_rank", "HOVCAFFE_THREADS_PER_RANK", ("2", 2), ("3", 3)),
]


@pytest.mark.parametrize("name, env, from_env, given", WITH_ENV)
def test_a_flag_beats_the_environment_which_beats_the_default(name, env, from_env, given):
    assert SPECS[name].env == env
    default = getattr(DistributedOptions.resolve({}, environ={}), name)
    assert default == SPECS[name].default
    assert getattr(DistributedOptions.resolve({}, environ={env: from_env[0]}), name) == from_env[1]
    assert getattr(DistributedOptions.resolve({name: given[0]}, environ={env: from_env[0]}),
                   name) == given[1]
    # an empty variable is not a value
    assert getattr(DistributedOptions.resolve({}, environ={env: " "}), name) == default


def test_options_without_a_variable_ignore_the_environment():
    options = DistributedOptions.resolve({}, environ={"HOVCAFFE_NUM_PROC": "4", "HOVCAFFE_DEVICES": "3"})
    assert options.num_proc is None and options.devices == 1
    # master and remote: $HOVCAFFE_SPARK_MASTER / _REMOTE are get_spark's (an explicit master wins)
    assert [s.name for s in OPTIONS if s.env is None] == ["num_proc", "master", "remote", "devices",
                                                         "model", "resume"]


def test_a_bad_value_names_the_option_and_where_it_came_from():
    with pytest.raises(OptionError, match=r"^connection \(from \$HOVCAFFE_CONNECTION\): 'pigeon' "
                                          r"is not known; use one of: auto, ethernet, gloo"):
        DistributedOptions.resolve({}, environ={"HOVCAFFE_CONNECTION": "pigeon"})
    with pytest.raises(OptionError, match=r"^start_timeout: expected an integer >= 1, got 0"):
        DistributedOptions.resolve({"start_timeout": 0}, environ={})
    with pytest.raises(OptionError, match=r"unknown option 'num_procs'"):
        DistributedOptions.resolve({"num_procs": 2})


def _cli_options(argv: list[str]) -> DistributedOptions:
    from hovcaffe.commands import distributed_options
    from hovcaffe.commands.train import cli

    ctx = cli.make_context("train", ["-solver", "s.prototxt", *argv])
    return distributed_options.resolve(ctx.params)


def _launch_options(argv: list[str]) -> DistributedOptions:
    from hovcaffe.commands.distributed_options import given_options, resolve
    from hovcaffe.launch import build_parser

    return resolve(given_options(vars(build_parser().parse_args(["-conf", "s.prototxt", "-train", *argv]))))


def _estimator_options(**params) -> DistributedOptions:
    pytest.importorskip("pyspark", reason="pyspark is a runtime requirement; missing only in a broken venv")
    from hovcaffe.ml import CaffeEstimator
    from hovcaffe.ml.params import distributed_options

    return distributed_options(CaffeEstimator(**params))


def _user_options(options: DistributedOptions) -> dict:
    return {s.name: getattr(options, s.name) for s in OPTIONS if s.name != "num_proc"}


def test_every_entry_point_gets_the_same_defaults(monkeypatch):
    for spec in OPTIONS:
        if spec.env:
            monkeypatch.delenv(spec.env, raising=False)
    expected = _user_options(DistributedOptions())
    assert expected["start_timeout"] == 120 and expected["connection"] == "auto"
    assert _user_options(_cli_options(["-num-proc", "2"])) == expected
    assert _user_options(_launch_options(["-num-proc", "2"])) == expected
    assert _user_options(_estimator_options()) == expected


def test_every_entry_point_applies_the_environment_and_its_own_values_first(monkeypatch):
    monkeypatch.setenv("HOVCAFFE_CONNECTION", "gloo")
    monkeypatch.setenv("HOVCAFFE_START_TIMEOUT", "300")
    for options in (_cli_options(["-num-proc", "2"]), _launch_options(["-num-proc", "2"]),
                    _estimator_options()):
        assert (options.connection, options.start_timeout) == ("gloo", 300)
    for options in (_cli_options(["-num-proc", "2", "-connection", "tcp", "--start-timeout", "9"]),
                    _launch_options(["-num-proc", "2", "-connection", "tcp", "--start-timeout", "9"]),
                    _estimator_options(connection="tcp", startTimeout=9)):
        assert (options.connection, options.start_timeout) == ("tcp", 9)


def test_the_estimator_accepts_every_connection_the_command_line_accepts():
    from hovcaffe.distributed.transport import CONNECTIONS

    for name in CONNECTIONS:
        assert _estimator_options(connection=name).connection == name
        assert _cli_options(["-num-proc", "2", "-connection", name]).connection == name


def test_an_estimator_error_names_the_param_not_a_flag(monkeypatch):
    monkeypatch.setenv("HOVCAFFE_START_TIMEOUT", "soon")
    with pytest.raises(UserInputError) as info:
        _estimator_options()
    text = str(info.value)
    assert text.startswith("Param startTimeout (from $HOVCAFFE_START_TIMEOUT): expected an integer")
    assert "-start-timeout" not in text


def test_library_errors_are_spelled_by_each_entry_point():
    """A library error names the option; the CLI shows the flag, launch.py its own spelling,
    the Estimator the Param - from the one error object."""
    from hovcaffe.launch import option_names
    from hovcaffe.ml.params import PARAM_NAMES
    from hovcaffe.option_flags import CLI_NAMES

    exc = ClusterOptionError("3 ranks need 3 concurrent Spark tasks, but only 2 fit; lower $num_proc")
    assert isinstance(exc, DistributedError) and exc.exit_code == 1
    assert str(exc).endswith("lower num_proc")
    assert str(exc.spelled(CLI_NAMES)).endswith("lower -num-proc")
    assert str(exc.spelled(option_names())).endswith("lower -num-proc (or -clusterSize x -devices)")
    assert str(exc.spelled(PARAM_NAMES)).endswith("lower Param numProc")
    assert isinstance(exc.spelled(PARAM_NAMES), ClusterOptionError)


def test_the_command_line_prints_the_flag(tmp_path):
    """End to end: `hovcaffe train` with a bad value from the environment exits 2 naming it."""
    solver = tmp_path / "s.prototxt"
    solver.write_text('net: "n.prototxt"\nbase_lr: 0.01\nlr_policy: "fixed"\nmax_iter: 1\n')
    proc = subprocess.run([sys.executable, "-m", "hovcaffe.cli", "train", "-solver", str(solver),
                           "-num-proc", "2"], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "HOVCAFFE_CONNECTION": "pigeon"})
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.strip().splitlines()[-1] == (
        "hovcaffe: error: -connection (from $HOVCAFFE_CONNECTION): 'pigeon' is not known; use one "
        "of: auto, ethernet, gloo, infiniband, mpi, rdma, tcp")


@pytest.mark.parametrize("debug, traceback", [("", False), ("0", False), ("1", True)])
def test_launch_py_shows_tracebacks_by_the_command_lines_rule(tmp_path, debug, traceback):
    """Only HOVCAFFE_DEBUG set to something other than 0 shows the traceback (launch.py used to
    show it for HOVCAFFE_DEBUG=0 too)."""
    import hovcaffe

    script = os.path.join(os.path.dirname(hovcaffe.__file__), "launch.py")
    env = {**os.environ, "HOVCAFFE_DEBUG": debug}
    proc = subprocess.run([sys.executable, script, "-conf", str(tmp_path / "none.prototxt"),
                           "-test"], capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == (1 if traceback else 2)  # a traceback is Python's own exit
    assert ("Traceback (most recent call last)" in proc.stderr) is traceback, proc.stderr
    if not traceback:
        assert proc.stderr.strip().splitlines() == ["hovcaffe: error: -test / -features need -model "
                                                    "(the trained weights)"]


def _train_step_spec(tmp_path, extra: str):
    from hovcaffe.jobs.spec import load_spec

    (tmp_path / "solver.prototxt").write_text('net: "net.prototxt"\nmax_iter: 4\nsnapshot: 2\n'
                                              'base_lr: 0.01\nlr_policy: "fixed"\n')
    (tmp_path / "net.prototxt").write_text("name: 'n'\n")
    path = tmp_path / "job.yaml"
    step_keys = "".join(f"    {line}\n" for line in extra.splitlines())
    path.write_text("name: nightly\nstate_dir: state\nsteps:\n  - name: train\n    type: train\n"
                    "    solver: solver.prototxt\n" + step_keys)
    return load_spec(path)


def test_a_job_step_passes_its_options_as_the_flags_and_gets_the_same_defaults(tmp_path):
    import logging
    from collections import deque

    from hovcaffe.jobs.steps.base import StepContext, get_step_type

    spec = _train_step_spec(tmp_path, "num_proc: 2\nconnection: tcp\nstart_timeout: 30\n")
    step = spec.steps[0]
    ctx = StepContext(name="train", options=step.options, render=str, resolve=lambda s: str(tmp_path / s),
                      cwd=tmp_path, work_dir=tmp_path / "work", attempt=1, staged={},
                      output_lines=deque(), log=logging.getLogger("test"))
    (tmp_path / "work").mkdir()
    argv = get_step_type("train").plan(ctx).argv
    train_args = argv[argv.index("train") + 1:]
    options = _cli_options([a for a in train_args if a != "-solver" and not a.endswith(".prototxt")
                            and "metrics-attempt" not in a and a != "--metrics-csv"])
    assert (options.num_proc, options.connection, options.start_timeout) == (2, "tcp", 30)
    assert _user_options(options) | {"connection": "auto", "start_timeout": 120} == \
        _user_options(DistributedOptions())


def test_a_job_step_refuses_a_bad_option_naming_its_key(tmp_path):
    from hovcaffe.errors import JobSpecError

    with pytest.raises(JobSpecError, match=r"connection.*'pigeon' is not known; use one of: auto"):
        _train_step_spec(tmp_path, "num_proc: 2\nconnection: pigeon\n")
