"""examples/consumer.py on the real Redis: feeds, and the tombstone that keeps a deleted post out
of them whichever of its creation and its delete arrives first (docs/consumers.md)."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import redis.asyncio as aioredis

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "consumer.py"


def example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_consumer", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def chunk(kind: str, post_id: str, recipients: list[str]) -> dict[str, Any]:
    post: dict[str, Any] = {"id": post_id, "author_id": "u1"}
    body: dict[str, Any] = {"schema": 1, "type": kind, "post": post, "recipients": recipients}
    if kind == "post.created":
        body["schema"] = 2
        post.update(created_at="2026-11-30T08:00:00+00:00", text="hi")
    return body


async def feed(redis: aioredis.Redis, prefix: str, user: str) -> list[bytes]:
    return list(await redis.zrange(f"{prefix}feed:{user}", 0, -1))


async def test_a_delete_that_overtakes_chunks_of_the_creation_keeps_the_post_out(
    redis: aioredis.Redis, key_prefix: str
) -> None:
    consumer = example().FeedConsumer(redis, key_prefix)
    # Given the first chunk of p1's creation delivered, then its delete, then the second chunk
    await consumer.apply(chunk("post.created", "p1", ["a", "b"]))
    await consumer.apply(chunk("post.deleted", "p1", ["a", "b", "c", "d"]))
    await consumer.apply(chunk("post.created", "p1", ["c", "d"]))
    # and an edit, and another post
    await consumer.apply(chunk("post.updated", "p1", ["a", "c"]))
    await consumer.apply(chunk("post.created", "p2", ["a", "c"]))
    # Then p1 is in no feed, whatever the order, and p2 is where it was sent
    for user in "abcd":
        assert b"p1" not in await feed(redis, key_prefix, user)
    assert await feed(redis, key_prefix, "a") == [b"p2"]
    assert await feed(redis, key_prefix, "c") == [b"p2"]
    # and the tombstone is kept for as long as a late copy may come
    ttl = await redis.ttl(f"{key_prefix}deleted:p1")
    assert 0 < ttl <= example().TOMBSTONE_TTL_SECONDS
