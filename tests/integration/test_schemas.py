"""schemas/*.json describe exactly what the worker publishes: the real worker on real Redis and
RabbitMQ, every message it sends validated against the schema of its routing key."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from bson import ObjectId
from jsonschema import Draft202012Validator

from tests.harness import Collector, World, settings, start, wait_for
from worker.lifecycle_settings import PostLifecycleSettings

SCHEMAS = Path(__file__).resolve().parents[2] / "schemas"


# The version each routing key's bodies carry now (post.created v2: chunks of follower ranges).
CURRENT = {"post.created": 2, "post.updated": 1, "post.deleted": 1, "profile.updated": 1}


def validator(routing_key: str) -> Draft202012Validator:
    schema = json.loads((SCHEMAS / f"{routing_key}.v{CURRENT[routing_key]}.json").read_text())
    Draft202012Validator.check_schema(schema)
    return Draft202012Validator(schema, format_checker=Draft202012Validator.FORMAT_CHECKER)


VALIDATORS = {key: validator(key) for key in CURRENT}


def errors(routing_key: str, body: Any) -> list[str]:
    return [e.message for e in VALIDATORS[routing_key].iter_errors(body)]


async def run_worker(redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector) -> None:
    """Posts covering every shape the producer emits, an edit, a soft delete and a profile edit;
    waits for all messages."""
    world = World()
    world.add_user("alice")
    world.add_user("bob", display_name=None, avatar_url=None)  # display_name falls back to username
    world.graph.set_followers("alice", ["alice", "f1", "f2", "f3", "f4", "f5"])  # 5 recipients → 3 chunks
    world.graph.set_followers("bob", ["f1"])
    world.graph.set_followers("ghost", ["f2", "f3"])  # ghost has no profile: author is null
    cfg = settings(key_prefix, exchange, chunk_size=2)
    lifecycle = PostLifecycleSettings(visible_fields=["title"], soft_delete_field="deleted_at")
    cfg = cfg.model_copy(update={"post_lifecycle": lifecycle})
    worker, task = await start(world.runtime(cfg, redis))
    try:
        created = datetime(2026, 11, 23, 15, 0, tzinfo=UTC)
        world.db.insert("posts", {"_id": "p1", "author_id": "alice", "text": "hi", "created_at": created})
        world.db.insert(
            "posts", {"_id": ObjectId(), "author_id": "alice", "text": "", "created_at": "yesterday"}
        )
        world.post("p3", "bob", text="no created_at, no avatar")
        world.post("p4", "ghost", text="who am I")
        world.edit_user("alice", display_name="Alice B.", avatar_url="https://cdn.example/a/2.png")
        world.db.update("posts", "p1", {"text": "hi, edited", "title": created})
        world.db.update("posts", "p4", {"deleted_at": created})
        await wait_for(
            lambda: (
                len(collector.of("post.created")) >= 3 + 3 + 1 + 1
                and len(collector.of("post.updated")) >= 3
                and len(collector.of("post.deleted")) >= 1
                and len(collector.of("profile.updated")) >= 1
            ),
            what="every message",
        )
    finally:
        worker.stop.set()
        await task


async def test_every_published_message_matches_the_schema_of_its_routing_key(
    redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector
) -> None:
    # Given the real worker has handled posts of every shape and a profile edit
    await run_worker(redis, key_prefix, exchange, collector)

    # Then every message validates against the schema of its routing key
    assert {m.routing_key for m in collector.messages} == set(VALIDATORS)
    for m in collector.messages:
        assert errors(m.routing_key, m.body) == [], (m.message_id, m.body)
        assert m.body["type"] == m.routing_key

    # and the run exercised the optional shapes, so the schema's nullable branches were checked
    posts = [m.body for m in collector.of("post.created")]
    assert any(b["author"] is None for b in posts)
    assert any(b["author"] is not None and b["author"]["avatar_url"] is None for b in posts)
    assert {type(b["post"]["created_at"]) for b in posts} == {str, type(None)}
    assert {b["chunk"]["last"] for b in posts} == {True, False}
    assert max(b["chunk"]["index"] for b in posts) == 2


def valid_post() -> dict[str, Any]:
    return {
        "schema": 2,
        "type": "post.created",
        "post": {"id": "p1", "author_id": "u1", "created_at": "2026-11-23T15:00:00+00:00", "text": "hi"},
        "author": {"user_id": "u1", "username": "u1", "display_name": "U", "avatar_url": None, "version": 7},
        "recipients": ["u2", "u3"],
        "chunk": {"index": 0, "last": True},
        "range": {"index": 0, "count": 1},
    }


def valid_profile() -> dict[str, Any]:
    user = {
        "user_id": "u1",
        "username": "u1",
        "display_name": "U",
        "avatar_url": "https://x/1.png",
        "version": 8,
    }
    return {"schema": 1, "type": "profile.updated", "user": user}


def mutated(body: dict[str, Any], path: str, value: Any) -> dict[str, Any]:
    """A copy with ``path`` (dotted) set to ``value``, or deleted when value is DELETE."""
    out = copy.deepcopy(body)
    *parents, leaf = path.split(".")
    node = out
    for part in parents:
        node = node[part]
    if value is DELETE:
        del node[leaf]
    else:
        node[leaf] = value
    return out


DELETE = object()


def test_the_hand_written_valid_examples_pass() -> None:
    assert errors("post.created", valid_post()) == []
    assert errors("post.created", mutated(valid_post(), "author", None)) == []
    assert errors("post.created", mutated(valid_post(), "post.created_at", None)) == []
    assert errors("profile.updated", valid_profile()) == []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("extra", 1),  # additionalProperties: false at the top
        ("schema", 1),
        ("type", "profile.updated"),
        ("post.id", 42),
        ("post.author_id", ""),
        ("post.likes", 3),  # additionalProperties: false in post
        ("post.text", DELETE),
        ("author", DELETE),  # nullable, but required
        ("author.version", -1),
        ("author.version", "7"),
        ("author.avatar_url", DELETE),
        ("author.nickname", "x"),
        ("recipients", []),  # minItems 1
        ("recipients", ["u2", 3]),
        ("chunk.index", -1),
        ("chunk.index", 0.5),
        ("chunk.last", "yes"),
        ("chunk.total", 3),
        ("range", DELETE),
        ("range.index", -1),
        ("range.count", 0),
    ],
)
def test_a_post_created_body_that_breaks_the_contract_is_rejected(path: str, value: Any) -> None:
    assert errors("post.created", mutated(valid_post(), path, value)) != []


@pytest.mark.parametrize(
    ("path", "value"),
    [
        ("user", None),  # a profile.updated always carries the user
        ("user.version", "8"),
        ("user.user_id", ""),
        ("user.display_name", None),
        ("type", "post.created"),
        ("recipients", ["u2"]),
    ],
)
def test_a_profile_updated_body_that_breaks_the_contract_is_rejected(path: str, value: Any) -> None:
    assert errors("profile.updated", mutated(valid_profile(), path, value)) != []
