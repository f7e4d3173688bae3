"""Training-loop callbacks that run on the ranks.

* :class:`FaultCallback` (every rank): the test-only fault hooks of :mod:`faults`.
* :class:`EventCallback` (rank 0): progress as ``HOVCAFFE-EVENT`` lines for the driver's display.
* :class:`OutputCallback` (rank 0): copies snapshots to a remote model folder and writes the final
  model to `-model`.
"""
from __future__ import annotations

import logging
import math
import os
import time
from typing import Any, Mapping

from hovcaffe.distributed import outputs
from hovcaffe.distributed.faults import FaultHook
from hovcaffe.distributed.protocol import emit_event
from hovcaffe.training.hooks import TrainCallback

log = logging.getLogger(__name__)


def _num(value: Any) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


class FaultCallback(TrainCallback):
    """Calls the fault hook at the start of every iteration (a no-op unless a test enables it)."""

    def __init__(self, faults: FaultHook) -> None:
        self.faults = faults

    def on_start(self, trainer) -> None:
        if self.faults.active:
            self.faults.on_iteration(trainer.iter)

    def on_iteration(self, record) -> None:
        if self.faults.active and record.lr is not None:
            self.faults.on_iteration(record.iteration + 1)


class EventCallback(TrainCallback):
    """Rank 0's progress, sent to the driver (at most every `interval_s`, plus every test,
    display iteration, snapshot and the end)."""

    def __init__(self, interval_s: float = 0.5, startup: Mapping[str, float] | None = None) -> None:
        self.interval_s = interval_s
        self.startup = dict(startup or {})
        self._last = 0.0
        self._display = 0
        self._max_iter = 0

    def on_start(self, trainer) -> None:
        self._display = int(trainer.sp.display)
        self._max_iter = int(trainer.sp.max_iter)
        self.startup["trainer_ready"] = time.time()
        emit_event("start", iter=trainer.iter, max_iter=self._max_iter, pid=os.getpid(),
                   startup=self.startup)

    def on_test(self, iteration: int, scores: Mapping[str, float]) -> None:
        emit_event("test", iter=iteration, scores={k: _num(v) for k, v in scores.items()})

    def on_iteration(self, record) -> None:
        now = time.monotonic()
        shown = self._display and record.iteration % self._display == 0
        final = record.lr is None or record.iteration + 1 >= self._max_iter
        if not (shown or final or record.test or now - self._last >= self.interval_s):
            return
        self._last = now
        emit_event("iter", iter=record.iteration, lr=_num(record.lr), loss=_num(record.loss),
                    smoothed_loss=_num(record.smoothed_loss), seconds=round(record.seconds, 3),
                    display=bool(shown), final=record.lr is None)

    def on_snapshot(self, iteration: int, paths: Mapping[str, str]) -> None:
        emit_event("snapshot", iter=iteration, paths=dict(paths))

    def on_end(self, result) -> None:
        emit_event("end", iter=result.iterations, stopped_by=result.stopped_by)


class OutputCallback(TrainCallback):
    """Rank 0's files: mirror snapshots to `mirror_dir` (a remote folder URL) and write the final
    weights to `model_url`.

    Args:
        mirror_dir: folder URL the snapshots are copied to (None: they are written in place).
        model_url: where the final .caffemodel goes (None: only the snapshots).
        staging_dir: a local folder for the final model before it is copied to a remote URL.
        extra_files: local files copied to `mirror_dir` at the end (the metrics CSV).
    """

    def __init__(self, mirror_dir: str | None, model_url: str | None, staging_dir: str,
                 extra_files: tuple[str, ...] = ()) -> None:
        self.mirror_dir = mirror_dir
        self.model_url = model_url
        self.staging_dir = staging_dir
        self.extra_files = extra_files
        self._trainer = None
        self._last_model: tuple[int, str] | None = None

    def on_start(self, trainer) -> None:
        self._trainer = trainer

    def on_snapshot(self, iteration: int, paths: Mapping[str, str]) -> None:
        self._last_model = (iteration, paths["model"])
        if self.mirror_dir:
            for key in ("model", "sidecar", "state"):  # solverstate last: it marks completeness
                if key in paths and os.path.exists(paths[key]):
                    outputs.upload(paths[key], outputs.join(self.mirror_dir, os.path.basename(paths[key])))

    def on_end(self, result) -> None:
        if self.mirror_dir:
            for path in self.extra_files:
                if path and os.path.exists(path):
                    outputs.upload(path, outputs.join(self.mirror_dir, os.path.basename(path)))
        if not self.model_url or self._trainer is None:
            return
        if self._last_model and self._last_model[0] == result.iterations \
                and not self._last_model[1].endswith(".h5"):
            outputs.upload(self._last_model[1], self.model_url)
        else:
            from hovcaffe.weights import save_caffemodel

            local = outputs.is_local(self.model_url)
            staged = (outputs.local_path(self.model_url) if local else
                      os.path.join(self.staging_dir, os.path.basename(self.model_url)))
            os.makedirs(os.path.dirname(staged), exist_ok=True)
            save_caffemodel(self._trainer.train_net, staged)
            if not local:
                outputs.upload(staged, self.model_url)
        log.info("final model written to %s", self.model_url)
        emit_event("model", url=self.model_url, iter=result.iterations)
