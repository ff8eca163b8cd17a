"""The retry classification every consumer of events (and, next, jobs) uses."""

from __future__ import annotations

import pytest

from enrichment.errors import (
    Deposed,
    InvalidEvent,
    PublishFailed,
    ServiceUnavailable,
    StreamFatal,
)
from worker.retry import Verdict, decide


@pytest.mark.parametrize(
    ("error", "attempt", "verdict"),
    [
        (ServiceUnavailable("MongoDB away"), 1, Verdict.WAIT_OUT),
        (ServiceUnavailable("MongoDB away"), 99, Verdict.WAIT_OUT),  # never charged to the item
        (InvalidEvent("no author_id"), 1, Verdict.DEAD_LETTER),  # poison: at once
        (PublishFailed("nacked"), 1, Verdict.RETRY),
        (PublishFailed("nacked"), 5, Verdict.DEAD_LETTER),  # out of attempts
        (KeyError("bug"), 4, Verdict.RETRY),
        (KeyError("bug"), 5, Verdict.DEAD_LETTER),
        (StreamFatal("posts", 286, "history lost"), 1, Verdict.FATAL),
        (Deposed("newer epoch"), 1, Verdict.FATAL),
    ],
)
def test_the_verdict_follows_the_error_class_and_the_attempts(
    error: BaseException, attempt: int, verdict: Verdict
) -> None:
    assert decide(error, attempt, max_attempts=5).verdict is verdict


def test_a_dead_letter_reason_names_the_error_and_the_attempts() -> None:
    decision = decide(PublishFailed("nacked by the broker"), 5, max_attempts=5)
    assert decision.reason == "gave up after 5 attempts: PublishFailed: nacked by the broker"
    assert decide(InvalidEvent("bad text"), 1, 5).reason == "InvalidEvent: bad text"
