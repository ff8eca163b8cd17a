"""Version guard: an old profile event never puts an older snapshot over a newer one."""

from __future__ import annotations

import redis.asyncio as aioredis
from bson import Timestamp

from enrichment.snapshot import AuthorSnapshot, decode_cached
from handlers.events import ChangeEvent
from tests.harness import Collector, World, settings, start, wait_for


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
