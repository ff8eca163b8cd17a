"""Run events through a live handler, once each to an outcome, with the tailer's retry verdicts
(worker/retry.py): wait out an unreachable dependency, retry other transient failures with
backoff up to ``max_attempts``, give up on poison at once, stop on a fatal error."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from loguru import logger

from enrichment.backoff import Backoff
from enrichment.errors import FanoutError
from handlers.events import ChangeEvent
from worker.ports import EventHandler
from worker.retry import Verdict, decide
from worker.tailer.processing import handle_once


class RepairStopped(FanoutError):
    """A repair cannot go on (a fatal error); its checkpoint stays at the last confirmed batch."""


async def apply_events(
    handler: EventHandler, events: Sequence[ChangeEvent], max_attempts: int, retry_max_seconds: float
) -> dict[int, str]:
    """Handle ``events``; return the reasons of those that failed for good, by index. The others
    are done: their writes made and their jobs confirmed."""
    pending = list(range(len(events)))
    given_up: dict[int, str] = {}
    attempt = 1
    backoff = Backoff(0.2, retry_max_seconds)
    while pending:
        failed = await handle_once(handler, [events[i] for i in pending])
        retry: list[int] = []
        for j, error in failed.items():
            decision = decide(error, attempt, max_attempts)
            if decision.verdict is Verdict.FATAL:
                raise RepairStopped(decision.reason)
            if decision.verdict is Verdict.DEAD_LETTER:
                given_up[pending[j]] = decision.reason
            else:
                retry.append(pending[j])
        if retry:
            delay = backoff.next_delay()
            first = next(iter(failed.values()))
            logger.warning("repair: retrying {} event(s) in {:.2f}s: {}", len(retry), delay, first)
            await asyncio.sleep(delay)
        pending = sorted(retry)
        attempt += 1
    return given_up
