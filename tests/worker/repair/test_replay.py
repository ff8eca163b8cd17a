"""Dead-letter replay and the archive's filters, on the in-memory stand-ins."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from handlers.contract import chunk_message_id
from handlers.ports import OutgoingMessage
from tests.harness import post_handler
from tests.worker.repair.test_backfill import cache, world
from worker.memory.publisher import MemoryPublisher
from worker.memory.repair import MemoryDeadLetterArchive
from worker.repair.ports import DeadLetterFilter
from worker.repair.replay import replay


def insert_event(post_id: str, author: str = "a1") -> dict[str, Any]:
    return {
        "_id": {"_data": f"82{post_id}"},
        "operationType": "insert",
        "fullDocument": {"_id": post_id, "author_id": author, "text": "hi"},
    }


class Broken(MemoryPublisher):
    """A publisher whose cause is not fixed yet."""

    async def send(self, message: OutgoingMessage) -> Any:
        raise RuntimeError("broker refused")


async def test_a_dead_letter_replayed_after_its_cause_is_fixed_is_delivered_under_its_ids() -> None:
    # Given two dead-lettered post events and one from another stream
    w = world()
    await w.dead.put("posts", {"_data": "1"}, insert_event("p1"), "RuntimeError: broker refused")
    await w.dead.put("posts", {"_data": "2"}, insert_event("p2", "a2"), "RuntimeError: broker refused")
    await w.dead.put("profiles", {"_data": "3"}, {"_id": {"_data": "3"}, "operationType": "update"}, "other")
    archive = MemoryDeadLetterArchive(w.dead)

    # When replayed while the cause is still there, nothing is marked
    broken = {"posts": post_handler(cache(w), w.posts, w.graph, Broken(), 1000)}
    outcome = await replay(archive, broken, DeadLetterFilter(stream="posts", replayed=False), 10, 2, 0.01)
    assert outcome.replayed == [] and set(outcome.failed) == {"0", "1"}
    assert await archive.count(DeadLetterFilter(replayed=True)) == 0

    # When replayed once the cause is fixed
    publisher = MemoryPublisher()
    fixed = {"posts": post_handler(cache(w), w.posts, w.graph, publisher, 1000)}
    outcome = await replay(archive, fixed, DeadLetterFilter(stream="posts", replayed=False), 10, 2, 0.01)

    # Then each is delivered under its deterministic ids, and marked replayed
    assert outcome.replayed == ["0", "1"]
    assert sorted(m.message_id for m in publisher.messages) == [
        chunk_message_id("p1", 0, 0),
        chunk_message_id("p2", 0, 0),
    ]
    replayed = await archive.find(DeadLetterFilter(replayed=True), 10)
    assert [(d.id, d.replays) for d in replayed] == [("0", 1), ("1", 1)]
    assert all(d.replayed_at is not None for d in replayed)
    # And a second replay by filter finds nothing left to do
    again = await replay(archive, fixed, DeadLetterFilter(stream="posts", replayed=False), 10, 2, 0.01)
    assert again.replayed == [] and again.failed == {}


async def test_a_dead_letter_of_a_stream_without_a_handler_is_reported_not_marked() -> None:
    w = world()
    await w.dead.put("elsewhere", {"_data": "1"}, insert_event("p1"), "why")
    archive = MemoryDeadLetterArchive(w.dead)
    outcome = await replay(archive, {}, DeadLetterFilter(), 10, 2, 0.01)
    assert "no handler" in outcome.failed["0"]
    assert await archive.count(DeadLetterFilter(replayed=False)) == 1


async def test_the_archive_filters_by_stream_reason_time_and_state_and_purges() -> None:
    w = world()
    await w.dead.put("posts", {}, insert_event("p1"), "InvalidEvent: author_id must be a string")
    await w.dead.put("profiles", {}, {}, "TimeoutError: slow")
    await w.dead.put("posts", {}, insert_event("p2"), "RuntimeError: broker refused")
    w.dead.items[0]["at"] = datetime.now(UTC) - timedelta(days=2)
    archive = MemoryDeadLetterArchive(w.dead)

    assert [d.id for d in await archive.find(DeadLetterFilter(stream="posts"), 10)] == ["0", "2"]
    assert [d.id for d in await archive.find(DeadLetterFilter(reason="AUTHOR_ID"), 10)] == ["0"]
    since = datetime.now(UTC) - timedelta(days=1)
    assert [d.id for d in await archive.find(DeadLetterFilter(since=since), 10)] == ["1", "2"]
    assert [d.id for d in await archive.find(DeadLetterFilter(ids=("2",)), 10)] == ["2"]

    assert await archive.purge(DeadLetterFilter(stream="posts")) == 2
    assert [d.id for d in await archive.find(DeadLetterFilter(), 10)] == ["1"]
