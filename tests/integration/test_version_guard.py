"""Version guard: an old profile event never puts an older snapshot over a newer one."""

from __future__ import annotations

import orjson
import redis.asyncio as aioredis
from bson import Timestamp
from loguru import logger

from enrichment.breaker import CircuitBreaker
from enrichment.cache import LayeredCache
from enrichment.invalidation import LocalInvalidationBus
from enrichment.memory import MemoryLayer
from enrichment.redis_layer import RedisLayer
from enrichment.snapshot import AuthorSnapshot, decode_cached
from handlers.events import ChangeEvent
from handlers.profiles import ProfileChangedHandler
from tests.harness import Collector, World, settings, start, wait_for
from worker.adapters.memory_db import MemoryDatabase
from worker.adapters.memory_stores import MemoryPostStore, MemoryProfileSource
from worker.publisher import MemoryPublisher


def profile_event(doc: dict, seq: int) -> ChangeEvent:
    raw = {
        "_id": {"_data": f"82{seq:016X}"},
        "operationType": "update",
        "clusterTime": Timestamp(1, seq),
        "documentKey": {"_id": doc["_id"]},
        "updateDescription": {"updatedFields": {"display_name": doc["display_name"]}, "removedFields": []},
        "fullDocument": doc,
    }
    return ChangeEvent.from_raw("profiles", raw)


async def test_replayed_old_profile_event_leaves_newer_snapshots(
    redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector
) -> None:
    # Given a user edited to version 3, with posts carrying v3 and Redis holding v3
    world = World()
    world.add_user("u1")
    world.graph.set_followers("u1", ["f1"])
    runtime = world.runtime(settings(key_prefix, exchange), redis)
    worker, task = await start(runtime)
    for i in range(5):
        world.post(f"p{i}", "u1")
    world.edit_user("u1", display_name="second")
    old_doc = dict(world.db.collection("profiles")["u1"])  # version 2
    world.edit_user("u1", display_name="third")  # version 3
    posts = world.db.collection("posts")
    await wait_for(
        lambda: (
            all(p.get("author_snapshot", {}).get("version") == 3 for p in posts.values())
            and len(collector.of("profile.updated")) >= 1
        ),
        what="v3 everywhere",
    )
    key = runtime.cache.l2.key("u1")  # type: ignore[union-attr]
    await wait_for(lambda: True)
    assert decode_cached(await redis.get(key)).version == 3  # type: ignore[union-attr, arg-type]

    # When the old v2 event is handled again (a replay, or an out-of-order delivery)
    results = await runtime.profiles.handle_events([profile_event(old_doc, 1)])
    # and a slow post handler writes the old snapshot back
    changed = await world.posts.set_snapshots([("p0", AuthorSnapshot.from_profile(old_doc))])
    worker.stop.set()
    await task

    # Then nothing newer was overwritten, in the posts or in Redis
    assert results == [None]
    assert changed == 0
    assert {p["author_snapshot"]["version"] for p in posts.values()} == {3}
    assert {p["author_snapshot"]["display_name"] for p in posts.values()} == {"third"}
    stored = decode_cached(await redis.get(key))  # type: ignore[arg-type]
    assert stored is not None and stored.version == 3 and stored.display_name == "third"
    # and a cache read now serves v3, never v2
    assert (await runtime.cache.get_many(["u1"]))["u1"].version == 3  # type: ignore[union-attr]


def replica(redis: aioredis.Redis, key_prefix: str) -> tuple[ProfileChangedHandler, MemoryPublisher]:
    """A fresh replica (empty L1) sharing Redis: what a restart or a takeover looks like."""
    l2 = RedisLayer(redis, key_prefix, 3600, 0.0, 60, CircuitBreaker(3, 1.0))
    cache = LayeredCache(MemoryLayer(100, 60.0, 10.0), l2, MemoryProfileSource(MemoryDatabase()))
    publisher = MemoryPublisher()
    store = MemoryPostStore(MemoryDatabase())
    return ProfileChangedHandler(cache, LocalInvalidationBus(), store, publisher), publisher


def replace(user: str, version: int, display: str, seq: int) -> ChangeEvent:
    doc = {"_id": user, "username": user, "display_name": display, "avatar_url": None, "version": version}
    raw = {"_id": {"_data": f"82{seq:016X}"}, "operationType": "replace", "fullDocument": doc}
    return ChangeEvent.from_raw("profiles", raw)


async def test_another_replica_never_announces_older_than_redis_holds(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    # Given v8 announced by one replica (Redis holds v8)
    first, first_pub = replica(redis, key_prefix)
    assert await first.handle_events([replace("u1", 8, "Eight", 2)]) == [None]
    # When another replica, with nothing in L1, handles the older replace v7, then v8 again (replay)
    second, second_pub = replica(redis, key_prefix)
    results = await second.handle_events([replace("u1", 7, "Seven", 1)])
    again = await second.handle_events([replace("u1", 8, "Eight", 2)])
    # Then v7 is not announced and counted, while the replayed v8 is announced again (same id)
    assert results == again == [None]
    assert [m.message_id for m in first_pub.messages + second_pub.messages] == ["profile:u1:v:8"] * 2
    assert second.stats.stale == 1
    assert second.stats.unbumped == 0


async def test_a_display_change_without_a_bump_is_counted_and_warned_across_replicas(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    # Given v4 "Old" announced (Redis holds it)
    first, _ = replica(redis, key_prefix)
    assert await first.handle_events([replace("u1", 4, "Old", 1)]) == [None]
    # When the app changes the display name without bumping the version, seen by another replica
    second, _ = replica(redis, key_prefix)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        assert await second.handle_events([replace("u1", 4, "New", 2)]) == [None]
    finally:
        logger.remove(sink)
    # Then it is counted and one WARNING says the version must be bumped
    assert second.stats.unbumped == 1
    assert [w for w in warnings if "without a version bump" in w] != []


async def test_a_deleted_profile_is_tombstoned_in_redis_against_stale_fills_and_posts_get_no_author(
    redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector
) -> None:
    # Given a running worker; u1 has a profile (v3 in Redis) and a follower
    world = World()
    world.add_user("u1", version=3)
    world.graph.set_followers("u1", ["f1"])
    runtime = world.runtime(settings(key_prefix, exchange), redis)
    worker, task = await start(runtime)
    try:
        world.post("p1", "u1")
        await wait_for(lambda: len(collector.of("post.created")) == 1, what="first post")
        l2 = runtime.cache.l2
        assert l2 is not None
        v3 = decode_cached(await redis.get(l2.key("u1")))  # type: ignore[arg-type]
        assert v3 is not None and v3.version == 3
        # When the profile is deleted in MongoDB
        world.db.delete("profiles", "u1")
        await wait_for(lambda: runtime.profiles.stats.deleted == 1, what="the delete handled")
        # Then Redis holds a tombstone at v3, which a slow fill of v3 cannot overwrite
        raw = await redis.get(l2.key("u1"))
        assert raw is not None and decode_cached(raw) is None
        assert orjson.loads(raw) == {"missing": True, "deleted": True, "version": 3}
        assert await l2.put_many([("u1", v3)]) == 0
        # and a new post of u1 goes out at once with no author, while the old post keeps its snapshot
        world.post("p2", "u1")
        await wait_for(lambda: len(collector.of("post.created")) == 2, what="second post")
        bodies = {m.body["post"]["id"]: m.body for m in collector.of("post.created")}
        assert bodies["p2"]["author"] is None
        assert world.db.collection("posts")["p1"]["author_snapshot"]["version"] == 3
        # and no profile.updated was announced for the delete
        assert collector.of("profile.updated") == []
    finally:
        worker.stop.set()
        await task
