"""The training loop's Caffe semantics: net variants and states, data sources, divergence,
HDF5 snapshots, metrics."""
from __future__ import annotations

import csv

import h5py
import numpy as np
import pytest
import torch

from conftest import ORACLE
from hovcaffe.caffe.io import parse_solver, read_solver
from hovcaffe.errors import DataSourceError, SolverError, TrainingDiverged, UserInputError
from hovcaffe.metrics import MetricsCallback, MetricsCSV, SmoothedLoss
from hovcaffe.training.hooks import TrainCallback
from hovcaffe.training.loop import TrainConfig, Trainer

# DummyData x ~ N(0,1) (redrawn every forward), target y = 1: ip must learn weight 0, bias 1.
TOY_NET = """
  layer { name: "x" type: "DummyData" top: "x" top: "y"
          dummy_data_param { shape { dim: 8 dim: 3 } shape { dim: 8 dim: 2 }
                             data_filler { type: "gaussian" std: 1 }
                             data_filler { type: "constant" value: 1 } } }
  layer { name: "ip" type: "InnerProduct" bottom: "x" top: "out"
          inner_product_param { num_output: 2 weight_filler { type: "gaussian" std: 0.5 } } }
  layer { name: "train_only" type: "Power" bottom: "out" top: "out2"
          include { stage: "fit" } }
  layer { name: "test_only" type: "Power" bottom: "out" top: "out2"
          include { phase: TEST } }
  layer { name: "loss" type: "EuclideanLoss" bottom: "out2" bottom: "y" top: "loss" }
"""


def toy_solver(extra: str = "") -> str:
    return (f"net_param {{ {TOY_NET} }}\ntrain_state {{ stage: \"fit\" }}\n"
            "base_lr: 0.1\nmomentum: 0.9\nlr_policy: \"fixed\"\nmax_iter: 30\n"
            "test_iter: 2\ntest_interval: 10\ntest_compute_loss: true\nrandom_seed: 3\n"
            "snapshot_after_train: false\n" + extra)


class Recorder(TrainCallback):
    def __init__(self):
        self.records = []

    def on_iteration(self, record):
        self.records.append(record)


def train(solver_text, tmp_path, **kw):
    rec = Recorder()
    trainer = Trainer(TrainConfig(parse_solver(solver_text), snapshot_prefix=str(tmp_path / "s"),
                                  handle_signals=False, **kw), callbacks=[rec])
    return trainer, trainer.solve(), rec.records


def test_inline_net_states_dummy_data_and_test_objective(tmp_path):
    trainer, result, records = train(toy_solver(), tmp_path)
    assert "train_only" in trainer.train_net.layers and "test_only" not in trainer.train_net.layers
    assert "test_only" in trainer.test_nets[0].layers
    assert trainer.test_nets[0].layers["ip"].blobs[0] is trainer.train_net.layers["ip"].blobs[0]
    assert np.mean(result.losses[-5:]) < 0.25 * np.mean(result.losses[:3])
    assert sorted(result.test_scores) == [0, 10, 20, 30]
    # EuclideanLoss is the only weighted output: objective == loss output
    for scores in result.test_scores.values():
        assert scores["test/objective"] == pytest.approx(scores["test/loss"], rel=1e-6)
    assert records[-1].iteration == 30 and records[-1].lr is None


def test_train_net_and_two_test_nets_from_files(tmp_path):
    net = tmp_path / "net.prototxt"
    net.write_text(TOY_NET.replace('include { stage: "fit" }', 'include { phase: TRAIN }'))
    solver = (f'train_net: "net.prototxt"\ntest_net: "net.prototxt"\ntest_net: "{net}"\n'
              "test_iter: 1\ntest_iter: 3\ntest_interval: 5\nbase_lr: 0.05\n"
              'lr_policy: "fixed"\nmax_iter: 5\nsnapshot_after_train: false\n')
    (tmp_path / "solver.prototxt").write_text(solver)
    trainer = Trainer(TrainConfig(read_solver(tmp_path / "solver.prototxt"),
                                  solver_path=str(tmp_path / "solver.prototxt"),
                                  handle_signals=False))
    assert [s.test_iter for s in trainer.test_specs] == [1, 3]
    result = trainer.solve()
    assert set(result.test_scores[5]) == {"test/loss", "test1/loss"}


@pytest.mark.parametrize("solver,error,message", [
    ('net: "nowhere.prototxt"\nlr_policy: "fixed"\n', DataSourceError, "looked at"),
    (f'net_param {{ {TOY_NET} }}\ntrain_net: "x"\nlr_policy: "fixed"\n', SolverError,
     "exactly one of"),
    (f'train_net_param {{ {TOY_NET} }}\ntest_net_param {{ {TOY_NET} }}\nlr_policy: "fixed"\n'
     "test_interval: 5\n", SolverError, "0 test_iter entries for 1 test nets"),
])
def test_solver_errors(solver, error, message, tmp_path):
    with pytest.raises(error, match=message):
        Trainer(TrainConfig(parse_solver(solver)))


def test_divergence_stops_and_keeps_last_good_snapshot(tmp_path):
    text = toy_solver("snapshot: 2\n").replace("base_lr: 0.1", "base_lr: 1000")
    with pytest.raises(TrainingDiverged, match="last good snapshot") as info:
        train(text, tmp_path)
    iters = sorted(int(p.name[len("s_iter_"):-len(".solverstate")])
                   for p in tmp_path.glob("s_iter_*.solverstate"))
    assert iters, "no snapshot before the divergence"
    assert f"s_iter_{iters[-1]}.solverstate" in str(info.value)
    diverged_at = int(str(info.value).split(" at iteration ")[1].split(";")[0])
    assert iters[-1] <= diverged_at


def test_input_blobs_from_npz(tmp_path):
    rng = np.random.default_rng(0)
    npz = tmp_path / "in.npz"
    np.savez(npz, data=rng.random((100, 1, 28, 28), dtype=np.float32),
             label=rng.integers(0, 10, 100).astype(np.float32))
    solver = (f'net: "{ORACLE / "perf/lenet_b64.prototxt"}"\nbase_lr: 0.01\nmomentum: 0.9\n'
              'lr_policy: "fixed"\nmax_iter: 3\nsnapshot_after_train: false\n')
    trainer, result, _ = train(solver, tmp_path, input_data=str(npz))
    assert len(result.losses) == 3 and all(np.isfinite(result.losses))
    # 3 batches of 64 from 100 rows: the cursor wrapped once (Caffe's row order)
    assert trainer.train_feeder.state_dict()["<input>"]["current_row"] == (3 * 64) % 100


@pytest.mark.parametrize("arrays,message", [
    ({"data": np.zeros((8, 1, 20, 20), np.float32), "label": np.zeros(8, np.float32)},
     r"Input blob 'data' declares shape \[64, 1, 28, 28\].*\[1, 20, 20\]"),
    ({"data": np.zeros((8, 1, 28, 28), np.float32)}, r"has no array 'label'"),
])
def test_input_npz_problems_are_user_errors(tmp_path, arrays, message):
    npz = tmp_path / "in.npz"
    np.savez(npz, **arrays)
    solver = (f'net: "{ORACLE / "perf/lenet_b64.prototxt"}"\nbase_lr: 0.01\n'
              'lr_policy: "fixed"\nmax_iter: 1\n')
    with pytest.raises(UserInputError, match=message) as info:
        train(solver, tmp_path, input_data=str(npz))
    assert "as .npz" not in str(info.value)  # not wrapped twice


def test_hdf5_snapshot_format_resumes(tmp_path):
    case = ORACLE / "train" / "sgd_step"
    sp = read_solver(case / "solver.prototxt")
    sp.snapshot_format = sp.HDF5
    sp.snapshot, sp.max_iter, sp.test_interval = 2, 4, 0
    del sp.test_iter[:]

    def make(**kw):
        return Trainer(TrainConfig(sp, solver_path=str(case / "solver.prototxt"),
                                   snapshot_prefix=str(tmp_path / "h"), handle_signals=False,
                                   **kw))
    full = make(weights=[str(case / "init.caffemodel")])
    full.solve()
    with h5py.File(tmp_path / "h_iter_2.solverstate.h5", "r") as fh:
        assert int(fh["iter"][0]) == 2 and len(fh["history"]) == 8
    with h5py.File(tmp_path / "h_iter_4.caffemodel.h5", "r") as fh:
        assert fh["data/conv1/0"].shape == (8, 1, 5, 5)
    resumed = make(resume=str(tmp_path / "h_iter_2.solverstate.h5"))  # weights: .caffemodel.h5
    assert resumed.iter == 2
    resumed.solve()
    assert len(full.params) == len(resumed.params) > 0
    for a, b in zip(full.params, resumed.params, strict=True):
        assert torch.equal(a, b)


def test_smoothed_loss_matches_caffe_replay():
    expected = __import__("json").loads((ORACLE / "train/adam/losses.json").read_text())
    sm = SmoothedLoss(expected["average_loss"])
    got = [sm.update(loss, i) for i, loss in enumerate(expected["loss"])]
    assert got == expected["smoothed_loss"]  # float32-exact replay


def test_metrics_csv_resume_drops_rows_after_the_snapshot(tmp_path):
    path = tmp_path / "m.csv"
    csv_log = MetricsCSV(path, ["test/accuracy"])
    for it in range(6):
        csv_log.write({"iteration": it, "lr": 0.1, "loss": 1.0 / (it + 1), "smoothed_loss": 1.0,
                       "seconds": it, "test/accuracy": 0.5 if it == 0 else None})
    csv_log.close()
    resumed = MetricsCSV(path, ["test/accuracy"], resume_from=4)
    resumed.write({"iteration": 4, "lr": 0.1, "loss": 9.0, "smoothed_loss": 1.0, "seconds": 4})
    resumed.close()
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["iteration"]) for r in rows] == [0, 1, 2, 3, 4]
    assert rows[0]["test/accuracy"] == "0.5" and rows[1]["test/accuracy"] == ""
    assert float(rows[4]["loss"]) == 9.0 and float(rows[2]["loss"]) == pytest.approx(1 / 3)


def test_metrics_callback_writes_every_iteration(tmp_path):
    cb = MetricsCallback(tmp_path / "m.csv", None)
    trainer = Trainer(TrainConfig(parse_solver(toy_solver().replace("max_iter: 30", "max_iter: 12")),
                                  handle_signals=False), callbacks=[cb])
    trainer.solve()
    with open(tmp_path / "m.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0]) == ["iteration", "lr", "loss", "smoothed_loss", "seconds", "test/loss",
                             "test/objective"]
    assert [int(r["iteration"]) for r in rows] == list(range(12))  # display 0: no final row
    assert [r["iteration"] for r in rows if r["test/loss"]] == ["0", "10"]
