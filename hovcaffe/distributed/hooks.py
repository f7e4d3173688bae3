"""The distributed side of the training loop's seam (`hovcaffe.training.hooks.TrainHooks`), for
every backend: all communication goes through the rank's
:class:`~hovcaffe.distributed.backend.Collectives`.

What makes N ranks train like one Caffe solver with N devices (docs/caffe-semantics.md#update-order):

* gradients are averaged over ranks *before* Caffe's ApplyUpdate (clip, normalise, regularise,
  update): the collectives' averaging optimizer reduces inside `step()` before calling the
  Caffe optimizer's own `step`, which does the rest - the order multi-GPU Caffe uses;
* `iter_size` sub-batches accumulate locally and are reduced once per update;
* every rank starts from rank 0's weights, solver histories, iteration counter, lr-policy step
  and loss window (fillers are seeded with `random_seed + rank`, so they differ without this);
* statistics that layers update themselves in their forward pass (BatchNorm's mean, variance
  and scale-factor sums, a layer's `frozen_blobs`) get no gradient, so each rank accumulates its
  own; they are averaged over the ranks before every test pass, snapshot and at the end
  (`sync_statistics`). The update is linear (s <- maf*s + batch value), so averaging now and then
  gives what averaging every iteration would: the sums of the ranks' mean batch statistics;
* test scores: when `test_iter x batch` covers the TEST set, every rank scores its whole share
  of the set (its last batch short), each sample once, and the ranks' means are combined weighted
  by rows: the exact mean over the set. Otherwise (a partial pass) each rank scores its share of
  the `test_iter` batches from its own slice, combined weighted by batches, so every test batch
  counts once. Feeds that cannot tell their size, and TEST sets with fewer samples than ranks,
  take the second way.
"""
from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

from hovcaffe.training.hooks import TrainHooks

if TYPE_CHECKING:
    from hovcaffe.distributed.backend import Collectives
    from hovcaffe.training.loop import Trainer

log = logging.getLogger(__name__)

_ACTIONS = {None: 0, "snapshot": 1, "stop": 2}

#: keys of `Trainer.state_dict()` that every rank takes from rank 0
SHARED_STATE = ("iter", "lr_policy", "smoothed_loss", "seconds")


def rank_test_batches(test_iter: int, rank: int, size: int) -> int:
    """Test batches rank `rank` runs so that the ranks together run `test_iter` batches.

    Batch i of a test pass belongs to rank ``i mod size``; when there are fewer batches than ranks,
    every rank runs one (each rank must take part in the reduction).
    """
    if test_iter <= 0:
        return 0
    return max(1, len(range(rank, test_iter, size)))


def _batch_rows(feeder) -> int:
    """The batch size of a test net's feeder (rows of its first input), 0 when unknown."""
    shapes = feeder.input_shapes()
    first = next(iter(shapes.values()), ())
    return int(first[0]) if first else 0


def gradient_groups(device) -> int:
    """1 (one grouped reduction per update) or 0 (per parameter, overlapping the backward pass);
    see `HorovodTuning.gradient_groups`."""
    value = os.environ.get("HOVCAFFE_GRADIENT_GROUPS", "")
    if value.strip():
        return int(value)
    return 0 if getattr(device, "type", "cpu") == "cuda" else 1


class DistributedHooks(TrainHooks):
    """`TrainHooks` for one rank of a distributed run (see the module docstring).

    Args:
        collectives: the rank's collectives (its backend's).
        device: the rank's torch device (decides how gradients are grouped).
        signals: whether ranks handle signals themselves; when False (the default under Spark,
            where the driver owns Ctrl-C) the per-iteration agreement costs no collective.
    """

    def __init__(self, collectives: "Collectives", device=None, *, signals: bool = False) -> None:
        self.collectives = collectives
        self.device = device
        self.rank = collectives.rank
        self.world_size = collectives.size
        self.signals = signals
        #: per test-output prefix, this rank's weight in the combined score (rows or batches)
        self._test_counts: dict[str, int] = {}
        #: test nets scored sample-exactly: net index -> rows of this rank's share
        self._samples: dict[int, int] = {}

    @property
    def allreduce_wait_s(self) -> float:
        """Seconds spent waiting for gradient reductions to finish (the rest of the
        communication overlaps the backward pass)."""
        return self.collectives.allreduce_wait_s

    # -- optimizer -------------------------------------------------------------------------
    def wrap_optimizer(self, optimizer, learnables, solver):
        named = [(item.name, item.param) for item in learnables]
        return self.collectives.averaging_optimizer(
            optimizer, named, passes_per_step=max(1, int(solver.iter_size)),
            groups=gradient_groups(self.device))

    # -- state -----------------------------------------------------------------------------
    def broadcast_state(self, trainer: "Trainer") -> None:
        broadcast = self.collectives.broadcast_tensors
        broadcast(trainer.train_net.state_dict(), root=0)
        for k, net in enumerate(trainer.test_nets):  # test-only layers; shared ones are no-ops
            broadcast({f"test{k}.{n}": t for n, t in net.state_dict().items()}, root=0)
        opt = trainer.optimizer
        for key in type(opt).history_keys:
            broadcast({f"history.{key}.{i}": opt.state[p][key] for i, p in enumerate(trainer.params)},
                      root=0)
        scalars = self.collectives.broadcast_object(self._scalars(trainer), root=0,
                                                    name="train_scalars")
        if self.rank != 0:
            self._apply_scalars(trainer, scalars)
        self._split_test_passes(trainer)

    @staticmethod
    def _scalars(trainer: "Trainer") -> dict[str, Any]:
        """The part of rank 0's `Trainer.state_dict()` every rank takes (the tensors travel as
        tensors): RNG streams and test-feed positions stay each rank's own."""
        state = trainer.state_dict(tensors=False)
        shared = {key: state[key] for key in SHARED_STATE}
        if trainer.iter > 0:
            # Rank-local stream positions are equal on all ranks (same batches so far), so rank
            # 0's train-feed position after a resume is every rank's position.
            shared["train_feed"] = state["train_feed"]
        return shared

    @staticmethod
    def _apply_scalars(trainer: "Trainer", shared: dict[str, Any]) -> None:
        trainer.load_state_dict(shared, source="rank 0")

    def _split_test_passes(self, trainer: "Trainer") -> None:
        """Decide, per test net, how this rank takes part in a test pass (see the module doc)."""
        import dataclasses

        import torch

        if not trainer.test_specs:
            return
        counts = [feeder.pass_samples() for feeder in trainer.test_feeders]
        # per net: samples over all ranks, ranks that cannot tell, ranks with no samples at all
        packed = torch.tensor([[float(c or 0), float(c is None), float(c == 0)] for c in counts],
                              dtype=torch.float64)
        totals = self.collectives.allreduce_sum(packed, name="test_pass_samples").tolist()
        for k, spec in enumerate(trainer.test_specs):
            prefix = "test" if k == 0 else f"test{k}"
            (total, unknown, empty), batch = totals[k], _batch_rows(trainer.test_feeders[k])
            if (self.world_size > 1 and not unknown and not empty and batch
                    and spec.test_iter * batch >= total):
                # test_iter batches cover the whole TEST set: every rank scores all of its share,
                # each sample once, weighted by rows.
                self._samples[k] = int(counts[k])
                self._test_counts[prefix] = int(counts[k])
                log.info("test net #%d: %d of the %d TEST samples scored on rank %d (each sample "
                         "once; test_iter %d x batch %d covers the set)", k, counts[k], int(total),
                         self.rank, spec.test_iter, batch)
                continue
            share = rank_test_batches(spec.test_iter, self.rank, self.world_size)
            self._test_counts[prefix] = share
            trainer.test_specs[k] = dataclasses.replace(spec, test_iter=share)

    def test_samples(self, k: int) -> int | None:
        return self._samples.get(k)

    # -- layer statistics ------------------------------------------------------------------
    def sync_statistics(self, trainer: "Trainer") -> None:
        # Test nets share these blobs with the train net (share_from), so its owners cover them.
        # Without this, rank 1 scored its share of a test pass with its own statistics and the
        # ranks ended with different weights (rank 0's snapshot held rank 0's only).
        stats = [module.blobs[i] for module in trainer.train_net.layers.values()
                 for i in getattr(module, "frozen_blobs", ())]
        if not stats:
            return
        import torch

        with torch.no_grad():
            flat = torch.cat([t.detach().reshape(-1) for t in stats])
            mean = self.collectives.allreduce_sum(flat, name="layer_statistics") / self.world_size
            offset = 0
            for t in stats:
                t.copy_(mean[offset:offset + t.numel()].view_as(t))
                offset += t.numel()

    # -- test scores -----------------------------------------------------------------------
    def reduce_test_scores(self, scores: dict[str, float]) -> dict[str, float]:
        if not scores:
            return scores
        names = sorted(scores)
        counts = [float(self._test_counts.get(n.split("/", 1)[0], 1)) for n in names]
        means = self.collectives.weighted_mean([scores[n] for n in names], counts, name="test_scores")
        return dict(zip(names, means))

    def gather_objects(self, obj: object) -> list:
        # Each rank broadcasts in turn: the Collectives interface has no gather of objects.
        return [self.collectives.broadcast_object(obj if r == self.rank else None, root=r,
                                                  name=f"gather_{r}")
                for r in range(self.world_size)]

    # -- signals ---------------------------------------------------------------------------
    def agree_action(self, action: str | None) -> str | None:
        if not self.signals:
            return action
        import torch

        code = torch.tensor([_ACTIONS.get(action, 0)], dtype=torch.int32)
        agreed = int(self.collectives.allreduce_max(code, name="signal_action").item())
        return {v: k for k, v in _ACTIONS.items()}[agreed]
