"""fanout-worker's own exception tree. Library errors are translated into these at the boundary.

    FanoutError
    ├── ConfigError               bad settings; the CLI exits 2
    ├── TransientError            worth retrying with backoff
    │   ├── ServiceUnavailable    Redis / RabbitMQ / MongoDB unreachable or timing out
    │   └── PublishFailed         a publish was nacked, lost or timed out
    ├── PermanentError            retrying cannot help; the event is dead-lettered
    │   ├── InvalidEvent          a change event that fails validation
    │   └── InvalidJob            a fan-out job that fails validation
    ├── StreamFatal               the change stream cannot continue (history lost, invalidate)
    │   └── EventTooLarge         an event over 16 MB the server cannot split (never retried)
    └── Deposed                   a newer leader holds the lease; this worker must stop writing

It lives in the bottom room so that every room can raise and catch the same classes.
"""

from __future__ import annotations

from datetime import datetime


class FanoutError(Exception):
    """Base class of every error fanout-worker raises on purpose."""


class ConfigError(FanoutError):
    """The configuration is invalid; the message names the field."""


class TransientError(FanoutError):
    """A failure that may succeed when retried."""


class ServiceUnavailable(TransientError):
    """A backing service could not be reached in time."""


class PublishFailed(TransientError):
    """A message was not confirmed by the broker."""


class PermanentError(FanoutError):
    """A failure that retrying cannot fix."""


class InvalidEvent(PermanentError):
    """A change event that does not match the contract."""


class InvalidJob(PermanentError):
    """A fan-out job whose body does not match schemas/fanout.job.v1.json."""


class StreamFatal(FanoutError):
    """The change stream cannot be resumed from its checkpoint."""

    def __init__(self, stream: str, code: int | None, message: str) -> None:
        super().__init__(f"stream {stream!r}: {message}")
        self.stream = stream
        self.code = code
        self.reason = message
        # Filled in by the pipeline, for the operator's log line.
        self.checkpoint_saved_at: datetime | None = None
        self.checkpoint_event_time: datetime | None = None


class EventTooLarge(StreamFatal):
    """The server failed the stream on an event over its 16 MB limit (BSONObjectTooLarge, 10334).

    Reopening would meet the same event again, forever: it is never retried, and never skipped by
    ``on_history_lost`` (which is about lost history, not about one event).
    """


class Deposed(FanoutError):
    """A write was fenced off: another worker took the lease with a newer epoch."""
