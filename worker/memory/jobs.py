"""In-memory stand-in for the RabbitMQ job queues (the demo without RabbitMQ, benchmarks, tests).
NOT RabbitMQ, and not a queue: **inline**. Publishing a job runs it at once — decode, stream the
range's followers, publish the chunks — and its "confirm" completes when every chunk is confirmed.

So the tailer and the fan-out take the same code path as with RabbitMQ (jobs encoded, decoded,
fanned out by range), but without lanes, redelivery or dead-lettering: a failed job fails its
post, which the tailer retries whole, under the same message ids.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from handlers.chunks import ChunkCounts
from handlers.jobs import DEFERRED, decode_job
from handlers.ports import FollowerGraph, OutgoingMessage, Publisher
from handlers.range_fanout import fan_out_range
from worker.ports import PublishStats


@dataclass(slots=True)
class LaneStats:
    jobs: int = 0
    chunks: int = 0
    recipients: int = 0


@dataclass(slots=True)
class InlineStats:
    lanes: dict[str, LaneStats] = field(default_factory=dict)

    def lane(self, name: str) -> LaneStats:
        return self.lanes.setdefault(name, LaneStats())


class InlineJobQueue:
    """A job ``Publisher`` whose every job is fanned out before its publish is confirmed."""

    def __init__(self, graph: FollowerGraph, chunks: Publisher, chunk_size: int, counts: ChunkCounts) -> None:
        if chunk_size < 1:
            raise ValueError("chunk_size must be at least 1")
        self._graph = graph
        self._chunks = chunks
        self._chunk_size = chunk_size
        self._counts = counts
        self.stats = PublishStats()
        self.inline = InlineStats()
        self.in_flight = 0

    async def connect(self) -> None:
        return None

    async def close(self, drain_seconds: float = 0.0) -> None:
        return None

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        job = decode_job(message.body)  # what a fan-out worker would receive
        self.stats.sent += 1
        self.in_flight += 1
        try:
            result = await fan_out_range(job, self._graph, self._chunks, self._chunk_size, self._counts)
        finally:
            self.in_flight -= 1
        self.stats.confirmed += 1
        lane = self.inline.lane(DEFERRED if message.routing_key == DEFERRED else job.lane)
        lane.jobs += 1
        lane.chunks += result.chunks
        lane.recipients += result.recipients
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done
