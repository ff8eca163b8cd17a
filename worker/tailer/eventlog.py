"""What a stream records about its events: counters for metrics, and loggers bound to one event."""

from __future__ import annotations

from typing import TYPE_CHECKING

from loguru import logger

from handlers.events import ChangeEvent
from worker.streams import BY_NAME

if TYPE_CHECKING:
    from loguru import Logger


def event_logger(event: ChangeEvent) -> Logger:
    """A logger bound with the event's stream, operation, document id and token."""
    key = event.raw.get("documentKey")
    doc_id = str(key.get("_id")) if isinstance(key, dict) else None
    spec = BY_NAME.get(event.stream)
    id_field = spec.id_field if spec is not None else "document_id"
    token = event.token.get("_data", event.token) if isinstance(event.token, dict) else event.token
    return logger.bind(stream=event.stream, op=event.op, token=str(token), **{id_field: doc_id})
