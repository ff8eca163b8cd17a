"""The repair tools' PyMongo queries (worker/mongo/repair.py) against mongomock-motor collections."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId, json_util
from mongomock_motor import AsyncMongoMockClient

from worker.mongo.repair import (
    MongoDeadLetterArchive,
    MongoGapLedger,
    MongoPostReader,
    MongoProfileReader,
    MongoRunStore,
)
from worker.mongo.stores import MongoCheckpointStore, MongoDeadLetters
from worker.ports import Gap
from worker.repair.ports import DeadLetterFilter, Position, RunState, Window

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def db() -> Any:
    return AsyncMongoMockClient(tz_aware=True)["social"]


async def read_all(reader: MongoPostReader, window: Window, batch: int) -> list[Any]:
    out: list[Any] = []
    after = None
    while docs := await reader.read_posts(window, after, batch):
        out += [d["_id"] for d in docs]
        after = Position(docs[-1].get(window.field), docs[-1]["_id"])
    return out


async def test_a_time_window_is_read_in_created_at_then_id_order_across_batches() -> None:
    # Given posts, several sharing one created_at, some outside the window, one with a string date
    d = db()
    same = T0 + timedelta(seconds=5)
    docs = [{"_id": f"p{i}", "author_id": "a", "text": "t", "created_at": same} for i in range(5)]
    docs += [
        {"_id": "early", "author_id": "a", "created_at": T0},
        {"_id": "late", "author_id": "a", "created_at": T0 + timedelta(hours=1)},
    ]
    docs += [{"_id": "q", "author_id": "a", "created_at": T0 + timedelta(seconds=6)}]
    docs += [{"_id": "s", "author_id": "a", "created_at": "2026-01-01T00:00:05Z"}]
    await d.posts.insert_many(docs)
    reader = MongoPostReader(d.posts)
    window = Window("created_at", T0 + timedelta(seconds=1), T0 + timedelta(minutes=1))

    # When read two at a time, resuming after each batch's last post
    ids = await read_all(reader, window, 2)

    # Then every post of the window comes once, in order, however the batches cut the ties
    assert ids == ["p0", "p1", "p2", "p3", "p4", "q"]
    assert await reader.count_posts(window) == 6
    first = (await reader.read_posts(window, None, 1))[0]
    assert set(first) == {"_id", "author_id", "text", "created_at"}


async def test_posts_sharing_a_created_at_are_all_read_whatever_the_types_of_their_ids() -> None:
    # Given posts of one millisecond whose _ids are of three types (BSON: numbers < strings < ObjectIds)
    d = db()
    oid = ObjectId()
    ids: list[Any] = [7, 42, "a", "b", oid]
    await d.posts.insert_many([{"_id": i, "author_id": "a", "created_at": T0} for i in ids])

    # When read one at a time
    got = await read_all(MongoPostReader(d.posts), Window("created_at", T0, T0), 1)

    # Then each is read once, in BSON order, none skipped at a change of type
    assert got == ids


async def test_an_id_window_is_read_by_id() -> None:
    d = db()
    oids = sorted(ObjectId() for _ in range(6))
    await d.posts.insert_many([{"_id": o, "author_id": "a"} for o in oids])
    ids = await read_all(MongoPostReader(d.posts), Window("_id", oids[1], oids[4]), 2)
    assert ids == oids[1:5]


@pytest.mark.parametrize("field", ["created_at", "_id"])
async def test_soft_deleted_posts_are_left_out_of_a_window(field: str) -> None:
    # Given posts of a window, one soft-deleted since (its delete is not replayed by a backfill)
    d = db()
    await d.posts.insert_many(
        [
            {"_id": "p1", "author_id": "a", "created_at": T0},
            {"_id": "p2", "author_id": "a", "created_at": T0, "deleted_at": T0},
            {"_id": "p3", "author_id": "a", "created_at": T0, "deleted_at": None},
        ]
    )
    window = Window(field, T0, T0) if field == "created_at" else Window("_id", "p1", "p3")
    # When read with the soft-delete field configured, Then the deleted one is neither read nor counted
    reader = MongoPostReader(d.posts, "deleted_at")
    assert await read_all(reader, window, 1) == ["p1", "p3"]
    assert await reader.count_posts(window) == 2
    # and without one, every post is read as before
    assert await read_all(MongoPostReader(d.posts), window, 1) == ["p1", "p2", "p3"]


async def test_profiles_are_read_by_id_after_a_position_skipping_malformed_ones() -> None:
    d = db()
    await d.profiles.insert_many(
        [
            {"_id": "u1", "username": "u1", "display_name": "U1", "version": 2},
            {"_id": "u2", "username": 7},  # malformed
            {"_id": "u3", "username": "u3", "display_name": "U3", "version": 1},
            {"_id": 42, "username": "n"},  # not a user id
        ]
    )
    reader = MongoProfileReader(d.profiles)
    snaps, last = await reader.profiles_after(None, 2)
    assert [s.user_id for s in snaps] == ["u1"] and last == "u2"
    snaps, last = await reader.profiles_after(last, 2)
    assert [s.user_id for s in snaps] == ["u3"] and last == "u3"
    assert await reader.profiles_after(last, 2) == ([], None)
    assert await reader.count_profiles() == 3


async def test_a_run_state_round_trips_with_its_bson_position() -> None:
    d = db()
    runs = MongoRunStore(d.fanout_backfills)
    assert await runs.load_run("k") is None
    oid = ObjectId()
    await runs.save_run(RunState("k", Position(T0, oid), False, {"posts": 3}))
    state = await runs.load_run("k")
    assert state is not None
    assert state.position == Position(T0, oid) and state.counts == {"posts": 3} and not state.done
    await runs.save_run(RunState("k", Position(T0, oid), True, {"posts": 4}))
    again = await runs.load_run("k")
    assert again is not None and again.done and again.counts == {"posts": 4}


async def test_gaps_recorded_by_the_checkpoint_store_are_listed_with_ids_and_marked() -> None:
    d = db()
    await MongoCheckpointStore(d.fanout_checkpoints, d.fanout_gaps).record_gap(
        Gap("posts", T0, T0 + timedelta(minutes=5), "history lost (code 286)")
    )
    ledger = MongoGapLedger(d.fanout_gaps)
    [record] = await ledger.gap_records()
    assert record.gap.start == T0 and record.backfilled_at is None
    await ledger.mark_backfilled(record.id, {"posts": 2, "jobs": 2})
    [marked] = await ledger.gap_records()
    assert marked.backfilled_at is not None and marked.counts == {"posts": 2, "jobs": 2}


async def test_dead_letters_written_by_the_tailer_are_found_replayed_and_purged() -> None:
    # Given dead letters as MongoDeadLetters writes them (one written before replays existed)
    d = db()
    writer = MongoDeadLetters(d.fanout_dead_letters)
    event = {"_id": {"_data": "82AA"}, "operationType": "insert", "fullDocument": {"_id": ObjectId(), "n": 1}}
    await writer.put("posts", event["_id"], event, "InvalidEvent: author_id must be a non-empty string")
    await writer.put("profiles", {"_data": "x"}, {"operationType": "update"}, "TimeoutError: slow")
    await d.fanout_dead_letters.insert_one(
        {
            "stream": "posts",
            "error": "cut",
            "event": json_util.dumps(event)[:10],
            "event_truncated": True,
            "at": T0,
        }
    )
    archive = MongoDeadLetterArchive(d.fanout_dead_letters)

    # Then they read back, the event as it was stored (BSON types kept), the cut one as unreadable
    posts = await archive.find(DeadLetterFilter(stream="posts"), 10)
    assert [p.error for p in posts] == ["cut", "InvalidEvent: author_id must be a non-empty string"]
    assert posts[0].event is None and posts[0].truncated
    assert posts[1].event == event
    assert [p.stream for p in await archive.find(DeadLetterFilter(reason="TIMEOUTERROR"), 10)] == ["profiles"]
    assert await archive.count(DeadLetterFilter(since=T0 + timedelta(seconds=1))) == 2
    assert await archive.count(DeadLetterFilter(replayed=False)) == 3

    await archive.mark_replayed(posts[1].id, datetime.now(UTC))
    [replayed] = await archive.find(DeadLetterFilter(replayed=True), 10)
    assert replayed.id == posts[1].id and replayed.replays == 1
    assert [p.id for p in await archive.find(DeadLetterFilter(ids=(posts[1].id,)), 10)] == [posts[1].id]

    assert await archive.purge(DeadLetterFilter(stream="posts")) == 2
    assert await archive.count(DeadLetterFilter()) == 1


async def test_dead_letters_edited_by_hand_into_nonsense_read_as_unreadable_never_as_a_crash() -> None:
    # Given stored dead letters whose event is not Extended JSON we can read, or whose count is junk
    d = db()
    for raw in ('{"$oid": "zz"}', '{"$binary": 5}', "not json"):
        await d.fanout_dead_letters.insert_one({"stream": "posts", "error": "x", "event": raw, "at": T0})
    await d.fanout_dead_letters.insert_one(
        {"stream": "posts", "error": "x", "event": "{}", "at": T0, "replays": "x", "replayed_at": T0}
    )
    # When they are listed, Then every one reads back: the event unreadable, the count 0
    found = await MongoDeadLetterArchive(d.fanout_dead_letters).find(DeadLetterFilter(), 10)
    assert [f.event for f in found] == [None, None, None, {}]
    assert [f.replays for f in found] == [0, 0, 0, 0]
