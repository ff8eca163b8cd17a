"""handlers/limits: an author over the rate is deferred (counted), never dropped; memory bounded."""

from __future__ import annotations

from handlers.limits import AuthorRateLimiter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_an_author_over_the_rate_is_deferred_after_the_burst_and_refills_with_time() -> None:
    clock = Clock()
    limiter = AuthorRateLimiter(posts_per_second=2.0, burst=3, clock=clock)
    assert [limiter.allow("spam") for _ in range(5)] == [True, True, True, False, False]
    assert limiter.allow("calm")  # another author is not affected
    clock.now += 0.5  # one token back at 2/s
    assert [limiter.allow("spam") for _ in range(2)] == [True, False]
    clock.now += 60  # refills to the burst, no further
    assert [limiter.allow("spam") for _ in range(4)] == [True, True, True, False]
    assert (limiter.stats.allowed, limiter.stats.deferred) == (8, 4)


def test_a_rate_of_zero_lets_every_post_through() -> None:
    limiter = AuthorRateLimiter(posts_per_second=0, burst=1)
    assert all(limiter.allow("a") for _ in range(100))
    assert len(limiter) == 0


def test_the_buckets_are_bounded_by_evicting_the_least_recently_seen_author() -> None:
    clock = Clock()
    limiter = AuthorRateLimiter(posts_per_second=1.0, burst=1, max_authors=2, clock=clock)
    assert limiter.allow("a") and limiter.allow("b")
    assert not limiter.allow("a")  # a is now the most recent; b the least
    assert limiter.allow("c")  # evicts b
    assert len(limiter) == 2
    assert limiter.allow("b")  # evicted: back with a full bucket (errs towards not deferring)
    assert not limiter.allow("c")
