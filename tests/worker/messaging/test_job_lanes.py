"""The tailer's job publisher: bulk jobs cannot hold the window ordinary jobs need."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from handlers.ports import OutgoingMessage
from worker.memory.publisher import MemoryPublisher
from worker.messaging.job_lanes import JobLanesPublisher


class Unconfirmed(MemoryPublisher):
    """A window of ``window`` publishes whose confirms never come (a broker slow to commit)."""

    def __init__(self, window: int) -> None:
        super().__init__()
        self._free = asyncio.Semaphore(window)

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        await self._free.acquire()  # never released: the confirm never comes
        self.messages.append(message)
        return asyncio.get_running_loop().create_future()


def job(key: str, n: int = 0) -> OutgoingMessage:
    return OutgoingMessage(key, f"job:{key}:{n}", f"p{n}", b"{}")


def lanes(ordinary: Any, bulk: Any) -> JobLanesPublisher:
    return JobLanesPublisher(ordinary, bulk)


async def test_an_ordinary_job_goes_through_while_bulk_jobs_fill_their_whole_window() -> None:
    # Given a bulk window full of unconfirmed jobs
    ordinary, bulk = MemoryPublisher(), Unconfirmed(window=4)
    jobs = lanes(ordinary, bulk)
    for n in range(4):
        await jobs.send(job("bulk.1", n))
    stuck = asyncio.create_task(jobs.send(job("bulk", 5)))
    await asyncio.sleep(0.05)
    assert not stuck.done()
    # When an ordinary job is published, Then it is confirmed at once
    await asyncio.wait_for(await jobs.send(job("ordinary")), 1.0)
    assert [m.routing_key for m in ordinary.messages] == ["ordinary"]
    stuck.cancel()


async def test_bulk_keys_go_to_the_bulk_publisher_and_every_other_key_to_the_other() -> None:
    ordinary, bulk = MemoryPublisher(), MemoryPublisher()
    jobs = lanes(ordinary, bulk)
    for key in ("ordinary", "bulk", "bulk.3", "deferred", "backfill", "bulky"):
        await jobs.send(job(key))
    assert [m.routing_key for m in bulk.messages] == ["bulk", "bulk.3"]
    assert [m.routing_key for m in ordinary.messages] == ["ordinary", "deferred", "backfill", "bulky"]
    # and both count into one set of counters
    assert jobs.stats.sent == 6


class FailingClose(MemoryPublisher):
    async def close(self, drain_seconds: float = 0.0) -> None:
        raise RuntimeError("close failed")


class SlowClose(MemoryPublisher):
    closed = False

    async def close(self, drain_seconds: float = 0.0) -> None:
        await asyncio.sleep(0.05)
        self.closed = True


async def test_closing_waits_for_both_publishers_even_when_one_fails() -> None:
    bulk = SlowClose()
    jobs = lanes(FailingClose(), bulk)
    with pytest.raises(RuntimeError, match="close failed"):
        await jobs.close()
    assert bulk.closed  # not left running detached
