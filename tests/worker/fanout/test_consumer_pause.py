"""A lane of several queues (the bulk shards) pauses and resumes whole, whatever the interleaving."""

from __future__ import annotations

import asyncio
from typing import Any

from worker.fanout.consumer import FanoutConsumer
from worker.memory.publisher import MemoryPublisher
from worker.memory.stores import MemoryFollowerGraph
from worker.settings import FanoutSettings


class FakeQueue:
    """A queue whose basic.consume answers only when ``gate`` is set (a slow broker)."""

    def __init__(self, name: str, gate: asyncio.Event) -> None:
        self.name, self.gate = name, gate
        self.consumers: set[str] = set()
        self._n = 0

    async def consume(self, callback: Any) -> str:
        await self.gate.wait()
        self._n += 1
        tag = f"{self.name}-{self._n}"
        self.consumers.add(tag)
        return tag

    async def cancel(self, tag: str) -> None:
        self.consumers.discard(tag)


class FakeChannel:
    def __init__(self, gate: asyncio.Event) -> None:
        self.gate, self.is_closed = gate, False
        self.queues: dict[str, FakeQueue] = {}

    async def set_qos(self, prefetch_count: int) -> None:
        return None

    async def get_queue(self, name: str, ensure: bool = True) -> FakeQueue:
        return self.queues.setdefault(name, FakeQueue(name, self.gate))


class FakeConnection:
    def __init__(self, channel: FakeChannel) -> None:
        self._channel = channel

    async def channel(self, **_: Any) -> FakeChannel:
        return self._channel


async def test_a_pause_landing_in_the_middle_of_a_resume_leaves_no_shard_unconsumed() -> None:
    # Given a bulk lane of 4 shards whose consumes answer slowly
    gate = asyncio.Event()
    channel = FakeChannel(gate)
    lane = FanoutConsumer(FanoutSettings(bulk_shards=4), "bulk", MemoryFollowerGraph(), MemoryPublisher(), 10)
    starting = asyncio.create_task(lane.start(FakeConnection(channel)))  # type: ignore[arg-type]
    await asyncio.sleep(0.01)
    # When a pause (a job waiting out MongoDB) lands mid-resume, then a resume (it came back)
    pausing = asyncio.create_task(lane.pause())
    resuming = asyncio.create_task(lane.resume())
    await asyncio.sleep(0.01)
    gate.set()
    await asyncio.gather(starting, pausing, resuming)
    # Then every shard is consumed exactly once: the last request won, whole
    assert sorted(len(q.consumers) for q in channel.queues.values()) == [1, 1, 1, 1]
    # and a pause stops them all
    await lane.pause()
    assert all(not q.consumers for q in channel.queues.values())


async def test_no_shard_is_consumed_again_once_stop_began() -> None:
    gate = asyncio.Event()
    gate.set()
    channel = FakeChannel(gate)
    lane = FanoutConsumer(FanoutSettings(bulk_shards=2), "bulk", MemoryFollowerGraph(), MemoryPublisher(), 10)
    await lane.start(FakeConnection(channel))  # type: ignore[arg-type]
    await lane.stop()
    await lane.resume()  # a job's late resume after the stop
    assert all(not q.consumers for q in channel.queues.values())
