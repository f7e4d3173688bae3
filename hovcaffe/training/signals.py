"""Signals as requests the training loop polls between iterations (Caffe's SignalHandler).

SIGINT and SIGTERM map to `sigint_effect`, SIGHUP to `sighup_effect`; each effect is "snapshot",
"stop" or "none". The handler only records the request - the loop acts on it at a safe point (end
of an iteration, or between test batches for a stop), so a snapshot is never taken mid-update.
A second SIGINT while a stop is pending raises KeyboardInterrupt at once.
"""
from __future__ import annotations

import contextlib
import logging
import signal
import threading
from typing import Iterator

from hovcaffe.errors import UserInputError

log = logging.getLogger(__name__)

EFFECTS = ("snapshot", "stop", "none")


class SignalRequests:
    """Pending signal actions.

    Args:
        sigint_effect: what SIGINT and SIGTERM request.
        sighup_effect: what SIGHUP requests.
    """

    def __init__(self, sigint_effect: str = "stop", sighup_effect: str = "snapshot") -> None:
        for effect in (sigint_effect, sighup_effect):
            if effect not in EFFECTS:
                raise UserInputError(f"signal effect {effect!r}: choose one of {', '.join(EFFECTS)}")
        self.effects = {signal.SIGINT: sigint_effect, signal.SIGTERM: sigint_effect}
        if hasattr(signal, "SIGHUP"):
            self.effects[signal.SIGHUP] = sighup_effect
        self.pending: str | None = None
        self.signal_name: str | None = None  # the signal behind the last request

    def _handle(self, signum, frame) -> None:
        if signum == signal.SIGINT and self.pending == "stop":
            raise KeyboardInterrupt  # second Ctrl-C: stop now
        effect = self.effects.get(signum, "none")
        if effect != "none" and self.pending != "stop":
            self.pending = effect
            self.signal_name = signal.Signals(signum).name
            log.info("%s received: %s requested", self.signal_name, effect)

    @contextlib.contextmanager
    def installed(self, enabled: bool = True) -> Iterator["SignalRequests"]:
        """Install the handlers for the duration of the block (main thread only)."""
        if not enabled or threading.current_thread() is not threading.main_thread():
            yield self
            return
        previous = {s: signal.signal(s, self._handle) for s in self.effects}
        try:
            yield self
        finally:
            for s, h in previous.items():
                signal.signal(s, h)

    def take(self) -> str | None:
        """The pending action (cleared)."""
        action, self.pending = self.pending, None
        return action

    def stop_pending(self) -> bool:
        return self.pending == "stop"
