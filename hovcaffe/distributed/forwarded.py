"""Driver side of the ranks' forwarded output: split it into lines, route markers, keep tails.

An :class:`OutputRouter` is handed to `horovod.spark.run` as both ``stdout`` and ``stderr``.
Horovod writes to it from one thread per rank and stream, in chunks that do not respect line
boundaries; the router buffers per writing thread, so partial lines of different ranks never mix.
"""
from __future__ import annotations

import collections
import logging
import threading
from typing import Callable

from hovcaffe.distributed.protocol import RankError, parse_marker, split_tag
from hovcaffe.distributed.ranklog import LOG_KIND, log_rank_record

log = logging.getLogger(__name__)

EventHandler = Callable[[dict], None]
LineSink = Callable[[int | None, str | None, str], None]


def log_lines(rank: int | None, stream: str | None, text: str) -> None:
    """Default sink: whatever a rank prints outside hovcaffe's logging, at DEBUG (`-v`).

    hovcaffe's own records arrive as records (:mod:`ranklog`), progress as events, and a failure
    is summarised by the launcher, so tracebacks of ranks that died because another one failed
    stay out of the way unless asked for.
    """
    log.debug("[rank %s] %s", "?" if rank is None else rank, text)


class OutputRouter:
    """A writable text stream that parses forwarded rank output.

    Args:
        on_event: called with each ``HOVCAFFE-EVENT`` payload (from any rank).
        sink: called with every other line (rank, stream, text).
        tail_lines: how many plain lines to keep per rank for error reports.
    """

    def __init__(self, on_event: EventHandler | None = None, sink: LineSink | None = log_lines,
                 tail_lines: int = 40) -> None:
        self._on_event = on_event
        self._sink = sink
        self._lock = threading.Lock()
        self._partial: dict[int, str] = {}
        self._tails: dict[int | None, collections.deque[str]] = collections.defaultdict(
            lambda: collections.deque(maxlen=tail_lines))
        self.rank_errors: list[RankError] = []
        self.events: list[dict] = []

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:  # type: ignore[override]
        text = data.decode("utf-8", "replace") if isinstance(data, (bytes, bytearray)) else str(data)
        key = threading.get_ident()
        with self._lock:
            buffered = self._partial.pop(key, "") + text
            *lines, rest = buffered.split("\n")
            if rest:
                self._partial[key] = rest
        for line in lines:
            self._line(line.rstrip("\r"))
        return len(data)

    def flush(self) -> None:
        with self._lock:
            pending, self._partial = list(self._partial.values()), {}
        for line in pending:
            self._line(line)

    # -- routing -----------------------------------------------------------------------------
    def _line(self, line: str) -> None:
        rank, stream, text = split_tag(line)
        marker = parse_marker(text)
        if marker is None:
            if text.strip():
                with self._lock:
                    self._tails[rank].append(text)
                if self._sink is not None:
                    self._sink(rank, stream, text)
            return
        kind, payload = marker
        if kind == "error":
            err = RankError(rank=int(payload.get("rank", rank if rank is not None else -1)),
                            type=str(payload.get("type", "Exception")),
                            message=str(payload.get("message", "")),
                            traceback=str(payload.get("traceback", "")))
            with self._lock:
                self.rank_errors.append(err)
            return
        self.event(payload)

    def event(self, payload: dict) -> None:
        """Record an event and pass it to the handler (also used by the live event channel);
        a rank's log record goes to the driver's log instead."""
        if payload.get("kind") == LOG_KIND:
            log_rank_record(payload)
            return
        with self._lock:
            self.events.append(payload)
        if self._on_event is not None:
            try:
                self._on_event(payload)
            except Exception:  # a display problem must never break the job
                log.debug("progress handler failed", exc_info=True)

    # -- reports -----------------------------------------------------------------------------
    def root_cause(self) -> RankError | None:
        """The first reported error that is not a consequence of another rank's failure."""
        with self._lock:
            errors = list(self.rank_errors)
        for err in errors:
            if not err.collateral:
                return err
        return errors[0] if errors else None

    def tail(self, rank: int | None, lines: int = 15) -> list[str]:
        with self._lock:
            return list(self._tails.get(rank, ()))[-lines:]
