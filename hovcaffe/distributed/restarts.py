"""Restarting a failed distributed run from its last complete snapshot (``max_restarts``).

Any backend: when the ranks fail (a :class:`~hovcaffe.errors.DistributedError`: an exception on a
rank, a killed rank, a lost executor), the *whole* run starts again - every rank, fresh processes -
resuming from the newest complete snapshot of the run's prefix, as ``-resume`` would. A resumed
run continues exactly (data positions, solver history, counters: :mod:`hovcaffe.training.checkpoints`),
so the result equals an uninterrupted run resumed from that snapshot. With no snapshot yet, it
restarts from where the run itself started. Each restart is logged with its cause; once
`max_restarts` restarts have failed, the last failure is raised.

Errors found before any rank starts (options, preflight) are not retried: they would fail again.
"""
from __future__ import annotations

import dataclasses
import logging
from typing import Callable, TypeVar

from hovcaffe.distributed.resume import latest_snapshot
from hovcaffe.distributed.run_plan import RunPlan
from hovcaffe.errors import DistributedError

log = logging.getLogger(__name__)

T = TypeVar("T")


def plan_for_restart(plan: RunPlan) -> RunPlan:
    """`plan` resuming from the newest complete snapshot of its prefix (unchanged when none)."""
    found = latest_snapshot(plan.prefix)
    if found is None:
        return plan
    _, state_url, _ = found
    return dataclasses.replace(plan, config=dataclasses.replace(plan.config, resume=state_url),
                               resumed_from=state_url)


def run_with_restarts(run_once: Callable[[RunPlan], T], plan: RunPlan,
                      max_restarts: int) -> T:
    """``run_once(plan)``, restarted from the last complete snapshot up to `max_restarts` times.

    Raises:
        DistributedError: the failure of the last attempt (the message says how many restarts
            were made when there were any).
    """
    attempt = 0
    while True:
        try:
            return run_once(plan)
        except DistributedError as exc:
            if attempt >= max_restarts:
                if attempt:
                    raise DistributedError(f"{exc} (after {attempt} restart(s); max_restarts "
                                           f"{max_restarts})") from exc
                raise
            attempt += 1
            plan = plan_for_restart(plan)
            cause = str(exc).splitlines()[0]
            log.warning("restart %d of %d, from %s, after: %s", attempt, max_restarts,
                        plan.resumed_from or plan.config.resume or "the beginning", cause)
