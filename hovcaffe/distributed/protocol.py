"""The one-line messages ranks send to the driver through their forwarded output.

Horovod forwards every rank's stdout/stderr to the driver, each line tagged with the rank
(``[1]<stderr>:`` under Gloo, ``[1,1]<stderr>:`` under mpirun). Ranks write two kinds of
machine-readable lines into that stream:

* ``HOVCAFFE-EVENT {json}``: progress (iteration, loss, lr, test outputs, snapshots), for the
  driver's progress display, and the ranks' log records (kind ``log``, :mod:`ranklog`);
* ``HOVCAFFE-ERROR {json}``: the exception that ended a rank (type, message, traceback tail), so
  the driver can name the rank and the error that *caused* a failure, not the collateral
  "Horovod has been shut down" errors the other ranks raise afterwards.

Each message is written with a single ``os.write`` so that mpirun's tagging cannot split it.

Horovod's forwarding delivers output in 64 KiB blocks (or when the rank exits), too late for a
progress display, so events go live over a socket when the driver offers one
(``HOVCAFFE_EVENT_SINK=host:port:token``, see :class:`EventServer`); the output lines remain the
fallback. Errors always use the output stream: it is flushed when the failing process exits.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import os
import re
import secrets
import socket
import socketserver
import threading
from typing import Any, Callable

EVENT_MARK = "HOVCAFFE-EVENT "
ERROR_MARK = "HOVCAFFE-ERROR "
_MAX_LINE = 3500  # below PIPE_BUF (4096): one atomic write

# "[1]<stderr>:" (Gloo launcher) or "[1,1]<stderr>:" (mpirun --tag-output)
_TAG = re.compile(r"^\[(?:\d+,)?(\d+)\]<(stdout|stderr)>:")

#: exception types that are the *consequence* of another rank's failure
COLLATERAL_ERRORS = ("HorovodInternalError", "HorovodShutdown")


def _emit(mark: str, payload: dict[str, Any]) -> None:
    text = json.dumps(payload, separators=(",", ":"), default=str)
    line = (mark + text)[:_MAX_LINE] + "\n"
    os.write(2, line.encode("utf-8", "replace"))


SINK_ENV = "HOVCAFFE_EVENT_SINK"
log = logging.getLogger(__name__)


class _SinkClient:
    """The rank side of the live event channel (one connection, opened on first use)."""

    def __init__(self) -> None:
        self._sock: socket.socket | None = None
        self._broken = False
        self._lock = threading.Lock()

    def send(self, payload: dict[str, Any]) -> bool:
        spec = os.environ.get(SINK_ENV, "")
        if not spec or self._broken:
            return False
        line = (json.dumps(payload, separators=(",", ":"), default=str) + "\n").encode()
        with self._lock:
            try:
                if self._sock is None:
                    host, port, token = spec.rsplit(":", 2)
                    self._sock = socket.create_connection((host, int(port)), timeout=5)
                    self._sock.sendall(token.encode() + b"\n")
                self._sock.sendall(line)
                return True
            except OSError as exc:  # the driver went away or is unreachable: use the output
                log.debug("event sink %s unusable: %s", spec, exc)
                self._broken = True
                return False


_client = _SinkClient()


def reset_event_sink() -> None:
    """Forget the channel's connection: a reused worker process may serve another run, whose
    driver listens elsewhere (``HOVCAFFE_EVENT_SINK`` is read again on the next event)."""
    global _client
    _client = _SinkClient()


def emit_event(kind: str, **fields: Any) -> None:
    """Send a progress event to the driver (call on the rank that owns the information)."""
    payload = {"kind": kind, **fields}
    if not _client.send(payload):
        _emit(EVENT_MARK, payload)


class EventServer:
    """The driver side of the live event channel: a TCP server that passes each JSON line from
    an authenticated connection to `handler`.

    Args:
        host: the address ranks can reach the driver at (Spark's ``spark.driver.host``).
        handler: called with every event payload (from the server's threads).
    """

    def __init__(self, host: str, handler: Callable[[dict], None]) -> None:
        self.token = secrets.token_hex(16)
        token, on_event = self.token.encode(), handler

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                if self.rfile.readline().strip() != token:
                    return
                for raw in self.rfile:
                    try:
                        payload = json.loads(raw)
                    except ValueError:
                        continue
                    if isinstance(payload, dict):
                        on_event(payload)

        class Server(socketserver.ThreadingTCPServer):
            daemon_threads = True
            allow_reuse_address = True

        try:
            self._server = Server((host, 0), Handler)
        except OSError:  # a host name that does not bind here: listen everywhere (token-protected)
            self._server = Server(("0.0.0.0", 0), Handler)
        self.host = host
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, name="hovcaffe-events",
                                        daemon=True)

    @property
    def address(self) -> str:
        """The value of HOVCAFFE_EVENT_SINK for the ranks."""
        return f"{self.host}:{self.port}:{self.token}"

    def __enter__(self) -> "EventServer":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()


def emit_error(rank: int, exc: BaseException, traceback_text: str) -> None:
    """Send the exception that is ending this rank to the driver."""
    tail = traceback_text[-2000:]
    _emit(ERROR_MARK, {"rank": rank, "type": type(exc).__name__, "message": str(exc)[:800],
                       "traceback": tail})


@dataclasses.dataclass(frozen=True)
class RankError:
    """An exception reported by a rank."""

    rank: int
    type: str
    message: str
    traceback: str = ""

    @property
    def collateral(self) -> bool:
        """True for errors caused by another rank going away."""
        return self.type in COLLATERAL_ERRORS or "Horovod has been shut down" in self.message

    def __str__(self) -> str:
        return f"rank {self.rank} failed: {self.type}: {self.message}"

    def brief(self, limit: int = 160) -> str:
        """``str(self)`` cut to its first line and `limit` characters: for an error quoted as a
        consequence (Gloo's messages carry C++ frames and hints over many lines)."""
        first = str(self).splitlines()[0] if str(self) else ""
        return first if len(first) <= limit else first[:limit - 3].rstrip() + "..."


def split_tag(line: str) -> tuple[int | None, str | None, str]:
    """(rank, stream, text) of a forwarded line; rank/stream are None for untagged lines."""
    m = _TAG.match(line)
    if not m:
        return None, None, line
    return int(m.group(1)), m.group(2), line[m.end():]


def parse_marker(text: str) -> tuple[str, dict[str, Any]] | None:
    """('event'|'error', payload) if `text` carries a marker, else None."""
    for kind, mark in (("event", EVENT_MARK), ("error", ERROR_MARK)):
        at = text.find(mark)
        if at < 0:
            continue
        body = text[at + len(mark):]
        # mpirun may re-tag the middle of a long line; drop any tags inside the JSON.
        body = re.sub(r"\[(?:\d+,)?\d+\]<std(?:out|err)>:", "", body)
        try:
            payload, _ = json.JSONDecoder().raw_decode(body.strip())
        except ValueError:
            return None
        return (kind, payload) if isinstance(payload, dict) else None
    return None


def last_frame(traceback_text: str) -> str:
    """'path:line (function)' of the innermost frame of a formatted traceback ('' if none)."""
    frames = re.findall(r'File "([^"]+)", line (\d+), in (\S+)', traceback_text)
    if not frames:
        return ""
    path, line, func = frames[-1]
    return f"{path}:{line} ({func})"
