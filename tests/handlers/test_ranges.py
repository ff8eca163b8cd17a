"""Range planning: FollowerGraph.range_bounds and bounded follower_pages (the in-memory twin and the
Mongo adapter on mongomock-motor, which must agree), the planner, and one range's fan-out."""

from __future__ import annotations

import itertools
import random
from typing import Any

import orjson
import pytest
from mongomock_motor import AsyncMongoMockClient

from enrichment.errors import PublishFailed
from handlers.contract import encode_head
from handlers.jobs import FanoutJob, FollowerRange
from handlers.ports import OutgoingMessage
from handlers.range_fanout import fan_out_range
from handlers.ranges import RangePlanner
from worker.memory.publisher import MemoryPublisher
from worker.memory.stores import MemoryFollowerGraph
from worker.mongo.stores import MongoFollowerGraph


async def pages(graph: Any, user: str, rng: FollowerRange) -> list[str]:
    return [f async for page in graph.follower_pages(user, rng.after, rng.until) for f in page]


class RecordingCollection:
    """Passes ``find`` through, recording filter and projection and how many documents came back."""

    def __init__(self, coll: Any) -> None:
        self._coll = coll
        self.finds: list[tuple[Any, Any]] = []

    def find(self, *args: Any, **kwargs: Any) -> Any:
        self.finds.append((args[0], args[1] if len(args) > 1 else kwargs.get("projection")))
        return self._coll.find(*args, **kwargs)


async def mongo_graph(edges: dict[str, list[Any]]) -> tuple[MongoFollowerGraph, RecordingCollection]:
    coll = AsyncMongoMockClient()["social"]["follows"]
    await coll.create_index([("followee_id", 1), ("follower_id", 1)])
    docs = [{"followee_id": u, "follower_id": f} for u, fs in edges.items() for f in fs]
    if docs:
        await coll.insert_many(docs)
    recording = RecordingCollection(coll)
    return MongoFollowerGraph(recording, batch_size=7), recording  # type: ignore[arg-type]


def memory_graph(edges: dict[str, list[str]]) -> MemoryFollowerGraph:
    graph = MemoryFollowerGraph(page_size=7)
    for user, followers in edges.items():
        graph.set_followers(user, list(followers))
    return graph


def graph_data(seed: int) -> list[str]:
    rng = random.Random(seed)
    ids = [f"u{rng.randrange(10_000):05d}" for _ in range(rng.randrange(0, 120))]
    return ids + rng.sample(ids, k=min(len(ids), 10))  # repeated follow edges, as a collection allows


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("range_size", [1, 3, 10, 50, 500])
async def test_ranges_cover_every_follower_once_and_the_mongo_adapter_agrees_with_the_twin(
    seed: int, range_size: int
) -> None:
    followers = graph_data(seed)
    memory = memory_graph({"a": followers, "b": ["u00001"]})
    mongo, _ = await mongo_graph({"a": followers, "b": ["u00001"]})
    planner, mongo_planner = RangePlanner(memory, range_size), RangePlanner(mongo, range_size)

    ranges = await planner.ranges("a")
    assert ranges == await mongo_planner.ranges("a")

    # contiguous keyset ranges: the first and last open, each starting where the previous ended
    assert ranges[0].after is None and ranges[-1].until is None
    assert all(a.until == b.after for a, b in itertools.pairwise(ranges))
    # each range holds at most range_size edges plus the repeats of its last id, and is never empty
    per_range = [await pages(memory, "a", r) for r in ranges]
    assert per_range == [await pages(mongo, "a", r) for r in ranges]
    assert sorted(f for chunk in per_range for f in chunk) == sorted(followers)
    assert all(chunk for chunk in per_range) or followers == []
    assert all(len(set(chunk)) <= range_size for chunk in per_range)
    expected = max(1, -(-len(followers) // range_size)) if len(set(followers)) == len(followers) else None
    if expected is not None:
        assert len(ranges) == expected


async def test_range_bounds_read_follower_ids_only_through_the_index_one_small_query_at_a_time() -> None:
    mongo, recording = await mongo_graph({"a": [f"u{i:04d}" for i in range(1000)] + [42]})
    bounds = [b async for b in mongo.range_bounds("a", 100)]
    assert bounds == [f"u{i:04d}" for i in range(99, 900, 100)]
    for filter_, projection in recording.finds:
        # a covered query: filtered and sorted on the index's keys, projecting only follower_id
        assert set(filter_) == {"followee_id", "follower_id"}
        assert projection == {"follower_id": 1, "_id": 0}
    # two queries per range (its end, then "is there anything after it"), each returning one id at most
    assert len(recording.finds) == 2 * (len(bounds) + 1)  # + the last range's end, with nothing after


async def test_a_bounded_range_is_string_ids_only_and_open_sides_read_everything() -> None:
    mongo, _ = await mongo_graph({"a": ["u1", "u2", "u3", 42]})
    assert await pages(mongo, "a", FollowerRange("u1", "u2")) == ["u2"]
    assert await pages(mongo, "a", FollowerRange("u2", None)) == ["u3"]
    assert await pages(mongo, "a", FollowerRange()) == ["u1", "u2", "u3"]  # 42 skipped as before


async def test_a_post_that_fits_one_range_is_one_ordinary_job_and_a_larger_one_bulk_ranges() -> None:
    graph = memory_graph({"small": [f"s{i}" for i in range(10)], "big": [f"b{i:03d}" for i in range(25)]})
    planner = RangePlanner(graph, range_size=10)
    head = encode_head("p1", "small", None, "", None)

    [small] = await planner.plan("p1", "small", head)
    assert (small.lane, small.range, small.range_index, small.range_count) == (
        "ordinary",
        FollowerRange(),
        0,
        1,
    )

    big = await planner.plan("p2", "big", encode_head("p2", "big", None, "", None))
    assert [j.lane for j in big] == ["bulk"] * 3
    assert [(j.range_index, j.range_count) for j in big] == [(0, 3), (1, 3), (2, 3)]
    assert [j.range for j in big] == [
        FollowerRange(None, "b009"),
        FollowerRange("b009", "b019"),
        FollowerRange("b019", None),
    ]
    assert (planner.stats.posts, planner.stats.ordinary_jobs, planner.stats.bulk_jobs) == (2, 1, 3)


def job_for(author: str, rng: FollowerRange | None = None, index: int = 0, count: int = 1) -> FanoutJob:
    head = encode_head("p1", author, None, "hi", None)
    lane = "ordinary" if count == 1 else "bulk"
    return FanoutJob("post.created", "p1", author, head, rng or FollowerRange(), index, count, lane)


async def test_a_range_fan_out_sends_each_recipient_once_never_the_author_in_chunks() -> None:
    # Given followers with repeated edges across page boundaries (pages of 7) and the author among them
    followers = [f"f{i:02d}" for i in range(20)] + ["f06", "f07", "f07", "a", "f13"]
    graph = memory_graph({"a": followers})
    publisher = MemoryPublisher()

    result = await fan_out_range(job_for("a"), graph, publisher, chunk_size=6)

    bodies = [orjson.loads(m.body) for m in publisher.messages]
    recipients = [r for b in bodies for r in b["recipients"]]
    assert recipients == [f"f{i:02d}" for i in range(20)]
    assert [m.message_id for m in publisher.messages] == [f"post:p1:range:0:chunk:{n}" for n in range(4)]
    assert [b["chunk"] for b in bodies][-1] == {"index": 3, "last": True}
    assert not any(b["chunk"]["last"] for b in bodies[:-1])
    assert (result.chunks, result.recipients) == (4, 20)


async def test_only_the_range_is_fanned_out() -> None:
    graph = memory_graph({"a": [f"f{i:02d}" for i in range(20)]})
    publisher = MemoryPublisher()
    await fan_out_range(job_for("a", FollowerRange("f04", "f09"), 1, 3), graph, publisher, chunk_size=100)
    [message] = publisher.messages
    assert orjson.loads(message.body)["recipients"] == ["f05", "f06", "f07", "f08", "f09"]
    assert message.message_id == "post:p1:range:1:chunk:0"


async def test_an_emptied_range_of_a_split_post_still_says_it_is_done_but_a_lone_one_sends_nothing() -> None:
    graph = memory_graph({"a": ["f1"]})
    publisher = MemoryPublisher()
    await fan_out_range(job_for("a", FollowerRange("f5", None), 2, 3), graph, publisher, chunk_size=10)
    [message] = publisher.messages
    assert orjson.loads(message.body)["recipients"] == []
    assert orjson.loads(message.body)["chunk"] == {"index": 0, "last": True}

    alone = MemoryPublisher()
    await fan_out_range(job_for("nobody"), graph, alone, chunk_size=10)
    assert alone.messages == []


class FailingPublisher(MemoryPublisher):
    async def send(self, message: OutgoingMessage) -> Any:
        future = await super().send(message)
        if len(self.messages) == 2:
            future = future.get_loop().create_future()
            future.set_exception(PublishFailed("nacked"))
        return future


async def test_a_failed_confirm_fails_the_range_and_stops_reading_followers() -> None:
    graph = memory_graph({"a": [f"f{i:03d}" for i in range(500)]})
    publisher = FailingPublisher()
    with pytest.raises(PublishFailed):
        await fan_out_range(job_for("a"), graph, publisher, chunk_size=5)
    assert len(publisher.messages) < 100
