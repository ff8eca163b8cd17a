"""Per-author post rate: an author posting faster than allowed has the excess deferred, never dropped.

The tailer asks ``allow(author_id)`` once per post; a post over the rate has its jobs published as
deferred (handlers/jobs.job_message(job, deferred=True)): the delay queue holds them for
``fanout.defer_seconds``, then dead-letters them into the bulk lane. So a spamming author cannot
crowd the ordinary lane, and every post is still fanned out.

A token bucket per author, in a bounded LRU: ``limits`` and the like keep per-key windows with a
background expiry thread; this needs one float pair per recently seen author and no thread. An
author evicted from the LRU comes back with a full bucket, which errs towards not deferring.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(slots=True)
class LimitStats:
    allowed: int = 0
    deferred: int = 0


class AuthorRateLimiter:
    def __init__(
        self,
        posts_per_second: float,
        burst: int,
        max_authors: int = 100_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        """``posts_per_second`` <= 0 disables the limit (every post allowed)."""
        if burst < 1 or max_authors < 1:
            raise ValueError("burst and max_authors must be at least 1")
        self._rate = posts_per_second
        self._burst = float(burst)
        self._max = max_authors
        self._clock = clock
        self._buckets: OrderedDict[str, tuple[float, float]] = OrderedDict()  # author → (tokens, at)
        self.stats = LimitStats()

    def allow(self, author_id: str) -> bool:
        """Take one post's token; False means: defer this post's jobs (counted)."""
        if self._rate <= 0:
            self.stats.allowed += 1
            return True
        now = self._clock()
        tokens, at = self._buckets.pop(author_id, (self._burst, now))
        tokens = min(self._burst, tokens + (now - at) * self._rate)
        allowed = tokens >= 1.0
        self._buckets[author_id] = (tokens - 1.0 if allowed else tokens, now)
        if len(self._buckets) > self._max:
            self._buckets.popitem(last=False)
        if allowed:
            self.stats.allowed += 1
        else:
            self.stats.deferred += 1
        return allowed

    def __len__(self) -> int:
        return len(self._buckets)
