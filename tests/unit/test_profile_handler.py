"""ProfileChangedHandler on in-memory stand-ins: batched cascades, bounded rewrites, exact counts."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any

from loguru import logger

from enrichment.cache import LayeredCache
from enrichment.errors import ServiceUnavailable
from enrichment.invalidation import LocalInvalidationBus
from enrichment.memory import MemoryLayer
from enrichment.snapshot import AuthorSnapshot
from handlers.events import ChangeEvent
from handlers.profiles import ProfileChangedHandler
from worker.adapters.memory_db import MemoryDatabase
from worker.adapters.memory_stores import MemoryProfileSource
from worker.publisher import MemoryPublisher


class SlowPostStore:
    """Each rewrite takes a few loop turns, like a MongoDB round trip, and reports 3 posts changed."""

    def __init__(self) -> None:
        self.running = 0
        self.most_at_once = 0

    async def set_snapshots(self, items: Sequence[tuple[Any, AuthorSnapshot]]) -> int:
        return 0

    async def rewrite_author_snapshot(self, snapshot: AuthorSnapshot) -> int:
        self.running += 1
        self.most_at_once = max(self.most_at_once, self.running)
        for _ in range(3):
            await asyncio.sleep(0)
        self.running -= 1
        return 3


def replace_event(user: str, seq: int) -> ChangeEvent:
    doc = {"_id": user, "username": user, "display_name": user.upper(), "avatar_url": None, "version": 2}
    return ChangeEvent.from_raw(
        "profiles",
        {
            "_id": {"_data": f"82{seq:016X}"},
            "operationType": "replace",
            "documentKey": {"_id": user},
            "fullDocument": doc,
        },
    )


async def test_a_storm_rewrites_at_most_rewrite_concurrency_authors_at_once_and_counts_every_post() -> None:
    # Given a handler allowed 4 rewrites at once, and a batch of 50 profile changes
    store = SlowPostStore()
    bus = LocalInvalidationBus()
    cache = LayeredCache(MemoryLayer(100, 60.0, 10.0), None, MemoryProfileSource(MemoryDatabase()))
    publisher = MemoryPublisher()
    handler = ProfileChangedHandler(cache, bus, store, publisher, rewrite_concurrency=4)
    events = [replace_event(f"u{i:02d}", i + 1) for i in range(50)]
    # When the batch is handled
    results = await handler.handle_events(events)
    # Then every change cascaded, never more than 4 rewrites in flight
    assert results == [None] * 50
    assert store.most_at_once == 4
    # And the counts are exact although the rewrites interleaved
    assert handler.stats.posts_rewritten == 150
    assert handler.stats.changes == 50
    # And one invalidation per change went out, and one profile.updated each
    assert bus.published == 50
    assert sorted(m.message_id for m in publisher.messages) == sorted(
        f"profile:u{i:02d}:v:2" for i in range(50)
    )


class DeafBus(LocalInvalidationBus):
    """Other replicas cannot be told (Redis refused the publish)."""

    async def publish_many(self, changes: Sequence[tuple[str, int]]) -> bool:
        return False


async def test_changes_other_replicas_were_not_told_of_are_retried_after_the_rest_is_done() -> None:
    # Given a bus that cannot reach the other replicas
    store = SlowPostStore()
    cache = LayeredCache(MemoryLayer(100, 60.0, 10.0), None, MemoryProfileSource(MemoryDatabase()))
    publisher = MemoryPublisher()
    handler = ProfileChangedHandler(cache, DeafBus(), store, publisher)
    # When two changes are handled
    results = await handler.handle_events([replace_event("a", 1), replace_event("b", 2)])
    # Then both fail as a dependency being away (retried, never dead-lettered)
    assert all(isinstance(r, ServiceUnavailable) for r in results)
    # after their posts were rewritten and profile.updated published (a retry repeats them, idempotently)
    assert handler.stats.posts_rewritten == 6
    assert len(publisher.messages) == 2
    assert handler.stats.changes == 0


def profile_event(user: str, seq: int, version: int, display: str, op: str = "replace") -> ChangeEvent:
    doc = {"_id": user, "username": user, "display_name": display, "avatar_url": None, "version": version}
    raw: dict[str, Any] = {
        "_id": {"_data": f"82{seq:016X}"},
        "operationType": op,
        "documentKey": {"_id": user},
        "fullDocument": doc,
    }
    if op == "update":
        raw["updateDescription"] = {"updatedFields": {"display_name": display}, "removedFields": []}
    return ChangeEvent.from_raw("profiles", raw)


def memory_handler() -> tuple[ProfileChangedHandler, MemoryPublisher]:
    cache = LayeredCache(MemoryLayer(100, 60.0, 10.0), None, MemoryProfileSource(MemoryDatabase()))
    publisher = MemoryPublisher()
    return ProfileChangedHandler(cache, LocalInvalidationBus(), SlowPostStore(), publisher), publisher


def announced(publisher: MemoryPublisher) -> list[str]:
    return [m.message_id for m in publisher.messages]


async def test_a_lower_version_replace_after_a_higher_one_is_not_announced() -> None:
    # Given v8 of a profile announced
    handler, publisher = memory_handler()
    assert await handler.handle_events([profile_event("a", 2, 8, "Eight")]) == [None]
    # When an older replace (v7) is handled after it (a replay, a reorder)
    records: list[str] = []
    sink = logger.add(lambda m: records.append(m.record["message"]), level="INFO")
    try:
        results = await handler.handle_events([profile_event("a", 1, 7, "Seven")])
    finally:
        logger.remove(sink)
    # Then it is done without announcing v7, and it is counted and logged
    assert results == [None]
    assert announced(publisher) == ["profile:a:v:8"]
    assert handler.stats.stale == 1
    assert any("v7 is older than v8" in r for r in records)


async def test_a_batch_announces_only_each_users_newest_version() -> None:
    # Given one batch holding v8 then v7 of one user, and v3 of another
    handler, publisher = memory_handler()
    events = [
        profile_event("a", 1, 8, "Eight"),
        profile_event("a", 2, 7, "Seven"),
        profile_event("b", 3, 3, "B"),
    ]
    # When it is handled
    results = await handler.handle_events(events)
    # Then every event is done, and v7 is never announced (not before v8, not after it)
    assert results == [None, None, None]
    assert sorted(announced(publisher)) == ["profile:a:v:8", "profile:b:v:3"]
    assert handler.stats.stale == 1


async def test_a_display_change_without_a_version_bump_in_one_batch_is_counted_and_warned() -> None:
    handler, publisher = memory_handler()
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        results = await handler.handle_events(
            [profile_event("a", 1, 4, "Old"), profile_event("a", 2, 4, "New")]
        )
    finally:
        logger.remove(sink)
    assert results == [None, None]
    assert handler.stats.unbumped == 1
    assert len([w for w in warnings if "without a version bump" in w]) == 1
    assert announced(publisher) == ["profile:a:v:4"]


# --- deletes: a tombstone in every layer, on every replica -------------------------------------


def delete_event(user: str, seq: int) -> ChangeEvent:
    raw = {"_id": {"_data": f"82{seq:016X}"}, "operationType": "delete", "documentKey": {"_id": user}}
    return ChangeEvent.from_raw("profiles", raw)


def profile_doc(user: str, version: int) -> dict[str, Any]:
    return {
        "_id": user,
        "username": user,
        "display_name": f"{user} v{version}",
        "avatar_url": None,
        "version": version,
    }


async def test_a_deleted_profile_leaves_every_replicas_l1_at_once_and_stale_fills_cannot_bring_it_back() -> (
    None
):
    # Given two replicas whose L1 both hold v3 of "a"
    db = MemoryDatabase()
    db.insert("profiles", profile_doc("a", 3))
    hub: list[LocalInvalidationBus] = []
    caches = [LayeredCache(MemoryLayer(100, 60.0, 10.0), None, MemoryProfileSource(db)) for _ in range(2)]
    buses = [LocalInvalidationBus(hub) for _ in range(2)]
    peer_listener = asyncio.create_task(buses[1].run(caches[1].on_remote_invalidation, caches[1].l1.clear))
    handler = ProfileChangedHandler(caches[0], buses[0], SlowPostStore(), MemoryPublisher())
    old = (await caches[0].get_many(["a"]))["a"]
    assert old is not None and (await caches[1].get_many(["a"]))["a"] == old
    try:
        # When the profile is deleted and the delete event handled on the first replica
        db.delete("profiles", "a")
        assert await handler.handle_events([delete_event("a", 1)]) == [None]
        await asyncio.sleep(0)
        # Then both replicas answer "no such user", without waiting for a TTL
        assert await caches[0].get_many(["a"]) == {"a": None}
        assert await caches[1].get_many(["a"]) == {"a": None}
        assert handler.stats.deleted == 1
        # and a slow fill that read v3 before the delete cannot put it back in L1
        assert caches[0].l1.put("a", old) is False
        assert caches[0].l1.get_many(["a"]) == ({"a": None}, [])
    finally:
        peer_listener.cancel()


async def test_a_profile_re_created_with_a_newer_version_replaces_the_tombstone() -> None:
    db = MemoryDatabase()
    db.insert("profiles", profile_doc("a", 3))
    cache = LayeredCache(MemoryLayer(100, 60.0, 10.0), None, MemoryProfileSource(db))
    publisher = MemoryPublisher()
    handler = ProfileChangedHandler(cache, LocalInvalidationBus(), SlowPostStore(), publisher)
    await cache.get_many(["a"])
    db.delete("profiles", "a")
    assert await handler.handle_events([delete_event("a", 1)]) == [None]
    # When it is re-created at v4 (the version keeps growing, as the contract asks)
    db.insert("profiles", profile_doc("a", 4))
    _, raw = db.log()[-1]
    assert await handler.handle_events([ChangeEvent.from_raw("profiles", raw)]) == [None]
    # Then it is served and announced again
    got = (await cache.get_many(["a"]))["a"]
    assert got is not None and got.version == 4
    assert announced(publisher) == ["profile:a:v:4"]


async def test_a_replayed_delete_of_a_profile_that_exists_again_changes_nothing() -> None:
    # Given a profile that was deleted then re-created, and is cached
    db = MemoryDatabase()
    db.insert("profiles", profile_doc("a", 5))
    cache = LayeredCache(MemoryLayer(100, 60.0, 10.0), None, MemoryProfileSource(db))
    handler = ProfileChangedHandler(cache, LocalInvalidationBus(), SlowPostStore(), MemoryPublisher())
    await cache.get_many(["a"])
    # When the old delete event is replayed
    assert await handler.handle_events([delete_event("a", 1)]) == [None]
    # Then the profile is still served
    got = (await cache.get_many(["a"]))["a"]
    assert got is not None and got.version == 5
    assert handler.stats.deleted == 0


async def test_a_change_then_a_delete_in_one_batch_ends_deleted() -> None:
    db = MemoryDatabase()
    cache = LayeredCache(MemoryLayer(100, 60.0, 10.0), None, MemoryProfileSource(db))
    handler = ProfileChangedHandler(cache, LocalInvalidationBus(), SlowPostStore(), MemoryPublisher())
    # Given one batch holding a change of "a" and then its delete (the profile is gone from MongoDB)
    events = [profile_event("a", 1, 2, "Two"), delete_event("a", 2)]
    assert await handler.handle_events(events) == [None, None]
    assert await cache.get_many(["a"]) == {"a": None}
    assert cache.l1.put("a", AuthorSnapshot("a", "a", "Two", None, 2)) is False


async def test_a_burst_read_at_its_newest_version_is_announced_once_and_is_not_stale() -> None:
    # Given three update events of one user that updateLookup all read at v5 (a burst of edits)
    handler, publisher = memory_handler()
    events = [profile_event("a", n, 5, "Five", op="update") for n in (1, 2, 3)]
    # When they are handled in one batch
    assert await handler.handle_events(events) == [None, None, None]
    # Then v5 is announced once, and nothing is counted as stale or unbumped
    assert announced(publisher) == ["profile:a:v:5"]
    assert (handler.stats.stale, handler.stats.unbumped) == (0, 0)
