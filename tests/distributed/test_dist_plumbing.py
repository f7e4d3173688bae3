"""The distributed runner's parts that need no cluster: slot counting, transports, the rank ->
driver protocol, failure explanations, portable solvers, snapshot discovery, test-pass splitting,
and launch.py's CaffeOnSpark command line."""
from __future__ import annotations

import os
import threading
import time

import pytest

from hovcaffe.distributed import protocol
from hovcaffe.distributed.faults import FaultHook, InjectedFault, parse_fault
from hovcaffe.distributed.hooks import rank_test_batches
from hovcaffe.distributed.horovod_launcher import explain_failure
from hovcaffe.distributed.forwarded import OutputRouter
from hovcaffe.distributed.slots import static_slots
from hovcaffe.distributed.transport import resolve_transport
from hovcaffe.errors import UserInputError
from hovcaffe.options import DistributedOptions


# ------------------------------------------------------------------------------------ slots
@pytest.mark.parametrize("master, conf, expected", [
    ("local[2]", {}, 2),
    ("local", {}, 1),
    ("local[4, 3]", {}, 4),
    ("local[4]", {"spark.task.cpus": "2"}, 2),
    ("local-cluster[2, 3, 1024]", {}, 6),
    ("spark://h:7077", {"spark.cores.max": "2", "spark.executor.cores": "1"}, 2),
    ("spark://h:7077", {"spark.cores.max": "8", "spark.executor.instances": "2",
                        "spark.executor.cores": "3"}, 6),
    ("yarn", {"spark.dynamicAllocation.enabled": "true",
              "spark.dynamicAllocation.maxExecutors": "5", "spark.executor.cores": "2"}, 10),
    ("yarn", {"spark.executor.instances": "4", "spark.executor.cores": "8",
              "spark.executor.resource.gpu.amount": "2", "spark.task.resource.gpu.amount": "1"}, 8),
    ("spark://h:7077", {}, None),
])
def test_static_slots_follow_the_spark_configuration(master, conf, expected):
    report = static_slots(master, conf, cpu_count=16)
    assert report.slots == expected, report.detail


def test_local_star_uses_the_machine_cores():
    assert static_slots("local[*]", {}, cpu_count=6).slots == 6


# ------------------------------------------------------------------------------------ transport
@pytest.mark.parametrize("name, mpi, ucx", [
    ("gloo", False, False), ("tcp", False, False), ("mpi", True, False),
    ("infiniband", True, True), ("GLOO", False, False),
])
def test_connection_names_map_to_horovod_transports(name, mpi, ucx):
    t = resolve_transport(name)
    assert t.use_mpi is mpi and t.use_gloo is (not mpi)
    assert ("-mca pml ucx" in (t.ompi_flags or ())) is ucx


@pytest.mark.parametrize("name", ["auto", "ethernet", "ETHERNET", None])
def test_the_default_connection_is_horovods_own_choice(name, monkeypatch):
    """MPI when Horovod was built with it and mpirun is installed (both true here), else Gloo;
    $HOVCAFFE_CONNECTION replaces the default, not an explicit choice (the options' one rule)."""
    import shutil

    import horovod.torch as hvd

    monkeypatch.delenv("HOVCAFFE_CONNECTION", raising=False)
    assert hvd.mpi_built() and shutil.which("mpirun")
    assert resolve_transport(name).name == "mpi"
    monkeypatch.setattr(shutil, "which", lambda _: None)
    assert resolve_transport(name).name == "gloo"
    monkeypatch.undo()
    monkeypatch.setenv("HOVCAFFE_CONNECTION", "gloo")
    assert resolve_transport(DistributedOptions.resolve({}).connection).name == "gloo"
    assert resolve_transport(DistributedOptions.resolve({"connection": "mpi"}).connection).name == "mpi"
    monkeypatch.setenv("HOVCAFFE_CONNECTION", "pigeon")
    with pytest.raises(UserInputError, match=r"connection \(from \$HOVCAFFE_CONNECTION\): 'pigeon' is not known"):
        DistributedOptions.resolve({})


def test_infiniband_replaces_horovods_tcp_only_open_mpi_flags_during_the_launch():
    from horovod.runner import mpi_run

    from hovcaffe.distributed.transport import open_mpi_flags

    before = list(mpi_run._OMPI_FLAGS)
    assert "-mca pml ob1" in before  # what Horovod forces: TCP / shared memory only
    with open_mpi_flags(resolve_transport("infiniband")):
        flags, _, _ = mpi_run._get_mpi_implementation_flags(False)
        assert "-mca pml ucx" in flags and "-mca pml ob1" not in flags
    assert mpi_run._OMPI_FLAGS == before


def test_unknown_connection_lists_the_known_ones():
    with pytest.raises(UserInputError, match="infiniband"):
        resolve_transport("carrier-pigeon")


# ------------------------------------------------------------------------------------ protocol
def _feed(router: OutputRouter, text: str, chunk: int) -> None:
    # Horovod writes from one thread per rank, in arbitrary chunks.
    for i in range(0, len(text), chunk):
        router.write(text[i:i + chunk])


def test_router_reassembles_chunked_lines_and_finds_the_root_cause(capfd):
    protocol.emit_error(1, ValueError("boom at 3"), 'File "x.py", line 7, in step\nValueError: boom at 3')
    protocol.emit_error(0, RuntimeError("Horovod has been shut down. This was caused by ..."), "")
    err = capfd.readouterr().err
    lines = err.splitlines()
    assert len(lines) == 2 and all(line.startswith(protocol.ERROR_MARK) for line in lines)
    router = OutputRouter(sink=None)
    # collateral error first (as it often arrives), then the real one, tagged like Gloo / mpirun
    tagged = f"[0]<stderr>:{lines[1]}\n[1,1]<stderr>:{lines[0]}\n[1]<stdout>:plain text\n"
    for chunk in (7, 4096):
        router = OutputRouter(sink=None)
        _feed(router, tagged, chunk)
        router.flush()
        cause = router.root_cause()
        assert cause is not None and cause.rank == 1 and cause.type == "ValueError"
        assert cause.message == "boom at 3"
        assert router.tail(1) == ["plain text"]


def test_router_parses_markers_split_by_mpirun_tags():
    line = protocol.EVENT_MARK + '{"kind":"iter","iter":[1,0]<stderr>:5}'
    kind, payload = protocol.parse_marker(line)
    assert kind == "event" and payload == {"kind": "iter", "iter": 5}


def test_event_server_delivers_events_live(monkeypatch):
    got: list[dict] = []
    done = threading.Event()

    def handler(event):
        got.append(event)
        if len(got) == 2:
            done.set()

    with protocol.EventServer("127.0.0.1", handler) as server:
        monkeypatch.setenv(protocol.SINK_ENV, server.address)
        client = protocol._SinkClient()
        assert client.send({"kind": "iter", "iter": 1})
        assert client.send({"kind": "iter", "iter": 2})
        assert done.wait(10)
    assert [e["iter"] for e in got] == [1, 2]


def test_event_server_ignores_connections_without_the_token():
    got: list[dict] = []
    with protocol.EventServer("127.0.0.1", got.append) as server:
        import socket

        with socket.create_connection(("127.0.0.1", server.port)) as sock:
            sock.sendall(b"wrong-token\n" + b'{"kind": "iter"}\n')
        time.sleep(0.3)
    assert got == []


def test_sink_client_falls_back_to_output_lines_when_the_driver_is_gone(monkeypatch, capfd):
    monkeypatch.setenv(protocol.SINK_ENV, "127.0.0.1:1:token")  # nothing listens on port 1
    monkeypatch.setattr(protocol, "_client", protocol._SinkClient())
    protocol.emit_event("iter", iter=3)
    kind, payload = protocol.parse_marker(capfd.readouterr().err)
    assert kind == "event" and payload["iter"] == 3


def test_failure_without_a_report_names_the_killed_rank():
    router = OutputRouter(sink=None)
    router.write("[1]<stdout>:iteration 12\n")
    exc = RuntimeError("Horovod detected that one or more processes exited with non-zero status, "
                       "thus causing the job to be terminated. The first process to do so was:\n"
                       "Process name: 1\nExit code: 137\n")
    text = explain_failure(exc, router, 3.0)
    assert "rank 1 was killed by SIGKILL (exit code 137)" in text and "iteration 12" in text


def test_killed_rank_wins_over_the_collateral_errors_of_the_others(capfd):
    protocol.emit_error(0, RuntimeError("Horovod has been shut down. This was caused by ..."), "")
    router = OutputRouter(sink=None)
    router.write("[0]<stderr>:" + capfd.readouterr().err)
    exc = RuntimeError("...The first process to do so was:\nProcess name: 1\nExit code: 137\n")
    text = explain_failure(exc, router, 3.0)
    assert "rank 1 was killed by SIGKILL" in text and "rank 0" not in text


def test_failure_under_mpirun_names_the_killed_rank():
    router = OutputRouter(sink=None)
    router.write("mpirun noticed that process rank 1 with PID 4242 on node n1 exited on signal 9 (Killed).\n")
    text = explain_failure(RuntimeError("mpirun failed with exit code 137"), router, 3.0)
    assert "rank 1 was killed by SIGKILL" in text


# ------------------------------------------------------------------------------------ faults
def test_fault_spec_parsing_and_injection(tmp_path):
    assert parse_fault("") is None
    assert parse_fault("raise:1:5") == ("raise", 1, 5)
    with pytest.raises(ValueError):
        parse_fault("explode:1")
    env = {"HOVCAFFE_FAULT": "raise:1:5", "HOVCAFFE_PID_DIR": str(tmp_path)}
    other = FaultHook(0, env)
    other.on_iteration(5)  # not this rank's fault
    hook = FaultHook(1, env)
    assert (tmp_path / "rank1.pid").read_text() == str(os.getpid())
    hook.on_iteration(4)
    assert (tmp_path / "rank1.iter").read_text() == "4"
    with pytest.raises(InjectedFault, match="rank 1 at iteration 5"):
        hook.on_iteration(5)


# ------------------------------------------------------------------------------------ tests split
@pytest.mark.parametrize("test_iter, size", [(10, 2), (7, 2), (7, 3), (1, 1), (100, 4)])
def test_test_batches_are_split_so_each_runs_once(test_iter, size):
    shares = [rank_test_batches(test_iter, r, size) for r in range(size)]
    assert sum(shares) == test_iter
    assert max(shares) - min(shares) <= 1


def test_every_rank_takes_part_when_there_are_fewer_test_batches_than_ranks():
    assert [rank_test_batches(1, r, 3) for r in range(3)] == [1, 1, 1]


# ------------------------------------------------------------------------------------ portable
NET = """
name: "tiny"
layer { name: "d" type: "HDF5Data" top: "data" top: "label"
        hdf5_data_param { source: "train_list.txt" batch_size: 4 } }
layer { name: "ip" type: "InnerProduct" bottom: "data" top: "ip"
        inner_product_param { num_output: 2 } }
layer { name: "loss" type: "SoftmaxWithLoss" bottom: "ip" bottom: "label" top: "loss" }
"""


def test_portable_solver_inlines_nets_and_absolutises_sources(tmp_path, monkeypatch):
    from hovcaffe.caffe.io import parse_solver
    from hovcaffe.distributed.portable import portable_solver

    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "net.prototxt").write_text(NET)
    (folder / "train_list.txt").write_text("a.h5\n")
    solver_path = folder / "solver.prototxt"
    solver_path.write_text('net: "net.prototxt"\ntest_net: "net.prototxt"\ntest_iter: 1\n'
                           'test_interval: 5\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    monkeypatch.chdir(tmp_path)  # neither file is relative to the cwd: the solver's folder is used
    sp = portable_solver(parse_solver(solver_path.read_text()), str(solver_path))
    assert not sp.HasField("net") and len(sp.test_net) == 0
    assert sp.net_param.name == "tiny" and len(sp.test_net_param) == 1
    for net in (sp.net_param, sp.test_net_param[0]):
        assert net.layer[0].hdf5_data_param.source == str(folder / "train_list.txt")


def test_portable_solver_keeps_urls_and_missing_paths(tmp_path):
    from hovcaffe.caffe.io import parse_net
    from hovcaffe.distributed.portable import absolutize_net

    net = parse_net(NET.replace("train_list.txt", "hdfs://nn/data/list.txt"))
    absolutize_net(net, str(tmp_path))
    assert net.layer[0].hdf5_data_param.source == "hdfs://nn/data/list.txt"
    net = parse_net(NET.replace("train_list.txt", "not/there.txt"))
    absolutize_net(net, str(tmp_path))
    assert net.layer[0].hdf5_data_param.source == "not/there.txt"


# ------------------------------------------------------------------------------------ resume
def test_latest_complete_snapshot_skips_incomplete_ones(tmp_path):
    from hovcaffe.distributed.resume import latest_snapshot, list_snapshots

    prefix = tmp_path / "snaps" / "lenet"
    prefix.parent.mkdir()
    assert latest_snapshot(str(prefix)) is None
    for it in (100, 200):
        (prefix.parent / f"lenet_iter_{it}.caffemodel").write_bytes(b"m")
        (prefix.parent / f"lenet_iter_{it}.solverstate").write_bytes(b"s")
    (prefix.parent / "lenet_iter_300.solverstate").write_bytes(b"s")  # its model is missing
    (prefix.parent / "lenet_iter_1000.caffemodel").write_bytes(b"m")  # no solverstate yet
    (prefix.parent / "other_iter_900.solverstate").write_bytes(b"s")
    assert [s[0] for s in list_snapshots(str(prefix))] == [200, 100]
    it, state, model = latest_snapshot(str(prefix))
    assert it == 200 and state.endswith("lenet_iter_200.solverstate") and model.endswith(".caffemodel")


def test_unwritable_model_folder_is_a_clear_error(tmp_path):
    from hovcaffe.distributed.outputs import check_writable

    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(UserInputError, match="not writable"):
        check_writable(str(blocker / "sub"))
    check_writable(str(tmp_path / "new" / "folder"))
    assert (tmp_path / "new" / "folder").is_dir()


def test_upload_to_a_local_path_replaces_the_file_whole(tmp_path):
    from hovcaffe.distributed.outputs import upload

    src = tmp_path / "staged.caffemodel"
    src.write_bytes(b"new weights")
    dest = tmp_path / "out" / "model.caffemodel"
    dest.parent.mkdir()
    dest.write_bytes(b"old")
    upload(str(src), dest.as_uri())
    assert dest.read_bytes() == b"new weights"
    assert sorted(p.name for p in dest.parent.iterdir()) == ["model.caffemodel"]  # no temp file left


def test_inference_spec_reports_the_net_parse_error_of_a_broken_net(tmp_path):
    from hovcaffe.distributed.features import inference_spec
    from hovcaffe.errors import PrototxtError

    net = tmp_path / "net.prototxt"
    net.write_text('name: "n"\nlayer { name: "d" type: "Input" top: "x"\n')  # unclosed layer
    with pytest.raises(PrototxtError) as info:
        inference_spec(str(net), None)
    assert "layer" in info.value.reason and "SolverParameter" not in str(info.value)
    assert (info.value.line or 0) >= 2


# ------------------------------------------------------------------------------------ launch.py
def test_launch_accepts_caffeonspark_command_lines():
    from hovcaffe.launch import build_parser

    args = build_parser().parse_args(
        "-conf s.prototxt -train -devices 2 -clusterSize 3 -model hdfs:///m/lenet.caffemodel "
        "-connection infiniband -persistent -lmdb_partitions 4 -outputFormat parquet "
        "-features ip1,ip2 -label label -output out".split())
    assert args.train and args.devices == 2 and args.clusterSize == 3
    assert args.model == "hdfs:///m/lenet.caffemodel" and args.connection == "infiniband"
    assert args.persistent is True and args.lmdb_partitions == "4"
    assert args.features == "ip1,ip2" and args.label == "label" and args.outputFormat == "parquet"


def test_launch_refuses_a_run_without_a_mode(tmp_path):
    from hovcaffe.launch import main

    solver = tmp_path / "s.prototxt"
    solver.write_text('net: "n.prototxt"\nbase_lr: 0.1\nlr_policy: "fixed"\n')
    assert main(["-conf", str(solver)]) == 2


# ------------------------------------------------------------------------------------ progress
def test_driver_progress_draws_a_bar_and_reports_tests_and_snapshots():
    import io

    from hovcaffe.distributed.progress import DriverProgress

    out = io.StringIO()
    display = DriverProgress(bar=True, stream=out)
    display({"kind": "start", "iter": 0, "max_iter": 4})
    for it in range(4):
        display({"kind": "iter", "iter": it, "lr": 0.01, "loss": 1.0, "smoothed_loss": 1.0 - it / 10})
    display({"kind": "test", "iter": 4, "scores": {"test/accuracy": 0.75}})
    display({"kind": "snapshot", "iter": 4, "paths": {"model": "/m/lenet_iter_4.caffemodel"}})
    display({"kind": "unknown"})
    display.close()
    text = out.getvalue()
    assert "4/4" in text and "Iteration 4, test: test/accuracy = 0.75" in text
    assert "Snapshot at iteration 4: /m/lenet_iter_4.caffemodel" in text


def test_mpi_ranks_yield_while_waiting_unless_the_driver_says_otherwise(monkeypatch):
    """Open MPI busy-polls in collectives; the MPI transports ask it to yield the core (the
    2-core benchmark's ranks ran 44% faster), and a driver-side setting still wins."""
    from hovcaffe.distributed.horovod_launcher import rank_env

    monkeypatch.delenv("OMPI_MCA_mpi_yield_when_idle", raising=False)
    assert rank_env(DistributedOptions(num_proc=2, connection="mpi"))["OMPI_MCA_mpi_yield_when_idle"] == "1"
    assert rank_env(DistributedOptions(num_proc=2, connection="infiniband"))["OMPI_MCA_mpi_yield_when_idle"] == "1"
    assert "OMPI_MCA_mpi_yield_when_idle" not in rank_env(DistributedOptions(num_proc=2, connection="gloo"))
    monkeypatch.setenv("OMPI_MCA_mpi_yield_when_idle", "0")
    assert rank_env(DistributedOptions(num_proc=2, connection="mpi"))["OMPI_MCA_mpi_yield_when_idle"] == "0"


def test_ranks_get_the_storage_clients_settings(monkeypatch):
    """Rank 0 writes -model to s3:// or hdfs://: the ranks need the driver's AWS credentials and
    libhdfs's CLASSPATH / HADOOP_* settings, not just Python's."""
    from hovcaffe.distributed.horovod_launcher import rank_env

    for key, value in (("AWS_ACCESS_KEY_ID", "AKIA-test"), ("AWS_ENDPOINT_URL", "http://127.0.0.1:9"),
                       ("CLASSPATH", "/opt/hadoop/*.jar"), ("HADOOP_CONF_DIR", "/etc/hadoop"),
                       ("ARROW_LIBHDFS_DIR", "/opt/hadoop/lib/native")):
        monkeypatch.setenv(key, value)
    env = rank_env(DistributedOptions(num_proc=2, connection="gloo"))
    assert env["AWS_ACCESS_KEY_ID"] == "AKIA-test" and env["CLASSPATH"] == "/opt/hadoop/*.jar"
    assert env["HADOOP_CONF_DIR"] == "/etc/hadoop" and env["ARROW_LIBHDFS_DIR"] == "/opt/hadoop/lib/native"


def test_overlapping_mpi_launches_restore_the_main_module_once_both_end():
    """Parallel fits launch concurrently: the script's __file__ comes back after the last one."""
    import sys

    from hovcaffe.distributed.horovod_launcher import _spawn_without_main

    main = sys.modules["__main__"]
    before = getattr(main, "__file__", None)
    first, second = _spawn_without_main(True), _spawn_without_main(True)
    first.__enter__()
    second.__enter__()
    assert not hasattr(main, "__file__") and main.__spec__ is None
    first.__exit__(None, None, None)
    assert not hasattr(main, "__file__")  # the second launch is still starting mpirun
    second.__exit__(None, None, None)
    assert getattr(main, "__file__", None) == before
