"""Translation of PyMongo errors into fanout-worker's own, at the adapter boundary."""

from __future__ import annotations

from pymongo.errors import OperationFailure, PyMongoError

from enrichment.errors import EventTooLarge, FanoutError, ServiceUnavailable, StreamFatal
from worker.failures import cause

# The driver resumes network errors, CursorNotFound and ResumableChangeStreamError by itself.
# These it cannot: the history is gone (286), the stream cannot continue (280), bad token (260).
FATAL_STREAM_CODES = {260: "invalid resume token", 280: "change stream fatal error", 286: "history lost"}
# An event over 16 MB (BSONObjectTooLarge): reopening at the same place meets it again, forever.
EVENT_TOO_LARGE = 10334


def translate(exc: PyMongoError, what: str, stream: str | None = None) -> FanoutError:
    """Map a PyMongo error to ours. The message never contains the URI (it may hold a password)."""
    code = exc.code if isinstance(exc, OperationFailure) else None
    if stream is not None and code == EVENT_TOO_LARGE:
        return EventTooLarge(
            stream,
            code,
            f"a change event is over MongoDB's 16 MB limit and the stream cannot split it "
            f"(BSONObjectTooLarge, code {code})",
        )
    if stream is not None and code in FATAL_STREAM_CODES:
        return StreamFatal(stream, code, f"{FATAL_STREAM_CODES[code]} (code {code})")
    label = f" code {code}" if code is not None else ""
    why = cause(exc)
    detail = f" ({why})" if why != type(exc).__name__ else ""
    return ServiceUnavailable(f"MongoDB {what} failed: {type(exc).__name__}{label}{detail}")
