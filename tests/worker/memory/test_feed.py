"""The in-memory change feed behaves like a change stream: tokens, resume, filters, lookup, history."""

from __future__ import annotations

import asyncio

import pytest

from enrichment.errors import ConfigError, StreamFatal
from handlers.events import ChangeEvent
from worker.memory.db import MemoryDatabase, token_seq
from worker.memory.feed import MemoryChangeCursor, MemoryChangeFeed
from worker.settings import Settings
from worker.streams import POSTS

ALL_OPS = frozenset({"insert", "update", "replace", "delete"})
WAIT = 0.01  # seconds an idle try_next waits


def feed(
    db: MemoryDatabase, collection: str = "posts", ops: frozenset[str] = ALL_OPS, lookup: bool = False
) -> MemoryChangeFeed:
    return MemoryChangeFeed(db, collection, collection, ops, update_lookup=lookup, max_await_seconds=WAIT)


def write_posts(db: MemoryDatabase, *ids: str) -> None:
    for post_id in ids:
        db.insert("posts", {"_id": post_id, "author_id": "a", "text": post_id})


async def drain(cursor: MemoryChangeCursor) -> list[ChangeEvent]:
    out: list[ChangeEvent] = []
    while (ev := await cursor.try_next()) is not None:
        out.append(ev)
    return out


def doc_ids(events: list[ChangeEvent]) -> list[str]:
    return [ev.raw["documentKey"]["_id"] for ev in events]


async def test_tokens_are_opaque_dicts_in_log_order() -> None:
    # Given a stream opened from now, then five inserts
    db = MemoryDatabase()
    async with feed(db).open(None) as cursor:
        write_posts(db, "p1", "p2", "p3", "p4", "p5")
        # When they are read
        events = await drain(cursor)
    # Then each carries a dict token, the one the log holds for it, in log order
    assert doc_ids(events) == ["p1", "p2", "p3", "p4", "p5"]
    assert [ev.token for ev in events] == [raw["_id"] for _, raw in db.log()]
    assert all(isinstance(ev.token, dict) for ev in events)
    seqs = [token_seq(ev.token) for ev in events]
    assert seqs == sorted(seqs)
    assert len(set(seqs)) == 5


async def test_opening_from_now_skips_earlier_history() -> None:
    db = MemoryDatabase()
    write_posts(db, "old1", "old2")
    async with feed(db).open(None) as cursor:
        write_posts(db, "new")
        assert doc_ids(await drain(cursor)) == ["new"]


async def test_resume_token_follows_each_returned_event() -> None:
    db = MemoryDatabase()
    async with feed(db).open(None) as cursor:
        assert cursor.resume_token is None
        write_posts(db, "p1", "p2")
        first = await cursor.try_next()
        assert first is not None
        assert cursor.resume_token == first.token


async def test_resume_after_a_token_continues_exactly_after_it() -> None:
    # Given a stream read part-way through six events
    db = MemoryDatabase()
    ids = [f"p{i}" for i in range(6)]
    async with feed(db).open(None) as cursor:
        write_posts(db, *ids)
        read = [await cursor.try_next() for _ in range(2)]
        token = cursor.resume_token
    assert doc_ids([e for e in read if e is not None]) == ["p0", "p1"]
    # When a new stream resumes after the saved token
    resumed_feed = feed(db)
    async with resumed_feed.open(token) as cursor:
        rest = await drain(cursor)
    # Then it continues with p2: nothing lost, nothing repeated
    assert doc_ids(rest) == ["p2", "p3", "p4", "p5"]
    assert resumed_feed.opened_with == [token]


async def test_the_op_filter_and_collection_filter_apply() -> None:
    # Given a stream of inserts on posts only
    db = MemoryDatabase()
    async with feed(db, ops=frozenset({"insert"})).open(None) as cursor:
        write_posts(db, "p1")
        db.update("posts", "p1", {"text": "edited"})
        db.insert("profiles", {"_id": "u1", "username": "u1", "version": 1})
        db.replace("posts", {"_id": "p1", "author_id": "a", "text": "replaced"})
        db.delete("posts", "p1")
        write_posts(db, "p2")
        # When it is read
        events = await drain(cursor)
    # Then only the two post inserts come through
    assert [(ev.op, ev.raw["ns"]["coll"]) for ev in events] == [("insert", "posts"), ("insert", "posts")]
    assert doc_ids(events) == ["p1", "p2"]


async def test_update_lookup_gives_the_current_document() -> None:
    # Given a profile updated twice before the stream reads the first update
    db = MemoryDatabase()
    lookup = MemoryChangeFeed(
        db, "profiles", "profiles", frozenset({"update"}), update_lookup=True, max_await_seconds=WAIT
    )
    async with lookup.open(None) as cursor:
        db.insert("profiles", {"_id": "u1", "username": "u1", "display_name": "One", "version": 1})
        db.update("profiles", "u1", {"display_name": "Two", "version": 2})
        db.update("profiles", "u1", {"display_name": "Three", "version": 3})
        first = await cursor.try_next()
        second = await cursor.try_next()
    assert first is not None and second is not None
    # Then each update carries its own diff but the document as it is now, like updateLookup
    assert first.raw["updateDescription"]["updatedFields"] == {"display_name": "Two", "version": 2}
    assert first.full_document is not None
    assert first.full_document["display_name"] == "Three"
    assert second.full_document == first.full_document


async def test_without_update_lookup_updates_have_no_full_document() -> None:
    db = MemoryDatabase()
    db.insert("posts", {"_id": "p1", "author_id": "a"})
    async with feed(db, ops=frozenset({"update"})).open(None) as cursor:
        db.update("posts", "p1", {"text": "x"})
        ev = await cursor.try_next()
    assert ev is not None
    assert "fullDocument" not in ev.raw
    assert ev.full_document is None


async def test_update_lookup_of_a_deleted_document_is_none() -> None:
    db = MemoryDatabase()
    lookup = MemoryChangeFeed(
        db, "profiles", "profiles", frozenset({"update"}), update_lookup=True, max_await_seconds=WAIT
    )
    db.insert("profiles", {"_id": "u1", "username": "u1", "version": 1})
    async with lookup.open(None) as cursor:
        db.update("profiles", "u1", {"version": 2})
        db.delete("profiles", "u1")
        ev = await cursor.try_next()
    assert ev is not None
    assert ev.raw["fullDocument"] is None
    assert ev.full_document is None


async def test_the_cursor_returns_a_copy_of_the_logged_event() -> None:
    db = MemoryDatabase()
    async with feed(db).open(None) as cursor:
        write_posts(db, "p1")
        ev = await cursor.try_next()
    assert ev is not None
    ev.raw["fullDocument"]["text"] = "mutated"  # type: ignore[index]
    assert db.log()[-1][1]["fullDocument"]["text"] == "p1"


async def test_an_idle_try_next_returns_none_and_moves_the_token_to_the_end_of_the_log() -> None:
    # Given a posts stream that has read everything of its own, while other collections were written
    db = MemoryDatabase()
    async with feed(db).open(None) as cursor:
        write_posts(db, "p1")
        assert await cursor.try_next() is not None
        for i in range(3):
            db.insert("profiles", {"_id": f"u{i}", "username": f"u{i}", "version": 1})
        # When it finds nothing more
        ev = await cursor.try_next()
        # Then try_next returns None and the resume token is the latest token of the whole log
        assert ev is None
        assert cursor.resume_token == db.last_token
        assert token_seq(cursor.resume_token) == db.position == 4
        assert cursor.getmores >= 1
        idle_token = cursor.resume_token
    # And resuming from that post-batch token sees only what is written afterwards
    write_posts(db, "p2")
    async with feed(db).open(idle_token) as cursor:
        assert doc_ids(await drain(cursor)) == ["p2"]


async def test_an_idle_stream_on_an_empty_database_has_a_token() -> None:
    db = MemoryDatabase()
    async with feed(db).open(None) as cursor:
        assert await cursor.try_next() is None
        assert cursor.resume_token == db.last_token


async def test_a_waiting_try_next_wakes_up_on_a_write() -> None:
    # Given a stream waiting for a long time
    db = MemoryDatabase()
    slow = MemoryChangeFeed(db, "posts", "posts", ALL_OPS, max_await_seconds=30)
    async with slow.open(None) as cursor:
        waiting = asyncio.create_task(cursor.try_next())
        await asyncio.sleep(0)
        # When a write arrives
        write_posts(db, "p1")
        ev = await asyncio.wait_for(waiting, 1)
    # Then it returns that event without waiting for the full await time
    assert ev is not None
    assert doc_ids([ev]) == ["p1"]


async def test_resuming_from_a_trimmed_token_fails_with_code_286() -> None:
    # Given a log capped at 3 entries and a token of its first event
    db = MemoryDatabase(max_log=3)
    async with feed(db).open(None) as cursor:
        write_posts(db, "p1")
        first = await cursor.try_next()
    assert first is not None
    # When many more writes push that event out of the log
    write_posts(db, *(f"q{i}" for i in range(10)))
    assert len(db.log()) == 3
    # Then resuming after it fails as history lost
    with pytest.raises(StreamFatal) as caught:
        async with feed(db).open(first.token) as cursor:
            await cursor.try_next()
    assert caught.value.code == 286
    assert caught.value.stream == "posts"


async def test_resuming_right_before_the_oldest_kept_event_still_works() -> None:
    # Given 5 writes, each read as it happens, in a log capped at 3: events 3, 4, 5 are kept
    db = MemoryDatabase(max_log=3)
    events: list[ChangeEvent] = []
    async with feed(db).open(None) as cursor:
        for i in range(1, 6):
            write_posts(db, f"p{i}")
            events += await drain(cursor)
    assert doc_ids(events) == ["p1", "p2", "p3", "p4", "p5"]
    # When resuming after event 2 (the next one, 3, is still in the log)
    async with feed(db).open(events[1].token) as cursor:
        rest = await drain(cursor)
    # Then the stream continues with nothing lost
    assert doc_ids(rest) == ["p3", "p4", "p5"]
    # But resuming after event 1 fails: event 2 is gone
    with pytest.raises(StreamFatal) as caught:
        async with feed(db).open(events[0].token) as cursor:
            await cursor.try_next()
    assert caught.value.code == 286


async def test_a_live_cursor_that_falls_behind_the_log_fails_with_code_286() -> None:
    # Given a cursor opened from now on a log capped at 3
    db = MemoryDatabase(max_log=3)
    async with feed(db).open(None) as cursor:
        # When 5 writes happen before it reads anything
        write_posts(db, "p1", "p2", "p3", "p4", "p5")
        # Then it cannot silently skip p1 and p2
        with pytest.raises(StreamFatal) as caught:
            await cursor.try_next()
    assert caught.value.code == 286


async def test_a_foreign_token_is_refused() -> None:
    db = MemoryDatabase()
    with pytest.raises(StreamFatal) as caught:
        async with feed(db).open({"_data": "not-ours"}):
            pass
    assert caught.value.code == 280


async def test_pre_images_when_available_and_required_like_mongodb() -> None:
    # Given posts that record pre-images only from the second write on
    db = MemoryDatabase()
    db.insert("posts", {"_id": "p1", "author_id": "a", "text": "one"})
    db.delete("posts", "p1")  # no pre-image recorded
    db.pre_image_collections.add("posts")
    db.insert("posts", {"_id": "p2", "author_id": "b", "text": "two"})
    db.update("posts", "p2", {"text": "deux"})
    db.delete("posts", "p2")
    when_available = MemoryChangeFeed(
        db, "posts", "posts", ALL_OPS, max_await_seconds=WAIT, before_change="whenAvailable"
    )
    # When read with pre-images when available
    async with when_available.open({"_data": f"82{0:016X}"}) as cursor:
        events = await drain(cursor)
    # Then updates and deletes carry them where recorded, null where not; inserts never
    assert [(e.op, e.raw.get("fullDocumentBeforeChange", "absent")) for e in events] == [
        ("insert", "absent"),
        ("delete", None),
        ("insert", "absent"),
        ("update", {"_id": "p2", "author_id": "b", "text": "two"}),
        ("delete", {"_id": "p2", "author_id": "b", "text": "deux"}),
    ]
    # and "required" stops at the delete without one, each time it is met
    required = MemoryChangeFeed(
        db, "posts", "posts", ALL_OPS, max_await_seconds=WAIT, before_change="required"
    )
    async with required.open({"_data": f"82{0:016X}"}) as cursor:
        assert (await cursor.try_next()) is not None
        for _ in range(2):
            with pytest.raises(StreamFatal) as exc:
                await cursor.try_next()
            assert exc.value.code == 47


async def test_required_pre_images_on_a_collection_without_them_is_a_config_error() -> None:
    db = MemoryDatabase()
    required = MemoryChangeFeed(db, "posts", "posts", ALL_OPS, before_change="required")
    with pytest.raises(ConfigError, match=r"social\.posts"):
        await required.check_pre_images()
    db.pre_image_collections.add("posts")
    await required.check_pre_images()


async def test_the_extra_match_keeps_the_workers_own_snapshot_writes_out() -> None:
    # Given a post, the worker's snapshot write into it, and an edit of its text
    db = MemoryDatabase()
    db.insert("posts", {"_id": "p1", "author_id": "a", "text": "one"})
    db.update("posts", "p1", {"author_snapshot": {"version": 1}})
    db.update("posts", "p1", {"text": "two"})
    watch = POSTS.watch(Settings())
    posts = MemoryChangeFeed(
        db, "posts", "posts", frozenset(watch.ops), True, WAIT, watch.fields, watch.before_change, watch.match
    )
    # When the posts feed reads them
    async with posts.open({"_data": f"82{0:016X}"}) as cursor:
        events = await drain(cursor)
    # Then the snapshot write stays out, as MongoDB's $match keeps it on the server
    assert [(e.op, e.raw.get("updateDescription")) for e in events] == [
        ("insert", None),
        ("update", {"updatedFields": {"text": "two"}, "removedFields": []}),
    ]
