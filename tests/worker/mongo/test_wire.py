"""PyMongo adapters over the wire, against WireMongo (a test stand-in, not MongoDB).

Covers what mongomock-motor cannot: ``bulk_write`` (broken there with pymongo 4.20) and the
whole production wiring path with a real ``AsyncMongoClient``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from pymongo import AsyncMongoClient

from enrichment.snapshot import AuthorSnapshot
from tests.support.wire_mongo import WireMongo
from worker.mongo.stores import MongoPostStore


@pytest.fixture
def wire() -> Iterator[WireMongo]:
    with WireMongo() as wm:
        yield wm


@pytest.fixture
async def client(wire: WireMongo) -> AsyncIterator[AsyncMongoClient[dict[str, Any]]]:
    c: AsyncMongoClient[dict[str, Any]] = AsyncMongoClient(wire.uri, serverSelectionTimeoutMS=3000)
    yield c
    await c.close()


def snap(user: str, version: int) -> AuthorSnapshot:
    return AuthorSnapshot(user, user, f"{user} v{version}", None, version)


async def test_set_snapshots_is_one_round_trip_and_version_guarded(
    wire: WireMongo, client: AsyncMongoClient[dict[str, Any]]
) -> None:
    # Given posts by two authors: one holds no snapshot, one an older, one a newer snapshot
    db = wire.db("social")
    db.insert("posts", {"_id": "a1", "author_id": "a", "text": "x"})
    db.insert(
        "posts", {"_id": "a2", "author_id": "a", "text": "x", "author_snapshot": snap("a", 1).to_dict()}
    )
    db.insert(
        "posts", {"_id": "a3", "author_id": "a", "text": "x", "author_snapshot": snap("a", 9).to_dict()}
    )
    db.insert("posts", {"_id": "b1", "author_id": "b", "text": "x"})
    db.insert("posts", {"_id": "c1", "author_id": "c", "text": "x"})  # not in the batch
    store = MongoPostStore(client["social"]["posts"])
    updates_before = wire.command_count("update")

    # When one micro-batch writes snapshots for a (v5) and b (v2)
    changed = await store.set_snapshots(
        [("a1", snap("a", 5)), ("a2", snap("a", 5)), ("a3", snap("a", 5)), ("b1", snap("b", 2))]
    )

    # Then one update command carried the whole batch
    assert wire.command_count("update") - updates_before == 1
    # and only absent or older snapshots were replaced
    assert changed == 3
    versions = {d["_id"]: (d.get("author_snapshot") or {}).get("version") for d in db.find("posts")}
    assert versions == {"a1": 5, "a2": 5, "a3": 9, "b1": 2, "c1": None}

    # When the same batch is replayed, nothing changes
    assert await store.set_snapshots([("a1", snap("a", 5)), ("b1", snap("b", 2))]) == 0
    # and a stale snapshot never lands on a newer one
    assert await store.set_snapshots([("a1", snap("a", 4))]) == 0
    assert db.find_one("posts", {"_id": "a1"})["author_snapshot"]["version"] == 5
