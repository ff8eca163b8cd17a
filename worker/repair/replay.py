"""Dead-letter replay: each stored event runs through today's handler of its stream, as the
tailer would have run it (the same message ids: they depend on the event, not on when it runs),
and is marked replayed once done. A replay that fails again leaves the dead letter as it was."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime

from loguru import logger

from enrichment.errors import InvalidEvent
from handlers.events import ChangeEvent
from worker.ports import EventHandler
from worker.repair.apply import apply_events
from worker.repair.ports import DeadLetter, DeadLetterArchive, DeadLetterFilter


@dataclass(slots=True)
class ReplayOutcome:
    replayed: list[str] = field(default_factory=list)
    failed: dict[str, str] = field(default_factory=dict)  # id → why (the event failed again, or unreadable)


def event_of(dead: DeadLetter) -> ChangeEvent:
    """The stored event as the handlers read it; InvalidEvent when it cannot be replayed."""
    if dead.truncated or dead.event is None:
        raise InvalidEvent("the stored event was cut at the size limit (or is unreadable): not replayable")
    return ChangeEvent.from_raw(dead.stream, dead.event)


async def replay(
    archive: DeadLetterArchive,
    handlers: Mapping[str, EventHandler],
    where: DeadLetterFilter,
    limit: int,
    max_attempts: int,
    retry_max_seconds: float,
) -> ReplayOutcome:
    """Replay up to ``limit`` matching dead letters, oldest first."""
    outcome = ReplayOutcome()
    for dead in await archive.find(where, limit):
        handler = handlers.get(dead.stream)
        try:
            if handler is None:
                raise InvalidEvent(f"no handler for stream {dead.stream!r}")
            event = event_of(dead)
        except InvalidEvent as exc:
            outcome.failed[dead.id] = str(exc)
            continue
        failed = await apply_events(handler, [event], max_attempts, retry_max_seconds)
        if failed:
            outcome.failed[dead.id] = failed[0]
            logger.warning("dead letter {} failed again: {}", dead.id, failed[0])
            continue
        await archive.mark_replayed(dead.id, datetime.now(UTC))
        outcome.replayed.append(dead.id)
    return outcome
