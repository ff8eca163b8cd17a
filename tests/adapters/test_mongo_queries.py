"""The MongoDB adapters' queries, run against mongomock-motor collections.

``MongoPostStore.set_snapshots`` is not covered here: mongomock-motor's ``bulk_write`` does not work
with pymongo 4.20. It is tested at wire level in ``test_mongo_wire.py``.
"""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId, json_util
from loguru import logger
from mongomock_motor import AsyncMongoMockClient

from enrichment.errors import Deposed
from enrichment.snapshot import AuthorSnapshot
from worker.adapters.mongo_stores import (
    MAX_DEAD_LETTER_EVENT_BYTES,
    MongoCheckpointStore,
    MongoDeadLetters,
    MongoFollowerGraph,
    MongoPostStore,
    MongoProfileSource,
)
from worker.ports import Checkpoint, Gap


class CountingCollection:
    """Passes everything to a collection, recording the ``find`` calls."""

    def __init__(self, coll: Any) -> None:
        self._coll = coll
        self.finds: list[tuple[tuple[Any, ...], dict[str, Any]]] = []

    def find(self, *args: Any, **kwargs: Any) -> Any:
        self.finds.append((args, kwargs))
        return self._coll.find(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._coll, name)


@pytest.fixture
def db() -> Any:
    return AsyncMongoMockClient()["social"]


def at(ms: int) -> datetime:
    # Millisecond precision: BSON dates carry no more.
    return datetime(2024, 5, 1, 12, 0, tzinfo=UTC) + timedelta(milliseconds=ms)


def snap(user_id: str, version: int) -> AuthorSnapshot:
    return AuthorSnapshot(user_id, user_id, f"{user_id} v{version}", None, version)


# --- MongoProfileSource -----------------------------------------------------------------


async def test_fetch_many_does_one_find_and_returns_only_existing_well_formed_profiles(db: Any) -> None:
    # Given good profiles, malformed ones, and ids that do not exist
    await db.profiles.insert_many(
        [
            {
                "_id": "alice",
                "username": "alice",
                "display_name": "Alice",
                "avatar_url": "https://a",
                "version": 3,
                "bio": "hi",
            },
            {"_id": "bob", "username": "bob", "version": 0},
            {"_id": "badver", "username": "badver", "version": "3"},
            {"_id": "boolver", "username": "boolver", "version": True},
            {"_id": "nouser", "version": 1},
            {"_id": "other", "username": "other", "version": 1},
        ]
    )
    profiles = CountingCollection(db.profiles)
    source = MongoProfileSource(profiles)  # type: ignore[arg-type]
    # When a batch of ids is fetched
    found = await source.fetch_many(["alice", "bob", "badver", "boolver", "nouser", "ghost"])
    # Then one find was issued, and only the existing, well-formed profiles came back
    assert len(profiles.finds) == 1
    (flt, *_), _ = profiles.finds[0]
    assert flt == {"_id": {"$in": ["alice", "bob", "badver", "boolver", "nouser", "ghost"]}}
    assert found == {
        "alice": AuthorSnapshot("alice", "alice", "Alice", "https://a", 3),
        "bob": AuthorSnapshot("bob", "bob", "bob", None, 0),
    }


async def test_fetch_many_of_unknown_ids_is_empty(db: Any) -> None:
    assert await MongoProfileSource(db.profiles).fetch_many(["x", "y"]) == {}


# --- MongoFollowerGraph -----------------------------------------------------------------


async def test_followers_stream_sorted_ascending_across_batches(db: Any) -> None:
    # Given 2500 followers of "star" inserted in random order, among follows of other users
    rng = random.Random(7)
    star = [f"u{i:05d}" for i in range(2_500)]
    docs = [{"followee_id": "star", "follower_id": f} for f in star]
    docs += [{"followee_id": f"other{i % 7}", "follower_id": f"v{i:05d}"} for i in range(1_200)]
    docs += [{"followee_id": "star", "follower_id": 12345}, {"followee_id": "star"}]  # malformed
    rng.shuffle(docs)
    await db.follows.insert_many(docs)
    follows = CountingCollection(db.follows)
    graph = MongoFollowerGraph(follows, batch_size=300)  # type: ignore[arg-type]
    # When the followers of "star" are streamed
    got = [f async for page in graph.follower_pages("star") for f in page]
    # Then every follower comes exactly once, in ascending order, and nothing else does
    assert got == star
    assert len(follows.finds) == 1
    (flt, projection), _ = follows.finds[0]
    assert flt == {"followee_id": "star"}
    assert projection == {"follower_id": 1, "_id": 0}


async def test_followers_of_a_user_nobody_follows_is_empty(db: Any) -> None:
    await db.follows.insert_one({"followee_id": "a", "follower_id": "b"})
    graph = MongoFollowerGraph(db.follows, batch_size=10)
    assert [p async for p in graph.follower_pages("b")] == []


async def test_followers_stream_can_be_abandoned_part_way(db: Any) -> None:
    await db.follows.insert_many([{"followee_id": "a", "follower_id": f"f{i:03d}"} for i in range(50)])
    stream = MongoFollowerGraph(db.follows, batch_size=10).follower_pages("a")
    first = await anext(stream)
    await stream.aclose()  # closes the cursor
    assert first[:3] == ["f000", "f001", "f002"]


async def test_duplicate_edges_stream_adjacent_and_sorted_across_batches(db: Any) -> None:
    # Given repeated follow edges (no unique index), a repeated self-edge, spread over batches
    await db.follows.insert_many(
        [{"followee_id": "m", "follower_id": f} for f in ["z", "b", "m", "b", "a", "m", "z", "b"]]
    )
    graph = MongoFollowerGraph(db.follows, batch_size=3)
    # When streamed
    pages = [p async for p in graph.follower_pages("m")]
    # Then the ids come in ascending order across pages, so repeats are adjacent (the port's contract)
    # (mongomock hands the whole result as one page; the memory twin's pages cover the boundaries)
    assert [f for p in pages for f in p] == ["a", "b", "b", "b", "m", "m", "z", "z"]


async def test_non_string_follower_ids_are_counted_and_warned_once_per_post(db: Any) -> None:
    # Given follow edges whose follower_id is an int, an ObjectId, null or missing
    await db.follows.insert_many(
        [{"followee_id": "m", "follower_id": f} for f in ["a", 42, ObjectId(), None, "b", 7]]
        + [{"followee_id": "m"}]
    )
    graph = MongoFollowerGraph(db.follows, batch_size=2)
    warnings: list[str] = []
    sink = logger.add(lambda m: warnings.append(m.record["message"]), level="WARNING")
    try:
        # When the followers are streamed twice (two posts)
        first = [f async for p in graph.follower_pages("m") for f in p]
        second = [f async for p in graph.follower_pages("m") for f in p]
    finally:
        logger.remove(sink)
    # Then only the string ids are yielded, the others are counted, with one warning per stream
    assert first == second == ["a", "b"]
    assert graph.invalid_ids == 10
    assert len(warnings) == 2
    assert "skipped 5 follow edge(s)" in warnings[0] and "followers of m" in warnings[0]


# --- MongoPostStore.rewrite_author_snapshot ---------------------------------------------


async def test_rewrite_author_snapshot_touches_only_that_authors_older_posts(db: Any) -> None:
    # Given alice's posts without, with a null, an older, the same and a newer snapshot, and bob's post
    await db.posts.insert_many(
        [
            {"_id": "absent", "author_id": "alice"},
            {"_id": "null", "author_id": "alice", "author_snapshot": None},
            {"_id": "older", "author_id": "alice", "author_snapshot": snap("alice", 1).to_dict()},
            {
                "_id": "same",
                "author_id": "alice",
                "author_snapshot": {**snap("alice", 3).to_dict(), "display_name": "kept"},
            },
            {"_id": "newer", "author_id": "alice", "author_snapshot": snap("alice", 5).to_dict()},
            {"_id": "bobs", "author_id": "bob"},
        ]
    )
    store = MongoPostStore(db.posts)
    # When alice's version 3 is rewritten into her posts
    modified = await store.rewrite_author_snapshot(snap("alice", 3))
    # Then the three posts holding nothing or something older changed, and nothing else
    assert modified == 3
    posts = {d["_id"]: d async for d in db.posts.find({})}
    for post_id in ("absent", "null", "older"):
        assert posts[post_id]["author_snapshot"] == snap("alice", 3).to_dict()
    assert posts["same"]["author_snapshot"]["display_name"] == "kept"
    assert posts["newer"]["author_snapshot"] == snap("alice", 5).to_dict()
    assert "author_snapshot" not in posts["bobs"]
    # And a replay changes nothing
    assert await store.rewrite_author_snapshot(snap("alice", 3)) == 0


async def test_rewrite_for_an_author_without_posts_modifies_nothing(db: Any) -> None:
    await db.posts.insert_one({"_id": "p", "author_id": "bob"})
    assert await MongoPostStore(db.posts).rewrite_author_snapshot(snap("alice", 1)) == 0


# --- MongoCheckpointStore ---------------------------------------------------------------


async def test_checkpoint_save_and_load_round_trip(db: Any) -> None:
    # Given a checkpoint with a token and a timezone-aware event time
    store = MongoCheckpointStore(db.checkpoints, db.gaps)
    token = {"_data": "8266A1B2C3000000012B0229296E04"}
    saved = Checkpoint("posts", token, at(123), at(456), epoch=1)
    # When it is saved and loaded
    await store.save(saved)
    loaded = await store.load("posts")
    # Then it comes back whole, with aware datetimes
    assert loaded is not None
    assert loaded.stream == "posts"
    assert dict(loaded.token) == token
    assert loaded.event_time == at(123)
    assert loaded.event_time is not None and loaded.event_time.tzinfo is not None
    assert loaded.saved_at == at(456)
    assert loaded.saved_at.tzinfo is not None
    assert loaded.epoch == 1


async def test_saving_twice_keeps_one_document_with_the_latest_token(db: Any) -> None:
    store = MongoCheckpointStore(db.checkpoints, db.gaps)
    await store.save(Checkpoint("posts", {"_data": "01"}, at(1), at(2), epoch=1))
    await store.save(Checkpoint("posts", {"_data": "02"}, None, at(3), epoch=1))
    await store.save(Checkpoint("profiles", {"_data": "0A"}, None, at(3), epoch=1))
    assert await db.checkpoints.count_documents({"_id": "posts"}) == 1
    assert await db.checkpoints.count_documents({}) == 2
    loaded = await store.load("posts")
    assert loaded is not None
    assert dict(loaded.token) == {"_data": "02"}
    assert loaded.event_time is None


async def test_load_of_an_unknown_stream_is_none(db: Any) -> None:
    assert await MongoCheckpointStore(db.checkpoints, db.gaps).load("posts") is None


async def test_a_save_by_an_older_epoch_is_fenced(db: Any) -> None:
    # Given a checkpoint written by epoch 2
    store = MongoCheckpointStore(db.checkpoints, db.gaps)
    await store.save(Checkpoint("posts", {"_data": "05"}, None, at(1), epoch=2))
    # When a deposed worker with epoch 1 tries to save
    with pytest.raises(Deposed):
        await store.save(Checkpoint("posts", {"_data": "03"}, None, at(2), epoch=1))
    # Then the stored checkpoint is untouched
    loaded = await store.load("posts")
    assert loaded is not None
    assert dict(loaded.token) == {"_data": "05"}
    assert loaded.epoch == 2


async def test_delete_forgets_the_checkpoint(db: Any) -> None:
    store = MongoCheckpointStore(db.checkpoints, db.gaps)
    await store.save(Checkpoint("posts", {"_data": "05"}, None, at(1), epoch=1))
    await store.delete("posts")
    assert await store.load("posts") is None


async def test_gaps_round_trip_in_end_order(db: Any) -> None:
    store = MongoCheckpointStore(db.checkpoints, db.gaps)
    await store.record_gap(Gap("posts", at(10), at(20), "history lost"))
    await store.record_gap(Gap("profiles", None, at(15), "history lost"))
    gaps = await store.gaps()
    assert gaps == [
        Gap("profiles", None, at(15), "history lost"),
        Gap("posts", at(10), at(20), "history lost"),
    ]
    assert all(g.end.tzinfo is not None for g in gaps)


# --- MongoDeadLetters -------------------------------------------------------------------


async def test_dead_letter_keeps_stream_error_token_and_the_event_as_extended_json(db: Any) -> None:
    # Given an event with BSON types and field names MongoDB would not store as keys
    oid = ObjectId()
    token = {"_data": "82ABCDEF"}
    raw = {
        "_id": token,
        "operationType": "insert",
        "fullDocument": {"_id": oid, "created_at": at(5), "$weird": 1, "a.b": 2},
    }
    letters = MongoDeadLetters(db.dead)
    # When it is dead-lettered
    await letters.put("posts", token, raw, "InvalidEvent: author_id must be a non-empty string")
    # Then one document holds the stream, the error, the token and the event, all readable back
    docs = [d async for d in db.dead.find({})]
    assert len(docs) == 1
    (doc,) = docs
    assert doc["stream"] == "posts"
    assert doc["error"] == "InvalidEvent: author_id must be a non-empty string"
    assert json_util.loads(doc["token"]) == token
    assert doc["event_truncated"] is False
    event = json_util.loads(doc["event"], json_options=json_util.JSONOptions(tz_aware=True, tzinfo=UTC))
    assert event == raw
    assert '"$oid"' in doc["event"]
    assert isinstance(doc["at"], datetime)


async def test_an_absurdly_large_event_is_truncated(db: Any) -> None:
    raw = {"_id": {"_data": "82"}, "fullDocument": {"text": "x" * (MAX_DEAD_LETTER_EVENT_BYTES + 500_000)}}
    await MongoDeadLetters(db.dead).put("posts", raw["_id"], raw, "InvalidEvent: text too large")
    doc = await db.dead.find_one({})
    assert doc is not None
    assert doc["event_truncated"] is True
    assert len(doc["event"]) == MAX_DEAD_LETTER_EVENT_BYTES
    assert doc["event"].startswith('{"_id": {"_data": "82"}')
    assert doc["error"] == "InvalidEvent: text too large"


@pytest.mark.parametrize("epoch", [0, 1], ids=["leader-disabled", "leader-epoch-1"])
async def test_a_checkpoint_saved_before_epochs_existed_can_be_overwritten(db: Any, epoch: int) -> None:
    # Given a checkpoint document written by a version without lease epochs
    await db.checkpoints.insert_one(
        {"_id": "posts", "token": {"_data": "01"}, "event_time": at(1), "saved_at": at(2)}
    )
    store = MongoCheckpointStore(db.checkpoints, db.gaps)
    legacy = await store.load("posts")
    assert legacy is not None and legacy.epoch == 0  # load reads the missing epoch as 0
    # When the upgraded worker saves its next checkpoint
    await store.save(Checkpoint("posts", {"_data": "02"}, at(3), at(4), epoch=epoch))
    # Then it is written, as for any older epoch
    loaded = await store.load("posts")
    assert loaded is not None
    assert dict(loaded.token) == {"_data": "02"}
    assert loaded.epoch == epoch
