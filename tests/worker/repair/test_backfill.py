"""The backfill loop, snapshot repair and replay on the in-memory stand-ins: the live posts handler
(jobs run inline) publishing to an in-memory publisher."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from bson import ObjectId

from enrichment.cache import LayeredCache
from enrichment.memory import MemoryLayer
from handlers.events import ChangeEvent
from handlers.ports import OutgoingMessage
from tests.harness import World, handle_events, post_handler
from worker.memory.publisher import MemoryPublisher
from worker.memory.repair import MemoryPostReader, MemoryProfileReader, MemoryRunStore
from worker.repair.backfill import PostBackfill, dry_run
from worker.repair.pace import LanePublisher, TokenBucket
from worker.repair.ports import Window
from worker.repair.snapshots import SnapshotRepair

T0 = datetime(2026, 1, 1, tzinfo=UTC)
FOLLOWERS = {"a1": ["f1", "f2", "f3"], "a2": ["f2", "f4"]}


class Killed(BaseException):
    """Stands for SIGKILL: nothing after it runs, nothing catches it."""


def world() -> World:
    w = World()
    for author, followers in FOLLOWERS.items():
        w.add_user(author)
        for f in followers:
            w.graph.add(f, author)
    return w


def add_posts(w: World, prefix: str, n: int, start: datetime) -> list[dict[str, Any]]:
    docs = []
    for i in range(n):
        doc = {
            "_id": f"{prefix}{i:03d}",
            "author_id": f"a{1 + i % 2}",
            "text": f"{prefix} {i}",
            "created_at": start + timedelta(seconds=i),
        }
        w.db.insert("posts", doc)
        docs.append(doc)
    return docs


def cache(w: World) -> LayeredCache:
    return LayeredCache(MemoryLayer(1000, 60, 10), None, w.source)


def backfill(w: World, publisher: Any, runs: MemoryRunStore, batch: int = 4) -> PostBackfill:
    handler = post_handler(cache(w), w.posts, w.graph, publisher, chunk_size=1000)
    return PostBackfill(
        MemoryPostReader(w.db), runs, handler, w.dead, batch, max_attempts=2, retry_max_seconds=0.01
    )


async def live_messages(w: World, docs: list[dict[str, Any]]) -> dict[str, bytes]:
    """What live handling publishes for ``docs``: their insert events through the posts handler."""
    publisher = MemoryPublisher()
    handler = post_handler(cache(w), w.posts, w.graph, publisher, chunk_size=1000)
    events = [
        ChangeEvent.from_raw(
            "posts", {"_id": {"_data": str(i)}, "operationType": "insert", "fullDocument": doc}
        )
        for i, doc in enumerate(docs)
    ]
    assert await handle_events(handler, events) == [None] * len(docs)
    return {m.message_id: m.body for m in publisher.messages}


def by_id(messages: list[OutgoingMessage]) -> dict[str, bytes]:
    return {m.message_id: m.body for m in messages}


async def test_a_window_is_fanned_out_exactly_with_the_ids_and_bytes_live_handling_gives() -> None:
    # Given posts before, inside and after a window of created_at
    w = world()
    before = add_posts(w, "b", 3, T0)
    inside = add_posts(w, "i", 10, T0 + timedelta(hours=1))
    add_posts(w, "z", 3, T0 + timedelta(hours=2))
    window = Window("created_at", T0 + timedelta(hours=1), T0 + timedelta(hours=1, seconds=9))
    publisher, runs = MemoryPublisher(), MemoryRunStore()

    # When the window is backfilled in batches of 4
    state = await backfill(w, publisher, runs).run("time:w", window)

    # Then exactly the window's posts went out, each once, under live handling's ids and bytes
    expected = await live_messages(w, inside)
    assert by_id(publisher.messages) == expected
    assert len(publisher.messages) == len(expected)
    assert {m.correlation_id for m in publisher.messages} == {d["_id"] for d in inside}
    assert not {d["_id"] for d in before} & {m.correlation_id for m in publisher.messages}
    assert state.done and state.counts["posts"] == 10 and state.counts["invalid"] == 0
    assert state.counts["jobs"] == 10
    assert runs.saves == 4  # three batches (4 + 4 + 2) and the end


async def test_a_backfill_killed_halfway_resumes_from_its_checkpoint_losing_nothing() -> None:
    # Given a backfill killed mid-batch, after some of its posts were published
    w = world()
    docs = add_posts(w, "p", 12, T0)
    window = Window("created_at", T0, T0 + timedelta(hours=1))
    runs = MemoryRunStore()
    sent: list[OutgoingMessage] = []

    class KilledAfter(MemoryPublisher):
        async def send(self, message: OutgoingMessage) -> Any:
            if len(sent) == 6:
                raise Killed
            sent.append(message)
            return await super().send(message)

    with pytest.raises(Killed):
        await backfill(w, KilledAfter(), runs).run("time:w", window)
    saved = runs.runs["time:w"]
    assert not saved.done and saved.position is not None

    # When it runs again
    publisher = MemoryPublisher()
    state = await backfill(w, publisher, runs).run("time:w", window)

    # Then every post went out; the replayed ones under the same ids, with the same bytes
    expected = await live_messages(w, docs)
    everything = sent + publisher.messages
    assert {m.message_id for m in everything} == set(expected)
    assert all(expected[m.message_id] == m.body for m in everything)
    assert len(everything) > len(expected)  # the killed batch replayed: same-id duplicates only
    assert state.done


async def test_a_finished_run_is_not_repeated_unless_restarted() -> None:
    w = world()
    add_posts(w, "p", 3, T0)
    window = Window("created_at", T0, T0 + timedelta(minutes=1))
    runs = MemoryRunStore()
    await backfill(w, MemoryPublisher(), runs).run("k", window)

    again = MemoryPublisher()
    state = await backfill(w, again, runs).run("k", window)
    assert state.done and again.messages == []

    restarted = MemoryPublisher()
    await backfill(w, restarted, runs).run("k", window, restart=True)
    assert len(restarted.messages) == 3


async def test_invalid_posts_are_dead_lettered_with_the_reason_and_the_rest_go_on() -> None:
    # Given a window holding a post without an author
    w = world()
    add_posts(w, "p", 3, T0)
    w.db.insert("posts", {"_id": "bad", "text": "x", "created_at": T0 + timedelta(seconds=1, milliseconds=1)})
    publisher, runs = MemoryPublisher(), MemoryRunStore()

    state = await backfill(w, publisher, runs).run("k", Window("created_at", T0, T0 + timedelta(minutes=1)))

    assert state.counts["posts"] == 3 and state.counts["invalid"] == 1
    assert len(w.dead.items) == 1
    assert "author_id" in w.dead.items[0]["error"]
    assert w.dead.items[0]["event"]["fullDocument"]["_id"] == "bad"


async def test_an_id_window_reads_by_id_in_order() -> None:
    w = world()
    ids = [ObjectId() for _ in range(5)]
    for i, oid in enumerate(ids):
        w.db.insert("posts", {"_id": oid, "author_id": "a1", "text": str(i)})
    publisher = MemoryPublisher()

    state = await backfill(w, publisher, MemoryRunStore(), batch=2).run("ids", Window("_id", ids[1], ids[3]))

    assert {m.correlation_id for m in publisher.messages} == {str(i) for i in ids[1:4]}
    assert state.counts["posts"] == 3


async def test_dry_run_counts_and_samples_without_publishing() -> None:
    w = world()
    add_posts(w, "p", 7, T0)
    count, first = await dry_run(MemoryPostReader(w.db), Window("created_at", T0, T0 + timedelta(hours=1)), 3)
    assert count == 7
    assert [d["_id"] for d in first] == ["p000", "p001", "p002"]


async def test_jobs_through_the_lane_publisher_all_go_to_its_lane_unchanged() -> None:
    w = world()
    docs = add_posts(w, "p", 2, T0)
    jobs = MemoryPublisher()
    lane = LanePublisher(jobs, "backfill")
    message = OutgoingMessage("bulk", "job:p000:range:0", "p000", b"{}")
    await lane.send(message)
    assert jobs.messages == [OutgoingMessage("backfill", "job:p000:range:0", "p000", b"{}")]
    assert lane.stats is jobs.stats
    assert docs


async def test_token_bucket_spends_its_burst_then_waits_at_the_rate() -> None:
    now = [0.0]
    slept: list[float] = []

    async def sleep(seconds: float) -> None:
        slept.append(seconds)
        now[0] += seconds

    bucket = TokenBucket(rate=10, burst=5, clock=lambda: now[0], sleep=sleep)
    await bucket.take(5)
    assert slept == []
    await bucket.take(10)  # ten more at 10/s
    assert slept == [pytest.approx(1.0)]
    now[0] += 0.5
    await bucket.take(5)  # half a second refilled five
    assert slept == [pytest.approx(1.0)]


async def test_snapshot_repair_brings_posts_to_the_current_version_and_never_lowers_one() -> None:
    # Given posts with no snapshot, an old one, and one newer than the profile (a cascade ran ahead)
    w = world()
    w.edit_user("a1")
    w.edit_user("a1")  # a1 is at version 3
    for post_id in ("none", "old", "newer", "current"):
        w.db.insert("posts", {"_id": post_id, "author_id": "a1", "text": post_id})
    w.db.update("posts", "old", {"author_snapshot": {"user_id": "a1", "version": 1, "username": "x"}})
    w.db.update("posts", "newer", {"author_snapshot": {"user_id": "a1", "version": 9, "username": "y"}})
    w.db.update("posts", "current", {"author_snapshot": {"user_id": "a1", "version": 3, "username": "a1"}})
    w.db.insert("posts", {"_id": "other", "author_id": "a2", "text": "t"})
    runs = MemoryRunStore()

    # When the snapshots are repaired, one profile per batch
    state = await SnapshotRepair(MemoryProfileReader(w.db), w.posts, runs, 1, 4).run()

    # Then every post holds its author's current snapshot, except the newer one, left as it was
    posts = w.db.collection("posts")
    assert posts["none"]["author_snapshot"]["version"] == 3
    assert posts["old"]["author_snapshot"]["version"] == 3
    assert posts["old"]["author_snapshot"]["username"] == "a1"
    assert posts["newer"]["author_snapshot"] == {"user_id": "a1", "version": 9, "username": "y"}
    assert posts["current"]["author_snapshot"]["username"] == "a1"
    assert posts["other"]["author_snapshot"]["version"] == 1
    assert state.done and state.counts == {"profiles": 2, "posts_rewritten": 3}


async def test_snapshot_repair_resumes_after_the_last_profile_done() -> None:
    w = world()
    for author in ("a1", "a2"):
        w.db.insert("posts", {"_id": f"p-{author}", "author_id": author, "text": "t"})

    class KilledOnSecond(MemoryProfileReader):
        calls = 0

        async def profiles_after(self, after: str | None, limit: int) -> Any:
            KilledOnSecond.calls += 1
            if KilledOnSecond.calls == 2:
                raise Killed
            return await super().profiles_after(after, limit)

    runs = MemoryRunStore()
    with pytest.raises(Killed):
        await SnapshotRepair(KilledOnSecond(w.db), w.posts, runs, 1, 4).run()
    assert runs.runs["snapshots"].position is not None
    assert runs.runs["snapshots"].position.id == "a1"

    state = await SnapshotRepair(MemoryProfileReader(w.db), w.posts, runs, 1, 4).run()
    assert state.counts == {"profiles": 2, "posts_rewritten": 2}
    assert all("author_snapshot" in p for p in w.db.collection("posts").values())


async def test_the_in_memory_reader_leaves_soft_deleted_posts_out_like_the_mongodb_one() -> None:
    w = world()
    for n, deleted in enumerate((None, T0, None)):
        w.db.insert("posts", {"_id": f"p{n}", "author_id": "a", "created_at": T0, "deleted_at": deleted})
    window = Window("created_at", T0, T0)
    reader = MemoryPostReader(w.db, soft_delete_field="deleted_at")
    assert [d["_id"] for d in await reader.read_posts(window, None, 10)] == ["p0", "p2"]
    assert await reader.count_posts(window) == 2
    assert len(await MemoryPostReader(w.db).read_posts(window, None, 10)) == 3
