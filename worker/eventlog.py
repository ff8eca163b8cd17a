"""What a stream records about its events: counters for metrics, and loggers bound to one event."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from loguru import logger

from handlers.events import ChangeEvent

if TYPE_CHECKING:
    from loguru import Logger


@dataclass(slots=True)
class StreamStats:
    read: int = 0
    handled: int = 0
    dead_lettered: int = 0
    retries: int = 0
    batches: int = 0
    idle_polls: int = 0
    checkpoints_saved: int = 0
    reopens: int = 0
    gaps: int = 0
    split_events: int = 0  # events over 16 MB reassembled from fragments
    oversize_skipped: int = 0  # events over 16 MB let through without their documents ("skip")
    # (operationType, outcome) → count, outcome in read | handled | dead_lettered | retried
    by_type: Counter[tuple[str, str]] = field(default_factory=Counter)

    def count(self, op: str, outcome: str, n: int = 1) -> None:
        self.by_type[(op, outcome)] += n

    def count_size(self, fragments: int, oversize_bytes: int | None) -> None:
        if fragments > 1:
            self.split_events += 1
        if oversize_bytes is not None:
            self.oversize_skipped += 1


def event_logger(event: ChangeEvent) -> Logger:
    """A logger bound with the event's stream, operation, document id and token."""
    key = event.raw.get("documentKey")
    doc_id = str(key.get("_id")) if isinstance(key, dict) else None
    id_field = "post_id" if event.stream == "posts" else "user_id"
    token = event.token.get("_data", event.token) if isinstance(event.token, dict) else event.token
    return logger.bind(stream=event.stream, op=event.op, token=str(token), **{id_field: doc_id})
