"""`Trainer.state_dict()` / `load_state_dict()`: the one training state that checkpoints, resume
and the ranks' broadcast use. Stopping after N iterations, loading the state into a fresh Trainer
and continuing must give the uninterrupted run, number for number.

The run shuffles its HDF5 train data (feed position and shuffle RNG matter), uses a multistep lr
(current_step matters), momentum (the histories matter) and a 5-iteration loss window.
"""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from conftest import ORACLE
from hovcaffe.caffe.io import parse_solver
from hovcaffe.training.checkpoints import SnapshotFiles
from hovcaffe.training.hooks import TrainCallback
from hovcaffe.training.loop import TrainConfig, Trainer

CASE = ORACLE / "train" / "sgd_multistep"
TOTAL, STOP = 24, 13  # 13: not at a test (every 10) nor at an lr step (10, 20)
#: the sidecar's keys since its format version 1 (files written before stay readable)
SIDECAR_KEYS = {"version", "iter", "solver_type", "lr_policy", "smoothed_loss", "train_feed",
                "test_feeds", "rng", "seconds"}


class Recorder(TrainCallback):
    def __init__(self):
        self.rows: dict[int, tuple] = {}
        self.tests: dict[int, dict[str, float]] = {}

    def on_iteration(self, record):
        if record.lr is not None:
            self.rows[record.iteration] = (record.lr, record.loss, record.smoothed_loss,
                                           record.sub_losses)

    def on_test(self, iteration, scores):
        self.tests[iteration] = scores


def write_shuffled_case(root) -> None:
    """The oracle's sgd_multistep net with a shuffled train layer, and its HDF5 lists, in `root`."""
    net = (CASE / "net_train_test.prototxt").read_text()
    net = net.replace('source: "train_h5_list.txt"\n    batch_size: 32',
                      'source: "train_h5_list.txt"\n    batch_size: 32\n    shuffle: true')
    assert "shuffle: true" in net
    (root / "net.prototxt").write_text(net)
    for name in ("train", "test"):
        (root / f"{name}_h5_list.txt").write_text(str(ORACLE / "train" / "_data" / f"{name}.h5"))


@pytest.fixture
def folder(tmp_path):
    write_shuffled_case(tmp_path)
    return tmp_path


def trainer(folder, max_iter, recorder=None, **config) -> Trainer:
    solver = parse_solver(
        f'net: "{folder / "net.prototxt"}"\ntest_iter: 2\ntest_interval: 10\nbase_lr: 0.01\n'
        'momentum: 0.9\nweight_decay: 0.0005\nlr_policy: "multistep"\ngamma: 0.3\n'
        'stepvalue: 10\nstepvalue: 20\ndisplay: 0\naverage_loss: 5\nrandom_seed: 1701\n'
        f'snapshot_after_train: false\nmax_iter: {max_iter}\ntype: "SGD"\n')
    return Trainer(TrainConfig(solver, snapshot_prefix=str(folder / "snap"), handle_signals=False,
                               **config), callbacks=[recorder] if recorder else [])


def assert_same_run(full: Trainer, whole: Recorder, resumed: Trainer, second: Recorder):
    assert sorted(second.rows) == list(range(STOP, TOTAL))
    for it in range(STOP, TOTAL):
        assert second.rows[it] == whole.rows[it], it
    assert second.tests == {k: v for k, v in whole.tests.items() if k >= STOP}
    a, b = full.train_net.state_dict(), resumed.train_net.state_dict()
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def runs(folder) -> tuple[Trainer, Recorder, Trainer]:
    """The uninterrupted run (trainer, its records) and one that stopped after STOP iterations."""
    whole = Recorder()
    full = trainer(folder, TOTAL, whole)
    full.solve()
    first = trainer(folder, STOP)
    first.solve()
    return full, whole, first


def test_state_dict_round_trip_continues_the_uninterrupted_run(folder):
    full, whole, first = runs(folder)
    state = first.state_dict()
    assert state["iter"] == STOP and state["lr_policy"] == {"current_step": 1}
    json.dumps({k: v for k, v in state.items() if k not in ("weights", "history")})  # JSON-safe

    second = Recorder()
    resumed = trainer(folder, TOTAL, second)
    assert resumed.iter == 0
    resumed.load_state_dict(state)
    assert resumed.iter == STOP
    resumed.solve()
    assert_same_run(full, whole, resumed, second)


def test_state_dict_is_a_copy_not_a_view(folder):
    t = trainer(folder, 3)
    state = t.state_dict()
    t.solve()
    assert state["iter"] == 0 and t.iter == 3
    key = next(iter(state["weights"]))
    assert not torch.equal(state["weights"][key], t.train_net.state_dict()[key])
    assert not np.any(state["history"][0])  # momentum histories start at zero


def test_snapshot_files_hold_the_state_and_resume_through_it(folder):
    full, whole, first = runs(folder)
    paths = first.snapshot()
    files = SnapshotFiles.at(str(folder / "snap"), STOP)
    assert paths == files.paths()
    assert set(json.loads(open(files.sidecar).read())) == SIDECAR_KEYS

    second = Recorder()
    resumed = trainer(folder, TOTAL, second, resume=files.state)
    assert resumed.iter == STOP
    resumed.solve()
    assert_same_run(full, whole, resumed, second)
