"""The training loop with Caffe's semantics (`Solver::Solve` / `Step` / `TestAll`).

Per iteration (docs/caffe-semantics.md#the-training-loop): test every `test_interval` (also at 0 when
`test_initialization`), `iter_size` forward/backward passes with accumulated gradients, the
smoothed loss, display, `ApplyUpdate` (the optimizer), then snapshots every `snapshot` iterations.
After `max_iter`: the `snapshot_after_train` snapshot, Caffe's final display forward and test.

The same loop runs each Horovod rank. `TrainHooks` is the seam: a distributed runner subclasses it
to wrap the optimizer (`horovod.torch.DistributedOptimizer`), broadcast rank 0's state, average
test scores, agree on signal actions and let only rank 0 write files. Callbacks (`on_test`,
`on_iteration`, `on_snapshot`, `on_end`) receive the numbers for logs and progress bars.

Signals: SIGINT/SIGTERM follow `sigint_effect`, SIGHUP `sighup_effect`: "snapshot" writes a
snapshot and continues (Caffe), "stop" ends training after the current iteration *with* a
snapshot so the run can be resumed (Caffe only snapshots then when `snapshot_after_train`), "none"
ignores the signal. A second SIGINT while a stop is pending interrupts at once.
"""
from __future__ import annotations

import copy
import dataclasses
import logging
import math
import os
import time
from typing import Any, Sequence

import numpy as np
import torch

from hovcaffe.caffe import caffe_pb2
from hovcaffe.data.registry import FeedContext
from hovcaffe.errors import TrainingDiverged
from hovcaffe.metrics import SmoothedLoss
from hovcaffe.runtime.fastpath import enable_fast_path
from hovcaffe.runtime.precision import Precision, apply_precision, autocast
from hovcaffe.runtime.process import apply_process_settings
from hovcaffe.solver import build_optimizer
from hovcaffe.solver.lr_policy import LrPolicy
from hovcaffe.solver.state import history_arrays, load_history
from hovcaffe.training.checkpoints import (SnapshotFiles, default_prefix, read_checkpoint,
                                           rng_state, set_rng_state, write_checkpoint)
from hovcaffe.training.detection_scoring import detection_test
from hovcaffe.training.feeder import NetFeeder
from hovcaffe.training.hooks import IterationRecord, TrainCallback, TrainHooks, TrainResult
from hovcaffe.training.nets import NetSpec, test_net_specs, train_net_spec
from hovcaffe.training.scoring import flatten_scores, run_test, score_samples
from hovcaffe.training.signals import SignalRequests
from hovcaffe.utils.paths import resolve_path
from hovcaffe.weights import load_weights, split_weights

log = logging.getLogger(__name__)
f32 = np.float32

@dataclasses.dataclass
class TrainConfig:
    """Everything `hovcaffe train` passes to the loop besides the solver itself.

    Attributes:
        solver: the SolverParameter (already read and upgraded).
        solver_path: the solver file (relative paths and the default snapshot prefix use it).
        weights: weights files to fine-tune from (copied by layer name, in order; any
            `hovcaffe.weights.WEIGHT_FORMATS`).
        resume: a .solverstate to resume from.
        max_iter: overrides the solver's max_iter (total updates, also used by `poly`).
        snapshot_prefix: overrides the solver's snapshot_prefix.
        train_data / test_data: source overrides for the train / test nets' data layers.
        input_data: .npz with arrays for Input blobs (train and test nets).
        device: torch device for nets and batches.
        sigint_effect / sighup_effect: "snapshot", "stop" or "none".
        handle_signals: install the signal handlers (main thread only).
        fast: the train net's fast path, "auto", "on" or "off" (`hovcaffe.runtime.fastpath`).
        precision: TF32 / AMP opt-ins; the default is Caffe-exact fp32 on every device.
    """

    solver: caffe_pb2.SolverParameter
    solver_path: str | None = None
    weights: Sequence[str] = ()
    resume: str | None = None
    max_iter: int | None = None
    snapshot_prefix: str | None = None
    train_data: str | None = None
    test_data: str | None = None
    input_data: str | None = None
    device: str = "cpu"
    sigint_effect: str = "stop"
    sighup_effect: str = "snapshot"
    handle_signals: bool = True
    fast: str = "off"
    precision: Precision = Precision()


class Trainer:
    """Caffe's solver loop over a train net and its test nets.

    Args:
        config: the solver and command-line settings.
        hooks: distributed seam (default: one process).
        callbacks: receivers of iteration/test/snapshot events.
        net_factory: `(NetSpec, input_shapes) -> net` (default: `hovcaffe.net.CaffeNet`).
    """

    def __init__(self, config: TrainConfig, hooks: TrainHooks | None = None,
                 callbacks: Sequence[TrainCallback] = (), net_factory=None) -> None:
        apply_process_settings()  # e.g. iterations reuse the heap instead of page-faulting it
        self.config = config
        self.hooks = hooks or TrainHooks()
        self.callbacks = list(callbacks)
        sp = caffe_pb2.SolverParameter()
        sp.CopyFrom(config.solver)
        if config.max_iter is not None:
            sp.max_iter = int(config.max_iter)
        self.sp = sp
        self.snapshot_format = ("HDF5" if sp.snapshot_format == caffe_pb2.SolverParameter.HDF5
                                else "BINARYPROTO")
        self.prefix = default_prefix(config.solver_path, config.snapshot_prefix
                                     or sp.snapshot_prefix)
        self.signals = SignalRequests(config.sigint_effect, config.sighup_effect)
        if sp.snapshot_diff:
            log.warning("snapshot_diff is not supported: snapshots hold weights, not gradients")
        self.device = torch.device(config.device)
        apply_precision(self.device, config.precision)  # exact fp32 on CUDA unless opted out
        self._fast_chosen = config.fast == "off"
        self.seed = sp.random_seed if sp.random_seed >= 0 else None
        if self.seed is not None:  # Caffe seeds before building nets (fillers) with seed + rank
            torch.manual_seed(self.seed + self.hooks.rank)

        factory = net_factory or _default_net_factory
        self.train_spec = train_net_spec(sp, config.solver_path)
        self.test_specs: list[NetSpec] = test_net_specs(sp, config.solver_path)
        # Feeds first: data-layer shapes that only the data knows are needed to build the nets.
        self.train_feeder = self._feeder(self.train_spec, config.train_data)
        self.test_feeders = [self._feeder(spec, config.test_data) for spec in self.test_specs]
        self.train_net = factory(self.train_spec, self.train_feeder.input_shapes()).to(self.device)
        self.test_nets = [factory(spec, feeder.input_shapes()).to(self.device)
                          for spec, feeder in zip(self.test_specs, self.test_feeders)]
        solver_dir = os.path.dirname(os.path.abspath(config.solver_path)) if config.solver_path \
            else None
        #: (weights file, LoadReport) per fine-tuning file, in load order
        self.weight_reports = [(w, load_weights([self.train_net, *self.test_nets], w,
                                                base_dir=solver_dir))
                               for w in split_weights(list(sp.weights) + list(config.weights))]
        for net in self.test_nets:
            net.share_from(self.train_net)

        self.learnables = list(self.train_net.learnable_params())
        self.params = [item.param for item in self.learnables]
        optimizer = build_optimizer(sp, self.learnables)
        self.optimizer = self.hooks.wrap_optimizer(optimizer, self.learnables, sp)
        self.lr_policy = LrPolicy.from_solver(sp)
        self.smoothed = SmoothedLoss(sp.average_loss)
        self.seconds_offset = 0.0  # seconds trained before this process (restored on resume)
        self._start: float | None = None
        self.last_snapshot: dict[str, str] | None = None
        self._snapshot_iter = -1
        if config.resume:
            self._resume(config.resume)
        self.hooks.broadcast_state(self)

    # ------------------------------------------------------------------------------- helpers
    def _feeder(self, spec: NetSpec, override: str | None) -> NetFeeder:
        ctx = FeedContext(phase=spec.phase, rank=self.hooks.rank,
                          world_size=self.hooks.world_size, seed=self.seed,
                          base_dir=spec.base_dir)
        return NetFeeder.for_spec(spec, ctx, source_override=override,
                                  input_data=self.config.input_data, device=self.device)

    def elapsed(self) -> float:
        """Training seconds so far, including those before a resume."""
        now = time.perf_counter()
        return self.seconds_offset + (now - self._start if self._start is not None else 0.0)

    @property
    def iter(self) -> int:
        """Completed updates (kept by the optimizer, so a wrapped optimizer carries it too)."""
        return self.optimizer.iteration

    def _emit(self, event: str, *args) -> None:
        for cb in self.callbacks:
            getattr(cb, event)(*args)

    # ------------------------------------------------------------------------------- testing
    def test_all(self) -> dict[str, float]:
        """Run every test net (Caffe's TestAll); returns `test[k]/<output>` means."""
        scores: dict[str, float] = {}
        self.hooks.sync_statistics(self)
        for k in range(len(self.test_nets)):
            scores.update(self._test(k))
        scores = self.hooks.reduce_test_scores(scores)
        for name, value in scores.items():
            log.info("    Test net output: %s = %.6g", name, value)
        self._emit("on_test", self.iter, scores)
        return scores

    def _test(self, k: int) -> dict[str, float]:
        spec = self.test_specs[k]
        log.info("Iteration %d, Testing net (#%d)", self.iter, k)
        samples = self.hooks.test_samples(k)
        if self.sp.eval_type == "detection":
            means, loss = detection_test(self.test_nets[k], self.test_feeders[k], spec.test_iter,
                                         samples, ap_version=self.sp.ap_version,
                                         gather=self.hooks.gather_objects,
                                         compute_loss=bool(self.sp.test_compute_loss),
                                         should_stop=self.signals.stop_pending)
        elif samples is None:
            means, loss = run_test(self.test_nets[k], self.test_feeders[k], spec.test_iter,
                                   compute_loss=bool(self.sp.test_compute_loss),
                                   should_stop=self.signals.stop_pending)
        else:
            means, loss = score_samples(self.test_nets[k], self.test_feeders[k], samples,
                                        compute_loss=bool(self.sp.test_compute_loss),
                                        should_stop=self.signals.stop_pending)
        return flatten_scores(means, loss, "test" if k == 0 else f"test{k}")

    # ------------------------------------------------------------------------------- training
    def _forward_backward(self) -> tuple[f32, list[float], dict[str, float]]:
        total = f32(0)
        subs: list[float] = []
        blobs: dict[str, torch.Tensor] = {}
        for _ in range(max(1, self.sp.iter_size)):
            batch = self.train_feeder.next_batch()
            if not self._fast_chosen:  # measured on the first batch; the net is left as it was
                enable_fast_path(self.train_net, self.config.fast, batch, training=True,
                                 planned_passes=(self.sp.max_iter - self.iter)
                                 * max(1, self.sp.iter_size),
                                 may_measure=self.hooks.world_size == 1)  # no extra allreduces
                self._fast_chosen = True
            with autocast(self.device, self.config.precision):
                blobs = self.train_net(**batch)
                loss = self.train_net.objective(blobs)
            loss.backward()  # gradients accumulate over the passes, like Caffe's diffs
            subs.append(float(f32(loss.item())))
            total = f32(total + f32(subs[-1]))
        loss = f32(total / f32(max(1, self.sp.iter_size)))
        return loss, subs, _scalar_outputs(self.train_net, blobs)

    def step(self) -> IterationRecord:
        """One training iteration (without the test that may precede it)."""
        it = self.iter
        self.optimizer.zero_grad()
        loss, subs, outputs = self._forward_backward()
        if not math.isfinite(float(loss)):
            where = (f"last good snapshot: {self.last_snapshot['state']}" if self.last_snapshot
                     else "no snapshot was written in this run")
            raise TrainingDiverged(
                f"training loss is {float(loss)} at iteration {it}; stopping before the update "
                f"({where}). Lower base_lr or set clip_gradients.")
        smoothed = self.smoothed.update(loss, it)
        rate = self.lr_policy.rate(it)
        if self.sp.display and it % self.sp.display == 0:
            log.info("Iteration %d, loss = %.6g", it, smoothed)
            for name, value in outputs.items():
                log.info("    Train net output: %s = %.6g", name, value)
            log.info("Iteration %d, lr = %.6g", it, rate)
        self.optimizer.set_rate(rate)
        self.optimizer.step()
        return IterationRecord(it, rate, float(loss), smoothed, self.elapsed(), outputs, None, subs)

    def solve(self) -> TrainResult:
        """Train until max_iter (or a stop signal); returns the trajectory."""
        sp = self.sp
        losses: list[float] = []
        lrs: list[float] = []
        tests: dict[int, dict[str, float]] = {}
        stopped_by = None
        self._start = time.perf_counter()
        self._emit("on_start", self)
        with self.signals.installed(self.config.handle_signals):
            while self.iter < sp.max_iter:
                scores = None
                if (sp.test_interval and self.iter % sp.test_interval == 0
                        and (self.iter > 0 or sp.test_initialization) and self.test_nets):
                    scores = tests[self.iter] = self.test_all()
                    if self._stop_requested_during_test():
                        stopped_by = self._stop()
                        break
                record = self.step()
                record.test = scores
                losses.append(record.loss)
                lrs.append(record.lr)
                self._emit("on_iteration", record)
                action = self._take_action()
                if (sp.snapshot and self.iter % sp.snapshot == 0) or action == "snapshot":
                    self.snapshot()
                if action == "stop":
                    stopped_by = self._stop()
                    break
            else:
                self._finish(tests)
        self.hooks.sync_statistics(self)  # the final forward of _finish updated them too
        result = TrainResult(self.iter, losses, lrs, tests, self.last_snapshot, stopped_by)
        self._emit("on_end", result)
        return result

    def _finish(self, tests: dict[int, dict[str, float]]) -> None:
        sp = self.sp
        if sp.snapshot_after_train and not (sp.snapshot and self.iter % sp.snapshot == 0):
            self.snapshot()
        loss = smoothed = None
        if sp.display and self.iter % sp.display == 0:
            with torch.no_grad():  # Caffe's final forward, for the display only
                blobs = self.train_net(**self.train_feeder.next_batch())
                loss = float(f32(self.train_net.objective(blobs).item()))
            smoothed = self.smoothed.update(loss, self.iter)
            log.info("Iteration %d, loss = %.6g", self.iter, smoothed)
        scores = None
        if sp.test_interval and self.iter % sp.test_interval == 0 and self.test_nets:
            scores = tests[self.iter] = self.test_all()
        if loss is not None or scores is not None:
            self._emit("on_iteration", IterationRecord(self.iter, None, loss, smoothed,
                                                       self.elapsed(), {}, scores))
        log.info("Optimization Done.")

    def _stop(self) -> str | None:
        by = self.signals.signal_name or "a signal on another rank"
        log.info("Optimization stopped early by %s at iteration %d", by, self.iter)
        if self._snapshot_iter != self.iter:
            self.snapshot()
        return self.signals.signal_name or "SIGTERM"

    # ------------------------------------------------------------------------------- snapshots
    def snapshot(self) -> dict[str, str] | None:
        """Write `<prefix>_iter_<iter>` snapshot files (rank 0 only); returns their paths."""
        self.hooks.sync_statistics(self)  # every rank: a collective
        if not self.hooks.is_writer:
            return None
        files = SnapshotFiles.at(self.prefix, self.iter, hdf5=self.snapshot_format == "HDF5")
        write_checkpoint(files, self.train_net, self.state_dict())
        paths = files.paths()
        self.last_snapshot, self._snapshot_iter = paths, self.iter
        log.info("Snapshotting to %s and %s", paths["model"], paths["state"])
        self._emit("on_snapshot", self.iter, paths)
        return paths

    def _resume(self, state_path: str) -> None:
        """Continue from a snapshot: its weights (unless -weights were given) and its state."""
        state_path = resolve_path(state_path, None, what="solverstate")
        state, weights = read_checkpoint(state_path)
        if not self.config.weights:
            load_weights([self.train_net], weights)
        self.load_state_dict(state, source=state_path)
        log.info("resumed from %s at iteration %d", state_path, self.iter)

    # ------------------------------------------------------------------------------- state
    def state_dict(self, *, tensors: bool = True) -> dict[str, Any]:
        """Everything this run needs to continue exactly where it is (the one training state).

        Keys:
            iter, lr_policy, smoothed_loss, seconds, solver_type: the same on every rank;
            train_feed, test_feeds, rng: this process's feed positions and RNG states;
            weights (the train net's `state_dict()`) and history (the solver's histories in
            .solverstate order, float32 arrays): with `tensors` only.

        Everything but the tensors is JSON-safe. Checkpoints store the weights in the
        .caffemodel, the histories in the .solverstate and the rest in the sidecar
        (`hovcaffe.training.checkpoints`); ranks broadcast rank 0's copy.
        """
        state: dict[str, Any] = copy.deepcopy({  # a snapshot of now, not views of live objects
            "iter": self.iter,
            "solver_type": self.sp.type,
            "lr_policy": self.lr_policy.state_dict(),
            "smoothed_loss": self.smoothed.state_dict(),
            "train_feed": self.train_feeder.state_dict(),
            "test_feeds": [f.state_dict() for f in self.test_feeders],
            "rng": rng_state(),
            "seconds": self.elapsed(),
        })
        if tensors:
            state["weights"] = {k: v.detach().clone() for k, v in self.train_net.state_dict().items()}
            state["history"] = history_arrays(self.optimizer, self.params)
        return state

    def load_state_dict(self, state: dict[str, Any], *, source: str = "<state_dict>") -> None:
        """Restore what `state` holds (keys as in `state_dict`; absent ones are left as they are).

        Args:
            state: a (possibly partial) `state_dict()`.
            source: where it came from, for messages.
        """
        if "weights" in state:
            self.train_net.load_state_dict(state["weights"])  # test nets share these tensors
        if "history" in state:
            load_history(self.optimizer, self.params, state["history"], source=source)
        if "iter" in state:
            self.optimizer.iteration = int(state["iter"])
        if "lr_policy" in state:
            self.lr_policy.load_state_dict(state["lr_policy"])
        if "smoothed_loss" in state:
            self.smoothed.load_state_dict(state["smoothed_loss"])
        if "train_feed" in state:
            self.train_feeder.load_state_dict(state["train_feed"])
        for feeder, saved in zip(self.test_feeders, state.get("test_feeds", [])):
            feeder.load_state_dict(saved)
        if "seconds" in state:
            self.seconds_offset = float(state["seconds"])
        if "rng" in state:  # last: nothing above may draw from the restored streams
            set_rng_state(state["rng"])

    # ------------------------------------------------------------------------------- signals
    def _take_action(self) -> str | None:
        return self.hooks.agree_action(self.signals.take())

    def _stop_requested_during_test(self) -> bool:
        # Only a stop ends the loop here; a pending "snapshot" waits for the iteration's end.
        local = "stop" if self.signals.stop_pending() else None
        stop = self.hooks.agree_action(local) == "stop"
        if stop:
            self.signals.take()
        return stop


def _scalar_outputs(net, blobs: dict[str, torch.Tensor]) -> dict[str, float]:
    return {name: float(blobs[name].detach().reshape(-1)[0]) for name in net.output_names
            if name in blobs and blobs[name].numel() == 1}


def _default_net_factory(spec: NetSpec, input_shapes: dict[str, tuple[int, ...]]):
    from hovcaffe.net import CaffeNet

    return CaffeNet(spec.param, spec.phase, state=spec.state, input_shapes=input_shapes,
                    source=spec.source)


def train(config: TrainConfig, hooks: TrainHooks | None = None,
          callbacks: Sequence[TrainCallback] = ()) -> TrainResult:
    """Build the nets and solver from `config` and run Caffe's training loop."""
    return Trainer(config, hooks, callbacks).solve()
