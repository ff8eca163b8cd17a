"""What to do with a failed event or job, decided by the error's class, in one place.

The tailer's batch processing uses it for change events. The fan-out consumer applies the same
classes to jobs with the broker's delivery count (worker/fanout/consumer.py): it waits out
``ServiceUnavailable`` holding the job, requeues other failures, dead-letters permanent ones and
those on their last delivery.

* **wait out** — a dependency is away (``ServiceUnavailable``): retry with backoff for as long as
  it takes, never charged to the item; dead-lettering healthy work during an outage would skip it.
* **retry** — any other transient failure, or an unexpected error: retry with backoff up to
  ``max_attempts``, then dead-letter with the reason.
* **poison** — ``PermanentError`` (e.g. ``InvalidEvent``): retrying cannot help; dead-letter now.
* **fatal** — ``StreamFatal`` and ``Deposed``: not an item's fault; the stream or term stops.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

from enrichment.errors import Deposed, PermanentError, ServiceUnavailable, StreamFatal


class Verdict(Enum):
    WAIT_OUT = "wait out"
    RETRY = "retry"
    DEAD_LETTER = "dead letter"
    FATAL = "fatal"


@dataclass(frozen=True, slots=True)
class Decision:
    verdict: Verdict
    reason: str  # for the dead letter and the log line; never holds a credential (errors don't)


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


def decide(error: BaseException, attempt: int, max_attempts: int) -> Decision:
    """The verdict for ``error`` on the ``attempt``-th try (1-based) of one item."""
    if isinstance(error, StreamFatal | Deposed):
        return Decision(Verdict.FATAL, describe(error))
    if isinstance(error, PermanentError):
        return Decision(Verdict.DEAD_LETTER, describe(error))
    if isinstance(error, ServiceUnavailable):
        return Decision(Verdict.WAIT_OUT, describe(error))
    if attempt >= max_attempts:
        return Decision(Verdict.DEAD_LETTER, f"gave up after {attempt} attempts: {describe(error)}")
    return Decision(Verdict.RETRY, describe(error))
