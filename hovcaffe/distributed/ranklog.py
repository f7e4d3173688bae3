"""The ranks' logging: rank 0 speaks for the job, every rank is named, records reach the driver
as records.

On a rank, the ``hovcaffe`` logger gets a :class:`RankZeroFilter` (records below WARNING pass on
rank 0 only: N ranks would otherwise repeat every line N times; warnings and errors pass on every
rank) and a :class:`DriverHandler`, which sends each record to the driver as a ``log`` message
(level, logger, rank, text) over the progress channel (:mod:`protocol`). The driver re-logs it at
its own level with ``[rank R]`` in front (:func:`log_rank_record`) - no parsing of formatted text.
"""
from __future__ import annotations

import logging
from typing import Any

LOG_KIND = "log"


class RankZeroFilter(logging.Filter):
    """Passes every record of rank 0, and the records of other ranks at `others_from` or above;
    stamps each record with ``record.rank``."""

    def __init__(self, rank: int, others_from: int = logging.WARNING) -> None:
        super().__init__()
        self.rank = rank
        self.others_from = others_from

    def filter(self, record: logging.LogRecord) -> bool:
        record.rank = self.rank
        return self.rank == 0 or record.levelno >= self.others_from


class DriverHandler(logging.Handler):
    """Sends records to the driver as ``log`` messages (see the module docstring)."""

    def emit(self, record: logging.LogRecord) -> None:
        from hovcaffe.distributed.protocol import emit_event

        try:
            text = record.getMessage()
            if record.exc_info:
                text += "\n" + logging.Formatter().formatException(record.exc_info)
            emit_event(LOG_KIND, level=record.levelno, name=record.name,
                       rank=getattr(record, "rank", None), message=text)
        except Exception:  # logging must never end a rank
            self.handleError(record)


def configure_rank_logging(rank: int, level: int) -> None:
    """Route this rank's ``hovcaffe`` records to the driver (see the module docstring)."""
    handler = DriverHandler()
    handler.addFilter(RankZeroFilter(rank))
    root = logging.getLogger("hovcaffe")
    root.handlers[:] = [handler]
    root.propagate = False
    root.setLevel(level)


def log_rank_record(payload: dict[str, Any]) -> None:
    """On the driver: log a rank's record at its level under its logger, prefixed by its rank."""
    rank = payload.get("rank")
    logger = logging.getLogger(str(payload.get("name") or "hovcaffe"))
    logger.log(int(payload.get("level", logging.INFO)), "[rank %s] %s",
               "?" if rank is None else rank, payload.get("message", ""))
