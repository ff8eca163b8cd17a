"""Capped exponential backoff with jitter for long-lived reconnect loops.

tenacity's wait strategy computes the delays; this keeps an attempt counter that resets after a
success, which a reconnect loop needs and a one-shot ``@retry`` does not give.
"""

from __future__ import annotations

import asyncio
import contextlib
from types import SimpleNamespace

from tenacity import wait_exponential_jitter


class Backoff:
    def __init__(self, initial_seconds: float = 0.1, max_seconds: float = 10.0) -> None:
        self._wait = wait_exponential_jitter(
            multiplier=initial_seconds, max=max_seconds, jitter=initial_seconds
        )
        self.attempt = 0

    def next_delay(self) -> float:
        self.attempt += 1
        # The strategy only reads attempt_number from the retry state.
        state = SimpleNamespace(attempt_number=self.attempt)
        return float(self._wait(state))  # type: ignore[arg-type]

    def reset(self) -> None:
        self.attempt = 0


async def wait_event(event: asyncio.Event, seconds: float) -> bool:
    """Wait up to ``seconds`` for ``event``; True if it is set.

    Uses ``asyncio.timeout``, not ``wait_for``: on Python 3.11 ``wait_for`` can swallow an outer
    cancellation when the inner wait finishes at the same moment, and a shutdown then never ends.
    """
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await event.wait()
    return event.is_set()
