"""connection.blocked: aiormq's reaction to the frames (the pinned behaviour the publisher reads),
and the publisher's pause: one log line and one counted episode per block, nothing lost."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import aiormq
from loguru import logger
from pamqp import commands as spec

from handlers.ports import OutgoingMessage
from tests.harness import AMQP_URL, Collector, wait_for
from worker.publisher import RabbitPublisher, connection_blocked


async def _frames(queue: asyncio.Queue[Any]) -> AsyncIterator[Any]:
    while (item := await queue.get()) is not None:
        yield item


async def test_aiormq_blocked_and_unblocked_frames_flip_what_the_publisher_reads() -> None:
    # Given an aiormq connection whose frame reader is fed by hand (no socket, no broker):
    # its real frame dispatch runs, so a renamed or removed blocked state fails here
    conn = aiormq.Connection("amqp://guest:guest@127.0.0.1:1/?heartbeat=0")
    frames: asyncio.Queue[Any] = asyncio.Queue()
    reader = asyncio.create_task(conn._Connection__reader(_frames(frames)))  # type: ignore[attr-defined]
    try:
        await asyncio.wait_for(conn.connected.wait(), 5)
        assert not connection_blocked(conn)
        # When the broker sends connection.blocked
        frames.put_nowait((0, 0, spec.Connection.Blocked(reason="low on memory")))
        await wait_for(lambda: connection_blocked(conn), timeout=5, what="blocked")
        # Then it reads as blocked until connection.unblocked arrives
        frames.put_nowait((0, 0, spec.Connection.Unblocked()))
        await wait_for(lambda: not connection_blocked(conn), timeout=5, what="unblocked")
    finally:
        frames.put_nowait(None)
        await asyncio.wait_for(reader, 5)


def test_an_unknown_connection_shape_reads_as_not_blocked() -> None:
    assert not connection_blocked(None)
    assert not connection_blocked(object())


def _message(n: int) -> OutgoingMessage:
    return OutgoingMessage("post.created", f"post:b{n}:chunk:0", f"b{n}", b'{"n": %d}' % n)


async def test_a_blocked_episode_logs_once_counts_once_and_loses_nothing(
    exchange: str, collector: Collector
) -> None:
    # Given a connected publisher with a window of 64 and a real broker
    publisher = RabbitPublisher(
        AMQP_URL, exchange, window=64, confirm_timeout_seconds=5, reconnect_max_seconds=1
    )
    await publisher.connect()
    records: list[tuple[str, str]] = []
    sink = logger.add(lambda m: records.append((m.record["level"].name, m.record["message"])), level="INFO")
    try:
        amqp = publisher._connection.transport.connection  # type: ignore[union-attr]
        for episode in (1, 2):
            # When the broker blocks the connection (what aiormq does on the frame, as proven above)
            await amqp._Connection__handle_connection_blocked(spec.Connection.Blocked(reason="memory"))
            assert publisher.blocked
            # and 50 publishes are caught in it
            futures = [await publisher.send(_message(episode * 100 + n)) for n in range(50)]
            await asyncio.sleep(0.7)
            # Then nothing is published while blocked, and the episode is one line and one count
            assert not any(f.done() for f in futures)
            paused = [m for level, m in records if "blocked this connection" in m]
            assert len(paused) == episode
            assert publisher.stats.blocked_pauses == episode
            assert publisher.stats.blocked_seconds >= 0.4 * episode
            # When it unblocks, every publish goes out and is confirmed
            await amqp._Connection__handle_connection_unblocked(spec.Connection.Unblocked())
            await asyncio.wait_for(asyncio.gather(*futures), 10)
            resumed = [m for level, m in records if level == "INFO" and "unblocked the connection" in m]
            assert len(resumed) == episode
    finally:
        logger.remove(sink)
        with contextlib.suppress(Exception):
            await publisher.close()
    # And nothing was lost or doubled: each message reached the queue once
    await wait_for(lambda: len(collector.messages) >= 100, timeout=10, what="all messages")
    assert sorted(m.message_id for m in collector.messages) == sorted(
        f"post:b{e * 100 + n}:chunk:0" for e in (1, 2) for n in range(50)
    )
    assert publisher.stats.reconnects == 0
