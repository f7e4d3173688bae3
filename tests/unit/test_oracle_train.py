"""40-iteration training trajectories vs real Caffe (tests/oracle/train, see its README).

For every case: start from init.caffemodel with the case's solver and HDF5 data, then compare
per-iteration losses (losses.json), learning rates (lr.json), test outputs (test.json `exact`),
the weights after the first update (iter1.caffemodel) and after 40 (final.caffemodel), and the
solverstate histories (final.solverstate).

Weights are compared through their *update* (weights - init.caffemodel), element by element:
an absolute bound on the weights themselves passes for any weight that moved less than the
bound, whatever the solver did to it. Every bound below is the measured error against Caffe
(torch on 1 thread) with a margin of 2-5x; `python tests/unit/test_oracle_train.py` prints the
measurements.

* Losses: 1e-5 relative over all 40 iterations (measured <= 1.2e-6), Nesterov 2e-4 after the
  first 10 (measured 7e-5).
* First update (iter1.caffemodel): every element within 2 float32 ulps of the weight plus 1e-4
  of its own update for SGD and Nesterov (measured 2.1e-5), and per blob within 5e-6 of the
  largest update (measured 5.2e-7). The adaptive solvers divide by
  sqrt(history) + delta; where a gradient is float rounding noise (|g| ~ delta) their step is
  anywhere in [0, lr], so a few elements differ by up to 1.4 % of their step (measured) - for
  them at most 0.05 % of the elements may exceed 1e-4 (measured <= 0.02 %), and all are within
  the per-blob bound (max error / max |update|).
* After 40 updates the same two numbers are bounded per case (UPDATE_BOUNDS). Nesterov is the
  outlier: its first update matches Caffe to 2.1e-5 (the rule itself is exact) and its losses to
  2e-7 for 13 iterations, after which the loss difference against Caffe grows steadily to 7e-5
  at iteration 34; the final updates are within 0.25 % of each blob's largest update, with 10 %
  of the elements off by more than 1e-3 of their own update. Rounding Nesterov's two axpby steps
  once, as OpenBLAS's fused multiply-add does, leaves all three numbers unchanged, so the
  difference starts in the gradient sums (OpenBLAS vs torch), not in the update rule.
* Histories: per blob, the largest error over the largest |value| (measured <= 1.1e-5; Nesterov
  6.4e-3), and no element off by more than 1e-3 of itself + 1e-6 of the blob's largest |value|
  (Nesterov: 21 % of them are, like its weights).
"""
from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from conftest import ORACLE, load_json, train_cases
from hovcaffe.caffe.io import blob_to_array, read_caffemodel, read_solver, read_solverstate
from hovcaffe.training.hooks import TrainCallback
from hovcaffe.training.loop import TrainConfig, Trainer

LOSS_RTOL = {"nesterov": 2e-4}
DEFAULT_LOSS_RTOL = 1e-5
# case -> (largest error / largest |update| per blob, fraction of elements whose update is off by
# more than 1e-3 of itself) after 40 updates; measured values in the module docstring's script.
UPDATE_BOUNDS = {"nesterov": (5e-3, 0.2), "adagrad": (1e-3, 0.005), "rmsprop": (1e-3, 0.005),
                 "adam": (1e-4, 5e-4)}
DEFAULT_UPDATE_BOUNDS = (1e-5, 1e-4)
# first update: (largest error / largest |update| per blob, fraction of elements off by > 1e-4)
FIRST_UPDATE_BOUNDS = {"adagrad": (1e-2, 5e-4), "rmsprop": (1e-2, 5e-4), "adam": (5e-3, 5e-4),
                       "adadelta": (5e-5, 5e-4)}
DEFAULT_FIRST_UPDATE_BOUNDS = (5e-6, 0.0)
# history: (largest error / largest |value| per blob, fraction of elements off by more than
# 1e-3 of their value + 1e-6 of the blob's largest)
HISTORY_BOUNDS = {"nesterov": (1.5e-2, 0.3), "adagrad": (5e-5, 0.0), "rmsprop": (5e-5, 0.0)}
DEFAULT_HISTORY_BOUNDS = (1e-5, 0.0)


class Recorder(TrainCallback):
    def __init__(self):
        self.records = []

    def on_iteration(self, record):
        self.records.append(record)


@pytest.fixture(autouse=True)
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def run_case(case: str, tmp_path, *, chdir_to_case: bool = False, **overrides):
    """Train an oracle case; cwd is tmp_path (base-dir fallback) or the case folder (Caffe's way)."""
    folder = ORACLE / "train" / case
    old = os.getcwd()
    os.chdir(folder if chdir_to_case else tmp_path)
    try:
        sp = read_solver(folder / "solver.prototxt")
        rec = Recorder()
        trainer = Trainer(TrainConfig(sp, solver_path=str(folder / "solver.prototxt"),
                                      weights=[str(folder / "init.caffemodel")],
                                      snapshot_prefix=str(tmp_path / "snap"),
                                      handle_signals=False, **overrides), callbacks=[rec])
        result = trainer.solve()
    finally:
        os.chdir(old)
    return trainer, result, rec.records


def caffemodel_blobs(path) -> dict[str, np.ndarray]:
    return {f"{lp.name}/{i}": blob_to_array(blob)
            for lp in read_caffemodel(path).layer for i, blob in enumerate(lp.blobs)}


def update_errors(net, init_path, caffe_path, rel: float) -> tuple[float, float]:
    """(worst per-blob max|our update - Caffe's| / max|Caffe's update|, fraction of elements
    whose update error exceeds `rel` of Caffe's update). Updates are weights - init; 2 float32
    ulps of the weight are forgiven (w + update is rounded to float32 on both sides)."""
    init, theirs = caffemodel_blobs(init_path), caffemodel_blobs(caffe_path)
    worst, off, total = 0.0, 0, 0
    for key, final in theirs.items():
        name, index = key.rsplit("/", 1)
        ours = net.layers[name].blobs[int(index)].detach().numpy()
        start = init[key].astype(np.float64)
        theirs_step = final.astype(np.float64) - start
        ours_step = ours.astype(np.float64) - start
        ulp = np.spacing(np.maximum(np.abs(final), np.abs(init[key])).astype(np.float32))
        excess = np.maximum(0.0, np.abs(ours_step - theirs_step) - 2 * ulp.astype(np.float64))
        scale = float(np.abs(theirs_step).max())
        assert scale > 0, f"{key} did not move in Caffe's run"
        worst = max(worst, float(excess.max()) / scale)
        off += int((excess > rel * np.abs(theirs_step)).sum())
        total += excess.size
    return worst, off / total


def history_errors(ours, theirs, rel: float = 1e-3) -> tuple[float, float]:
    """(worst per-blob max|ours - Caffe's| / max|Caffe's|, fraction of elements with
    |ours - Caffe's| > rel*|Caffe's| + 1e-6*max|Caffe's|) over the solverstate histories."""
    worst, off, total = 0.0, 0, 0
    for a, b in zip(ours, theirs):
        ha, hb = blob_to_array(a).astype(np.float64), blob_to_array(b).astype(np.float64)
        assert ha.shape == hb.shape
        scale = float(np.abs(hb).max())
        error = np.abs(ha - hb)
        worst = max(worst, float(error.max()) / scale)
        off += int((error > rel * np.abs(hb) + 1e-6 * scale).sum())
        total += error.size
    return worst, off / total


@pytest.mark.parametrize("case", train_cases())
def test_trajectory_matches_caffe(case, tmp_path):
    folder = ORACLE / "train" / case
    trainer, result, records = run_case(case, tmp_path)
    expected = load_json(folder / "losses.json")

    # lr: float32-exact for all 40 iterations
    lrs = load_json(folder / "lr.json")["lr"]
    assert len(result.lrs) == len(lrs) == 40
    assert max(abs(a - b) for a, b in zip(result.lrs, lrs)) <= 1e-9

    # per-iteration loss (and sub-batch losses for iter_size 2)
    rtol = LOSS_RTOL.get(case, DEFAULT_LOSS_RTOL)
    np.testing.assert_allclose(result.losses[:10], expected["loss"][:10], rtol=1e-5)
    np.testing.assert_allclose(result.losses, expected["loss"], rtol=rtol)
    if "sub_losses" in expected:
        np.testing.assert_allclose([r.sub_losses for r in records[:40]], expected["sub_losses"],
                                   rtol=rtol)
    np.testing.assert_allclose([r.smoothed_loss for r in records[:40]],
                               expected["smoothed_loss"], rtol=rtol)
    # Caffe's extra forward after the last update (logged with 6 significant digits)
    final_it, final_loss = expected["final_forward_loss_log"]
    assert records[-1].iteration == final_it and records[-1].lr is None
    assert records[-1].loss == pytest.approx(final_loss, rel=max(rtol, 2e-5))

    # test outputs at iterations 0, 20 and 40
    exact = load_json(folder / "test.json")["exact"]
    assert sorted(result.test_scores) == sorted(int(k) for k in exact)
    for it, scores in exact.items():
        for name, value in scores.items():
            assert result.test_scores[int(it)][f"test/{name}"] == pytest.approx(
                value, rel=rtol, abs=1e-6), (it, name)

    # final weights, through their update from init.caffemodel
    blob_bound, fraction_bound = UPDATE_BOUNDS.get(case, DEFAULT_UPDATE_BOUNDS)
    worst, off = update_errors(trainer.train_net, folder / "init.caffemodel",
                               folder / "final.caffemodel", rel=1e-3)
    assert worst <= blob_bound and off <= fraction_bound, (worst, off)

    # the solverstate we write has Caffe's layout and (within tolerance) the same histories
    paths = trainer.snapshot()
    ours, theirs = read_solverstate(paths["state"]), read_solverstate(folder / "final.solverstate")
    assert (ours.iter, ours.current_step) == (theirs.iter, theirs.current_step) == (
        40, theirs.current_step)
    assert ours.learned_net == paths["model"]
    assert len(ours.history) == len(theirs.history)
    blob_bound, fraction_bound = HISTORY_BOUNDS.get(case, DEFAULT_HISTORY_BOUNDS)
    worst, off = history_errors(ours.history, theirs.history)
    assert worst <= blob_bound and off <= fraction_bound, (worst, off)


@pytest.mark.parametrize("case", train_cases())
def test_first_update_matches_caffe(case, tmp_path):
    """One step from init.caffemodel against Caffe's iter1.caffemodel, element by element."""
    folder = ORACLE / "train" / case
    trainer, _, _ = run_case(case, tmp_path, max_iter=1)
    blob_bound, fraction_bound = FIRST_UPDATE_BOUNDS.get(case, DEFAULT_FIRST_UPDATE_BOUNDS)
    worst, off = update_errors(trainer.train_net, folder / "init.caffemodel",
                               folder / "iter1.caffemodel", rel=1e-4)
    assert worst <= blob_bound and off <= fraction_bound, (worst, off)


def test_case_folder_as_cwd_works_too(tmp_path):
    """Caffe's own convention (cwd = case folder) resolves the same files."""
    trainer, result, _ = run_case("sgd_step", tmp_path, chdir_to_case=True, max_iter=3)
    expected = load_json(ORACLE / "train" / "sgd_step" / "losses.json")["loss"][:3]
    np.testing.assert_allclose(result.losses, expected, rtol=1e-5)


if __name__ == "__main__":  # prints the measurements the bounds above are set from
    import pathlib
    import tempfile

    torch.set_num_threads(1)
    for name in train_cases():
        case_dir = ORACLE / "train" / name
        losses = load_json(case_dir / "losses.json")["loss"]
        trained, result, _ = run_case(name, pathlib.Path(tempfile.mkdtemp()))
        loss_err = np.abs(np.subtract(result.losses, losses)) / np.abs(losses)
        state = read_solverstate(trained.snapshot()["state"])
        final = update_errors(trained.train_net, case_dir / "init.caffemodel",
                              case_dir / "final.caffemodel", rel=1e-3)
        first_step, _, _ = run_case(name, pathlib.Path(tempfile.mkdtemp()), max_iter=1)
        first = update_errors(first_step.train_net, case_dir / "init.caffemodel",
                              case_dir / "iter1.caffemodel", rel=1e-4)
        history = history_errors(state.history,
                                 read_solverstate(case_dir / "final.solverstate").history)
        print(f"{name:22s} loss rel {loss_err[:10].max():.1e}/{loss_err.max():.1e}  "
              f"iter1 {first[0]:.1e} {first[1]:.1e}  iter40 {final[0]:.1e} {final[1]:.1e}  "
              f"history {history[0]:.1e} {history[1]:.1e}")
