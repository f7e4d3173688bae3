"""The ranks' logging: rank 0 speaks for the job (other ranks only warn), every record carries
its rank, and records reach the driver's log at their own level - no text is parsed for it."""
from __future__ import annotations

import logging

import pytest

from hovcaffe.distributed import protocol
from hovcaffe.distributed.forwarded import OutputRouter
from hovcaffe.distributed.ranklog import DriverHandler, RankZeroFilter

pytestmark = [pytest.mark.distributed]


def _record(level: int, text: str) -> logging.LogRecord:
    return logging.LogRecord("hovcaffe.x", level, __file__, 1, text, None, None)


def test_rank_zero_passes_everything_other_ranks_only_warnings():
    zero, one = RankZeroFilter(0), RankZeroFilter(1)
    info, warning = _record(logging.INFO, "i"), _record(logging.WARNING, "w")
    assert zero.filter(info) and zero.filter(warning)
    assert not one.filter(_record(logging.INFO, "i")) and one.filter(warning)
    assert warning.rank == 1 and info.rank == 0


def test_records_cross_the_forwarded_output_as_records(capfd, monkeypatch, caplog):
    """Without the live channel a record travels as a marked line in the rank's output (what
    Horovod forwards, tagged `[1]<stderr>:`); the driver logs it at its level with the rank."""
    monkeypatch.delenv(protocol.SINK_ENV, raising=False)
    handler = DriverHandler()
    handler.addFilter(RankZeroFilter(1))
    for level, text in ((logging.INFO, "chatty detail"), (logging.WARNING, "disk almost full"),
                        (logging.ERROR, "12:00:00 W rank0 looks like a header")):
        record = _record(level, text)
        if handler.filter(record):
            handler.emit(record)
    lines = capfd.readouterr().err.splitlines()
    assert len(lines) == 2 and all(line.startswith(protocol.EVENT_MARK) for line in lines)
    router = OutputRouter()  # the default sink: plain output at DEBUG
    with caplog.at_level(logging.DEBUG, logger="hovcaffe"):
        for line in lines:
            router.write(f"[1]<stderr>:{line}\n")
        router.write("[1]<stderr>:12:00:00 W rank1 hovcaffe.x] printed, not logged\n")
        router.flush()
    got = [(r.name, r.levelno, r.getMessage()) for r in caplog.records]
    assert ("hovcaffe.x", logging.WARNING, "[rank 1] disk almost full") in got
    assert ("hovcaffe.x", logging.ERROR, "[rank 1] 12:00:00 W rank0 looks like a header") in got
    assert not [g for g in got if "chatty" in g[2]]
    assert not router.events  # log records are not progress events
    # plain output is debug-level, whatever it looks like
    assert ("hovcaffe.distributed.forwarded", logging.DEBUG,
            "[rank 1] 12:00:00 W rank1 hovcaffe.x] printed, not logged") in got


def chatty_rank(ctx) -> int:
    """Rank task: one info and one warning per rank."""
    log = logging.getLogger("hovcaffe.test.ranks")
    log.info("info from rank %d", ctx.rank)
    log.warning("warning from rank %d", ctx.rank)
    ctx.collectives.barrier()
    return ctx.rank


def test_two_local_ranks_log_through_the_driver(caplog):
    from hovcaffe.distributed.backend import get_backend
    from hovcaffe.distributed.rank import RankTask
    from hovcaffe.options import DistributedOptions

    backend = get_backend(DistributedOptions(num_proc=2, backend="local"))
    with caplog.at_level(logging.INFO, logger="hovcaffe"):
        assert backend.run(RankTask(fn=chatty_rank, log_level=logging.INFO)) == [0, 1]
    got = sorted((r.levelno, r.getMessage()) for r in caplog.records if r.name == "hovcaffe.test.ranks")
    assert got == [(logging.INFO, "[rank 0] info from rank 0"),
                   (logging.WARNING, "[rank 0] warning from rank 0"),
                   (logging.WARNING, "[rank 1] warning from rank 1")]
