"""The driver's view of a distributed training run, fed by rank 0's progress events.

On a terminal: a progress bar (iteration, smoothed loss, lr, it/s, ETA) with test results and
snapshots logged above it. Elsewhere (logs, CI): Caffe-style log lines at display iterations.
Events arrive on Horovod's output threads, so every method takes a lock.
"""
from __future__ import annotations

import logging
import sys
import threading
from typing import Any, TextIO

log = logging.getLogger("hovcaffe.training.loop")


class DriverProgress:
    """Callable event handler for :func:`hovcaffe.distributed.runner.run_distributed`.

    Args:
        bar: draw a tqdm bar (default: when `stream` is a terminal).
        stream: where the bar goes.
    """

    def __init__(self, bar: bool | None = None, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stderr
        self.use_bar = self.stream.isatty() if bar is None else bar
        self._bar = None
        self._lock = threading.Lock()
        self.last_test: dict[str, float] = {}
        self.last_iter = 0
        self.first_iter_at: float | None = None

    def __call__(self, event: dict[str, Any]) -> None:
        handler = getattr(self, f"_on_{event.get('kind')}", None)
        if handler is not None:
            with self._lock:
                handler(event)

    def close(self) -> None:
        with self._lock:
            if self._bar is not None:
                self._bar.close()
                self._bar = None

    # -- events ----------------------------------------------------------------------------
    def _on_start(self, e: dict) -> None:
        self.last_iter = int(e.get("iter", 0))
        if self.use_bar:
            from tqdm import tqdm

            self._bar = tqdm(total=int(e.get("max_iter", 0)), initial=self.last_iter, unit="it",
                             file=self.stream, dynamic_ncols=True, leave=True, desc="train")
        else:
            log.info("training started at iteration %d of %d", self.last_iter, int(e.get("max_iter", 0)))

    def _on_iter(self, e: dict) -> None:
        import time

        if self.first_iter_at is None:
            self.first_iter_at = time.time()
        it = int(e["iter"])
        done = it if e.get("final") else it + 1
        if self._bar is not None:
            post = {"loss": _fmt(e.get("smoothed_loss")), "lr": _fmt(e.get("lr"))}
            if self.last_test:
                post.update({k.split("/", 1)[-1]: _fmt(v) for k, v in self.last_test.items()})
            self._bar.set_postfix(post, refresh=False)
            self._bar.update(max(0, done - self.last_iter))
        elif e.get("display") or e.get("final"):
            log.info("Iteration %d, loss = %s, lr = %s", it, _fmt(e.get("smoothed_loss")), _fmt(e.get("lr")))
        self.last_iter = max(self.last_iter, done)

    def _on_test(self, e: dict) -> None:
        self.last_test = {k: v for k, v in (e.get("scores") or {}).items() if v is not None}
        text = ", ".join(f"{k} = {_fmt(v)}" for k, v in self.last_test.items())
        self._write(f"Iteration {e.get('iter')}, test: {text}")

    def _on_snapshot(self, e: dict) -> None:
        self._write(f"Snapshot at iteration {e.get('iter')}: {(e.get('paths') or {}).get('model', '')}")

    def _on_model(self, e: dict) -> None:
        self._write(f"Final model: {e.get('url')}")

    def _write(self, text: str) -> None:
        if self._bar is not None:
            self._bar.write(text, file=self.stream)
        else:
            log.info("%s", text)


def _fmt(value: Any) -> str:
    if value is None:
        return "-"
    return f"{float(value):.4g}"
