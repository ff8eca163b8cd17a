"""Bounded memory: fanning out to 1,000,000 followers costs no more than fanning out to 10,000."""

from __future__ import annotations

import gc
import tracemalloc

import pytest

from enrichment.cache import LayeredCache
from enrichment.memory import MemoryLayer
from handlers.events import NewPost
from tests.harness import post_handler
from worker.memory.db import MemoryDatabase
from worker.memory.publisher import MemoryPublisher
from worker.memory.stores import MemoryFollowerGraph, MemoryPostStore, MemoryProfileSource

BOUND = 8 * 1024 * 1024  # bytes of growth allowed during one fan-out, whatever the follower count


async def _peak_growth(followers: int) -> tuple[int, int]:
    db = MemoryDatabase()
    db.insert("profiles", {"_id": "star", "username": "star", "display_name": "Star", "version": 1})
    graph = MemoryFollowerGraph(page_size=1000)
    graph.set_followers("star", [f"f{i:08d}" for i in range(followers)])
    # Counts only, like a broker would: nothing published is kept in this process.
    publisher = MemoryPublisher(window=64, keep=False)
    cache = LayeredCache(MemoryLayer(10, 60, 10), None, MemoryProfileSource(db))
    handler = post_handler(cache, MemoryPostStore(db), graph, publisher, chunk_size=1000)
    results: list[BaseException | None] = [None]
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        await handler.handle_batch([NewPost("p1", "star", "hello", None)], results.__setitem__)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert results == [None]
    assert handler.stats.recipients == followers
    return peak - base, publisher.stats.confirmed


@pytest.mark.timeout(120)
async def test_celebrity_fan_out_memory_does_not_grow_with_followers() -> None:
    small, small_messages = await _peak_growth(10_000)
    large, large_messages = await _peak_growth(1_000_000)
    assert (small_messages, large_messages) == (10, 1000)
    assert large < BOUND, f"1M-follower fan-out grew {large / 2**20:.1f} MB"
    # 100x the followers must not mean noticeably more memory: one chunk and a window in flight.
    assert large < small * 2 + 256 * 1024, (small, large)


async def _range_peak_growth(followers: int) -> int:
    from handlers.contract import encode_head
    from handlers.jobs import FanoutJob, FollowerRange
    from handlers.range_fanout import fan_out_range

    graph = MemoryFollowerGraph(page_size=1000)
    graph.set_followers("star", [f"f{i:08d}" for i in range(followers)])
    job = FanoutJob(
        "post.created",
        "p1",
        "star",
        encode_head("p1", "star", None, "hi", None),
        FollowerRange(),
        0,
        1,
        "bulk",
    )
    publisher = MemoryPublisher(window=64, keep=False)
    gc.collect()
    tracemalloc.start()
    try:
        base, _ = tracemalloc.get_traced_memory()
        result = await fan_out_range(job, graph, publisher, chunk_size=1000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert result.recipients == followers
    return peak - base


async def test_a_fan_out_job_holds_a_page_and_a_chunk_never_its_range() -> None:
    small = await _range_peak_growth(10_000)
    large = await _range_peak_growth(300_000)
    # A copy of 300,000 follower ids alone would be 2.4 MB of pointers: flat means far less growth.
    assert large < small * 2 + 256 * 1024, (small, large)
