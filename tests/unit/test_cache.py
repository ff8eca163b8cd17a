"""LayeredCache without L2: batching, negative caching, single-flight, errors and invalidation."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence

import pytest

from enrichment.cache import LayeredCache
from enrichment.errors import ServiceUnavailable
from enrichment.memory import MemoryLayer
from enrichment.snapshot import AuthorSnapshot


def snap(user_id: str, version: int = 1) -> AuthorSnapshot:
    return AuthorSnapshot(user_id, user_id, f"{user_id} v{version}", None, version)


class FakeSource:
    """A ProfileSource that records its calls and can be held on a gate or made to fail.

    It reads ``profiles`` when called, before waiting at the gate: a held call models a query
    that has read the old document but whose reply has not arrived yet.
    """

    def __init__(self, profiles: dict[str, AuthorSnapshot] | None = None) -> None:
        self.profiles = dict(profiles or {})
        self.calls: list[list[str]] = []
        self.gate: asyncio.Event | None = None
        self.error: BaseException | None = None
        self.called = asyncio.Event()

    async def fetch_many(self, user_ids: Sequence[str]) -> dict[str, AuthorSnapshot]:
        self.calls.append(list(user_ids))
        self.called.set()
        result = {u: self.profiles[u] for u in user_ids if u in self.profiles}
        if self.gate is not None:
            await self.gate.wait()
        if self.error is not None:
            raise self.error
        return result

    def ids_queried(self) -> list[str]:
        return [u for call in self.calls for u in call]


def make_cache(source: FakeSource) -> LayeredCache:
    return LayeredCache(MemoryLayer(1_000, 60.0, 10.0), None, source)


async def until(predicate: Callable[[], bool], what: str) -> None:
    for _ in range(200):
        if predicate():
            return
        await asyncio.sleep(0)
    raise AssertionError(f"timed out waiting for {what}")


async def test_one_source_query_per_get_many_for_many_ids() -> None:
    # Given 50 existing users and one unknown id
    source = FakeSource({f"u{i}": snap(f"u{i}") for i in range(50)})
    cache = make_cache(source)
    wanted = [f"u{i}" for i in range(50)] + ["ghost"]
    # When all of them are looked up in one call
    found = await cache.get_many(wanted)
    # Then the source was queried exactly once, with every id
    assert len(source.calls) == 1
    assert sorted(source.calls[0]) == sorted(wanted)
    assert cache.stats.source_queries == 1
    assert found == {**{f"u{i}": snap(f"u{i}") for i in range(50)}, "ghost": None}
    assert cache.stats.l3_hits == 50
    assert cache.stats.not_found == 1


async def test_second_lookup_is_served_from_l1() -> None:
    source = FakeSource({"a": snap("a"), "b": snap("b")})
    cache = make_cache(source)
    await cache.get_many(["a", "b"])
    found = await cache.get_many(["b", "a"])
    assert found == {"a": snap("a"), "b": snap("b")}
    assert len(source.calls) == 1
    assert cache.stats.l1_hits == 2


async def test_duplicate_ids_are_deduplicated() -> None:
    # Given a batch naming the same authors several times
    source = FakeSource({"a": snap("a"), "b": snap("b")})
    cache = make_cache(source)
    # When it is looked up
    found = await cache.get_many(["a", "a", "b", "a", "b"])
    # Then each id is asked for once
    assert source.calls == [["a", "b"]]
    assert found == {"a": snap("a"), "b": snap("b")}


async def test_missing_users_are_cached_negatively() -> None:
    # Given a user that does not exist
    source = FakeSource({"a": snap("a")})
    cache = make_cache(source)
    # When it is looked up twice
    first = await cache.get_many(["ghost", "a"])
    second = await cache.get_many(["ghost"])
    # Then the answer is None both times and the second lookup did not query the source
    assert first == {"ghost": None, "a": snap("a")}
    assert second == {"ghost": None}
    assert len(source.calls) == 1
    assert cache.stats.not_found == 1


async def test_get_many_with_no_ids_does_not_query() -> None:
    source = FakeSource()
    cache = make_cache(source)
    assert await cache.get_many([]) == {}
    assert source.calls == []


async def test_concurrent_lookups_share_the_in_flight_query_for_overlapping_ids() -> None:
    # Given a slow source and a first lookup of a, b in flight
    source = FakeSource({"a": snap("a"), "b": snap("b"), "c": snap("c")})
    source.gate = asyncio.Event()
    cache = make_cache(source)
    first = asyncio.create_task(cache.get_many(["a", "b"]))
    await until(lambda: len(source.calls) == 1, "the first query")
    # When a second lookup of b, c starts while the first is in flight
    second = asyncio.create_task(cache.get_many(["b", "c"]))
    await until(lambda: len(source.calls) == 2, "the second query")
    source.gate.set()
    r1, r2 = await asyncio.gather(first, second)
    # Then b was asked for once only; the second caller queried c alone and waited for b
    assert source.calls == [["a", "b"], ["c"]]
    assert source.ids_queried().count("b") == 1
    assert cache.stats.shared_waits == 1
    assert r1 == {"a": snap("a"), "b": snap("b")}
    assert r2 == {"b": snap("b"), "c": snap("c")}


async def test_a_lookup_fully_covered_by_an_in_flight_one_does_not_query() -> None:
    source = FakeSource({"a": snap("a"), "b": snap("b")})
    source.gate = asyncio.Event()
    cache = make_cache(source)
    first = asyncio.create_task(cache.get_many(["a", "b"]))
    await until(lambda: len(source.calls) == 1, "the first query")
    second = asyncio.create_task(cache.get_many(["b", "a"]))
    await until(lambda: cache.stats.shared_waits == 2, "the second caller to wait")
    source.gate.set()
    r1, r2 = await asyncio.gather(first, second)
    assert len(source.calls) == 1
    assert r1 == r2 == {"a": snap("a"), "b": snap("b")}


async def test_a_source_error_reaches_every_waiter_and_a_later_call_retries() -> None:
    # Given a source that will fail, with an owner and a waiter on the same id
    source = FakeSource({"a": snap("a")})
    source.gate = asyncio.Event()
    source.error = ServiceUnavailable("profiles find timed out")
    cache = make_cache(source)
    owner = asyncio.create_task(cache.get_many(["a"]))
    await until(lambda: len(source.calls) == 1, "the owner's query")
    waiter = asyncio.create_task(cache.get_many(["a"]))
    await until(lambda: cache.stats.shared_waits == 1, "the waiter")
    # When the query fails
    source.gate.set()
    results = await asyncio.gather(owner, waiter, return_exceptions=True)
    # Then both callers see the same error
    assert all(isinstance(r, ServiceUnavailable) for r in results), results
    assert results[0] is source.error
    assert results[1] is source.error
    # And no in-flight entry is left behind: a later call queries again and succeeds
    assert cache._inflight == {}
    source.error = None
    source.gate = None
    assert await cache.get_many(["a"]) == {"a": snap("a")}
    assert len(source.calls) == 2


async def test_a_failed_lookup_caches_nothing() -> None:
    source = FakeSource({"a": snap("a")})
    source.error = ServiceUnavailable("down")
    cache = make_cache(source)
    with pytest.raises(ServiceUnavailable):
        await cache.get_many(["a", "ghost"])
    assert len(cache.l1) == 0


async def test_cancelling_the_owner_gives_waiters_service_unavailable() -> None:
    # Given an owner and a waiter on the same in-flight lookup
    source = FakeSource({"a": snap("a")})
    source.gate = asyncio.Event()
    cache = make_cache(source)
    owner = asyncio.create_task(cache.get_many(["a"]))
    await until(lambda: len(source.calls) == 1, "the owner's query")
    waiter = asyncio.create_task(cache.get_many(["a"]))
    await until(lambda: cache.stats.shared_waits == 1, "the waiter")
    # When the owner is cancelled (e.g. its event was abandoned at shutdown)
    owner.cancel()
    owner_result, waiter_result = await asyncio.gather(owner, waiter, return_exceptions=True)
    # Then the owner is cancelled, but the waiter gets a retryable error, not CancelledError
    assert isinstance(owner_result, asyncio.CancelledError)
    assert isinstance(waiter_result, ServiceUnavailable)
    assert not isinstance(waiter_result, asyncio.CancelledError)
    # And a later lookup starts a fresh query
    assert cache._inflight == {}
    source.gate.set()
    assert await cache.get_many(["a"]) == {"a": snap("a")}
    assert len(source.calls) == 2


async def test_cancelling_a_waiter_does_not_disturb_the_owner_or_other_waiters() -> None:
    source = FakeSource({"a": snap("a")})
    source.gate = asyncio.Event()
    cache = make_cache(source)
    owner = asyncio.create_task(cache.get_many(["a"]))
    await until(lambda: len(source.calls) == 1, "the owner's query")
    w1 = asyncio.create_task(cache.get_many(["a"]))
    w2 = asyncio.create_task(cache.get_many(["a"]))
    await until(lambda: cache.stats.shared_waits == 2, "both waiters")
    # When one waiter is cancelled
    w1.cancel()
    await asyncio.gather(w1, return_exceptions=True)
    source.gate.set()
    # Then the owner and the other waiter still get the snapshot
    assert await owner == {"a": snap("a")}
    assert await w2 == {"a": snap("a")}
    assert w1.cancelled()


async def test_apply_changes_drops_l1_so_the_next_lookup_reads_the_new_version() -> None:
    # Given version 1 cached in L1
    source = FakeSource({"a": snap("a", 1)})
    cache = make_cache(source)
    await cache.get_many(["a"])
    # When the profile changes to version 2 and the change is applied
    source.profiles["a"] = snap("a", 2)
    replaced_l2 = (await cache.apply_changes([snap("a", 2)])).written
    # Then there is no L2 to replace, L1 misses, and the next lookup reads version 2
    assert replaced_l2 == 0
    assert cache.l1.get_many(["a"]) == ({}, ["a"])
    assert await cache.get_many(["a"]) == {"a": snap("a", 2)}
    assert len(source.calls) == 2


async def test_a_stale_in_flight_fill_cannot_put_an_older_version_back_in_l1() -> None:
    # Given a lookup that read version 1 and is still in flight
    source = FakeSource({"a": snap("a", 1)})
    source.gate = asyncio.Event()
    cache = make_cache(source)
    slow = asyncio.create_task(cache.get_many(["a"]))
    await until(lambda: len(source.calls) == 1, "the slow query")
    # When the profile changes to version 2 and the change is applied before the fill lands
    source.profiles["a"] = snap("a", 2)
    await cache.apply_changes([snap("a", 2)])
    source.gate.set()
    await slow
    # Then L1 does not hold version 1
    hits, misses = cache.l1.get_many(["a"])
    assert hits == {}
    assert misses == ["a"]
    # And the next lookup reads version 2 from the source and caches it
    source.gate = None
    assert await cache.get_many(["a"]) == {"a": snap("a", 2)}
    assert cache.l1.get_many(["a"]) == ({"a": snap("a", 2)}, [])


async def test_a_remote_invalidation_drops_l1_with_the_version_floor() -> None:
    source = FakeSource({"a": snap("a", 1)})
    cache = make_cache(source)
    await cache.get_many(["a"])
    cache.on_remote_invalidation("a", 3)
    assert cache.l1.get_many(["a"]) == ({}, ["a"])
    assert cache.l1.put("a", snap("a", 2)) is False


async def test_a_lookup_started_after_apply_change_does_not_get_the_older_version() -> None:
    # Given a lookup that read version 1 and is still in flight
    source = FakeSource({"a": snap("a", 1)})
    source.gate = asyncio.Event()
    cache = make_cache(source)
    slow = asyncio.create_task(cache.get_many(["a"]))
    await until(lambda: len(source.calls) == 1, "the slow query")
    # When the profile changes to version 2, the change is applied, and only then a new lookup starts
    source.profiles["a"] = snap("a", 2)
    await cache.apply_changes([snap("a", 2)])
    fresh = asyncio.create_task(cache.get_many(["a"]))
    await asyncio.sleep(0)
    source.gate.set()
    await slow
    result = await fresh
    # Then the new lookup sees version 2 (or newer), never the version the invalidation superseded
    assert result["a"] is not None
    assert result["a"].version >= 2
