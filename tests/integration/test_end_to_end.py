"""End to end: in-memory MongoDB stand-in → worker → real Redis and real RabbitMQ."""

from __future__ import annotations

import random

import redis.asyncio as aioredis

from tests.harness import Collector, World, settings, start, wait_for
from worker.memory.db import token_seq


def build_graph(world: World, rng: random.Random) -> dict[str, set[str]]:
    """60 authors with skewed follower counts, some with none, one with thousands."""
    users = [f"u{i:03d}" for i in range(60)]
    fans = [f"f{i:05d}" for i in range(3000)]
    followers: dict[str, set[str]] = {}
    for i, user in enumerate(users):
        world.add_user(user)
        count = 0 if i % 10 == 0 else (2500 if i == 1 else rng.randint(1, 120))
        chosen = set(rng.sample(fans, count))
        if i % 7 == 0 and count:
            chosen.add(user)  # the author follows themself: must never be a recipient
        followers[user] = chosen - {user}
        world.graph.set_followers(user, sorted(chosen))
    return followers


async def test_every_follower_gets_every_post_with_a_fresh_snapshot(
    redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector
) -> None:
    # Given a graph with known followers and a running worker
    rng = random.Random(1)
    world = World()
    followers = build_graph(world, rng)
    cfg = settings(key_prefix, exchange, chunk_size=100)
    runtime = world.runtime(cfg, redis)
    worker, task = await start(runtime)

    # When several hundred posts are written with profile edits interleaved
    authors = sorted(followers)
    version_at_post: dict[str, int] = {}
    edits: list[tuple[str, int]] = []
    for i in range(400):
        author = rng.choice(authors)
        world.post(f"p{i:04d}", author, text=f"post {i}")
        version_at_post[f"p{i:04d}"] = world.db.collection("profiles")[author]["version"]
        if i % 10 == 5:
            user = rng.choice(authors)
            edits.append((user, world.edit_user(user, display_name=f"renamed {i}")))
    expected_messages = sum(
        (len(followers[world.db.collection("posts")[p]["author_id"]]) + 99) // 100 for p in version_at_post
    )
    final: dict[str, int] = {}
    for user, version in edits:
        final[user] = max(final.get(user, 0), version)

    def final_versions_announced() -> bool:
        # Each user's newest version: a burst of edits read together is announced once, at it.
        seen = {
            (m.body["user"]["user_id"], m.body["user"]["version"]) for m in collector.of("profile.updated")
        }
        return all(item in seen for item in final.items())

    await wait_for(
        lambda: len(collector.of("post.created")) >= expected_messages and final_versions_announced(),
        what="all messages",
    )
    worker.stop.set()
    await task

    # Then each post reached exactly its author's followers, as the union of its chunks
    received = collector.recipients_by_post()
    for post_id, doc in world.db.collection("posts").items():
        assert received.get(post_id, set()) == followers[doc["author_id"]], post_id
    assert len(collector.of("post.created")) == expected_messages  # no duplicates on a clean run

    # and chunks are numbered 0..n-1, exactly the last one says so, with deterministic ids
    by_post: dict[str, list[dict]] = {}
    for m in collector.of("post.created"):
        assert m.message_id == (
            f"post:{m.correlation_id}:range:{m.body['range']['index']}:chunk:{m.body['chunk']['index']}"
        )
        assert m.content_type == "application/json" and m.persistent
        assert m.body["schema"] == 2 and m.body["type"] == "post.created"
        assert len(m.body["recipients"]) <= 100
        by_post.setdefault(m.correlation_id, []).append(m.body["chunk"])
        # the snapshot is the version current when the post was handled, or newer
        assert m.body["author"]["version"] >= version_at_post[m.correlation_id]
    for chunks in by_post.values():
        indexes = sorted(c["index"] for c in chunks)
        assert indexes == list(range(len(chunks)))
        assert [c["index"] for c in chunks if c["last"]] == [len(chunks) - 1]

    # and stored posts end with the newest snapshot
    profiles = world.db.collection("profiles")
    for post_id, doc in world.db.collection("posts").items():
        assert doc["author_snapshot"]["version"] == profiles[doc["author_id"]]["version"], post_id
        assert doc["author_snapshot"]["display_name"] == profiles[doc["author_id"]]["display_name"]

    # and every edited user was announced at their final version. (updateLookup reads the
    # document as it is when the event is read, so intermediate versions may be skipped.)
    announced: dict[str, int] = {}
    for m in collector.of("profile.updated"):
        user = m.body["user"]
        assert m.message_id == f"profile:{user['user_id']}:v:{user['version']}"
        announced[user["user_id"]] = max(announced.get(user["user_id"], 0), user["version"])
    assert announced == {u: profiles[u]["version"] for u, _ in edits}

    # and both checkpoints sit at (or past) the last event of their stream
    posts_cp = world.checkpoints.saved["posts"].token
    profiles_cp = world.checkpoints.saved["profiles"].token
    last_post_seq = max(
        pos for pos, ev in world.db.log() if ev["ns"]["coll"] == "posts" and ev["operationType"] == "insert"
    )
    assert token_seq(posts_cp) >= last_post_seq
    assert token_seq(profiles_cp) is not None
    assert world.dead.items == []
