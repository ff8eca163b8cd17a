"""Within one fan-out process the ordinary lane goes first, and the bulk lane never starves."""

from __future__ import annotations

import asyncio

from handlers.ports import OutgoingMessage
from worker.fanout.priority import LanePriority, YieldingPublisher
from worker.memory.publisher import MemoryPublisher


def chunk(n: int) -> OutgoingMessage:
    return OutgoingMessage("post.created", f"m{n}", "p", b"{}")


async def test_a_bulk_chunk_goes_at_once_while_no_ordinary_job_is_in_hand() -> None:
    priority = LanePriority(max_wait_seconds=10.0)
    bulk = YieldingPublisher(inner := MemoryPublisher(), priority)
    await asyncio.wait_for(await bulk.send(chunk(1)), 1.0)
    assert [m.message_id for m in inner.messages] == ["m1"]
    assert priority.yields == 0


async def test_a_bulk_chunk_waits_for_the_ordinary_jobs_in_hand_then_goes() -> None:
    # Given two ordinary jobs in hand
    priority = LanePriority(max_wait_seconds=10.0)
    bulk = YieldingPublisher(inner := MemoryPublisher(), priority)
    first, second = priority.ordinary_job(), priority.ordinary_job()
    first.__enter__()
    second.__enter__()
    # When a bulk chunk is sent, Then it waits while either is in hand
    sending = asyncio.create_task(bulk.send(chunk(1)))
    await asyncio.sleep(0.05)
    first.__exit__(None, None, None)
    await asyncio.sleep(0.05)
    assert not sending.done() and inner.messages == []
    # and goes once the lane is idle
    second.__exit__(None, None, None)
    await asyncio.wait_for(await asyncio.wait_for(sending, 1.0), 1.0)
    assert [m.message_id for m in inner.messages] == ["m1"]
    assert priority.yields == 1


async def test_under_a_steady_ordinary_load_the_bulk_lane_slows_down_but_still_goes() -> None:
    # Given an ordinary job that never ends
    priority = LanePriority(max_wait_seconds=0.02)
    bulk = YieldingPublisher(inner := MemoryPublisher(), priority)
    with priority.ordinary_job():
        # When the bulk lane sends three chunks, Then each waited its turn and all went
        for n in range(3):
            await asyncio.wait_for(bulk.send(chunk(n)), 1.0)
    assert len(inner.messages) == 3
    assert priority.yields == 3
