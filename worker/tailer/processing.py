"""Handling one micro-batch: run the handler, retry by error class (worker/retry.py) with capped,
jittered backoff, dead-letter what cannot be handled, and finish each event as soon as it is done.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

from loguru import logger

from enrichment.backoff import Backoff
from handlers.events import ChangeEvent
from handlers.ports import DeadLetters
from worker.ports import EventHandler
from worker.retry import Verdict, decide
from worker.settings import PipelineSettings
from worker.shutdown import raise_if_cancelling
from worker.stats import StreamStats
from worker.tailer.eventlog import event_logger

Item = tuple[int, ChangeEvent]  # (watermark sequence, event)
Finish = Callable[[int, str, bool], None]  # (sequence, operation type, handled?)


class BatchProcessor:
    def __init__(
        self,
        stream: str,
        handler: EventHandler,
        dead_letters: DeadLetters,
        settings: PipelineSettings,
        stats: StreamStats,
        finish: Finish,
    ) -> None:
        self.stream = stream
        self._handler = handler
        self._dead = dead_letters
        self._cfg = settings
        self.stats = stats
        self._finish = finish

    async def process(self, batch: list[Item]) -> None:
        """Handle ``batch`` until every event is handled or dead-lettered."""
        backoff = Backoff(0.05, self._cfg.retry_max_seconds)
        pending = batch
        attempt = 1
        while pending:
            failed = await self._attempt(pending)
            raise_if_cancelling()  # a library may have turned our cancellation into a failure
            retry: list[Item] = []
            for i, error in sorted(failed.items()):
                item = pending[i]
                decision = decide(error, attempt, self._cfg.max_attempts)
                if decision.verdict is Verdict.FATAL:
                    # A handler raising a stream-level error is a bug in it: an ordinary failure.
                    decision = decide(RuntimeError(decision.reason), attempt, self._cfg.max_attempts)
                if decision.verdict is Verdict.DEAD_LETTER:
                    await self._dead_letter(item, decision.reason)
                else:
                    waiting_out = decision.verdict is Verdict.WAIT_OUT
                    event_logger(item[1]).log(
                        "DEBUG" if waiting_out else "WARNING",
                        "event failed (attempt {}): {}",
                        attempt,
                        decision.reason,
                    )
                    retry.append(item)
            if retry:
                self.stats.retries += len(retry)
                for _, event in retry:
                    self.stats.count(event.op, "retried")
                delay = backoff.next_delay()
                logger.bind(stream=self.stream).warning(
                    "retrying {} event(s) in {:.2f}s: {}", len(retry), delay, next(iter(failed.values()))
                )
                await asyncio.sleep(delay)
            pending = retry
            attempt += 1

    async def _attempt(self, pending: list[Item]) -> dict[int, BaseException]:
        """Run the handler once over ``pending``; finish each success as soon as it is reported."""

        def done(i: int) -> None:
            seq, event = pending[i]
            event_logger(event).debug("event handled")
            self.stats.observe_handled(event)
            self._finish(seq, event.op, True)  # at once: a slow neighbour must not hold its slot

        return await handle_once(self._handler, [event for _, event in pending], done)

    async def _dead_letter(self, item: Item, reason: str) -> None:
        seq, event = item
        log = event_logger(event)
        log.error("dead-lettering an event of stream {}: {}", self.stream, reason)
        # Keep trying until it is stored: moving on without it would lose the event.
        backoff = Backoff(0.1, self._cfg.retry_max_seconds)
        while True:
            try:
                await self._dead.put(self.stream, event.token, event.raw, reason)
                break
            except Exception as exc:
                raise_if_cancelling()
                log.warning("dead-letter write failed ({}); retrying", type(exc).__name__)
                await asyncio.sleep(backoff.next_delay())
        self.stats.dead_lettered += 1
        self.stats.count(event.op, "dead_lettered")
        self._finish(seq, event.op, False)


async def handle_once(
    handler: EventHandler, events: Sequence[ChangeEvent], done: Callable[[int], None] | None = None
) -> dict[int, BaseException]:
    """Run ``handler`` once over ``events``: call ``done(i)`` for each success as it is reported and
    return the errors of the others by index. An event the handler never reports, or a handler that
    raises, fails (never passes silently). Shared by the pipelines and the repair commands."""
    failed: dict[int, BaseException] = {}
    reported: set[int] = set()

    def report(i: int, error: BaseException | None) -> None:
        if i in reported:
            return
        reported.add(i)
        if error is not None:
            failed[i] = error
        elif done is not None:
            done(i)

    try:
        await handler.process(events, report)
    except Exception as exc:  # a handler bug: fail whatever it did not report
        raise_if_cancelling()
        for i in range(len(events)):
            report(i, exc)
    for i in range(len(events)):
        report(i, RuntimeError("handler did not report this event"))
    return failed
