"""The fan-out role loses RabbitMQ mid-job: the job in hand is redelivered, nothing is lost, and
the lanes come back on a new connection by themselves. Real broker behind a TcpProxy."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import orjson
import pytest
from aio_pika.abc import AbstractConnection

from handlers.jobs import job_message
from handlers.ports import OutgoingMessage
from tests.faults.proxy import TcpProxy
from tests.harness import wait_for
from tests.integration.test_fanout_jobs import connection, jobs, plan, publish  # noqa: F401
from worker.fanout.runner import FanoutRunner
from worker.memory.publisher import MemoryPublisher
from worker.memory.stores import MemoryFollowerGraph
from worker.settings import FanoutSettings

pytestmark = pytest.mark.integration


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", 5672)
    await p.start()
    yield p
    await p.close()


class Gate(MemoryPublisher):
    """Publishes the first chunk of ``post_id``, then waits for ``open`` before the others."""

    def __init__(self, post_id: str) -> None:
        super().__init__()
        self.post_id = post_id
        self.open = asyncio.Event()

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        if message.correlation_id == self.post_id and message.message_id.endswith(":chunk:1"):
            await self.open.wait()
        return await super().send(message)


async def test_a_lost_broker_mid_job_redelivers_the_job_and_the_lanes_reconnect_by_themselves(
    connection: AbstractConnection,  # noqa: F811
    jobs: FanoutSettings,  # noqa: F811
    proxy: TcpProxy,
) -> None:
    # Given a fan-out worker reaching the broker through a proxy, holding a job mid-way
    graph = MemoryFollowerGraph()
    graph.set_followers("a", ["f1", "f2", "f3", "f4"])
    graph.set_followers("b", ["g1"])
    [job] = await plan(graph, "p1", "a", 10)
    publisher = Gate("p1")
    runner = FanoutRunner(f"amqp://guest:guest@127.0.0.1:{proxy.port}/", jobs, graph, publisher, 2, 2.0, 0.5)
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop, drain_seconds=1.0))
    ordinary = runner.consumers["ordinary"]
    try:
        await wait_for(lambda: runner.connected, what="connected")
        await publish(jobs, [job_message(job)])
        await wait_for(lambda: len(publisher.messages) == 1, what="the first chunk")

        # When the connection to the broker is cut and then comes back
        await proxy.cut()
        await wait_for(lambda: not runner.connected, what="the loss noticed")
        publisher.open.set()
        await proxy.restore()

        # Then the job is redelivered on the new connection and completed there
        await wait_for(lambda: ordinary.stats.jobs_acked == 1, what="the job acked after the reconnect")
        assert runner.reconnects >= 1
        assert ordinary.stats.redelivered == 1
        # and the lanes keep working
        [other] = await plan(graph, "p2", "b", 10)
        await publish(jobs, [job_message(other)])
        await wait_for(lambda: ordinary.stats.jobs_acked == 2, what="a later job")
    finally:
        stop.set()
        await task

    ids = [m.message_id for m in publisher.messages if m.correlation_id == "p1"]
    assert set(ids) == {"post:p1:range:0:chunk:0", "post:p1:range:0:chunk:1"}
    recipients = {
        r for m in publisher.messages if m.correlation_id == "p1" for r in orjson.loads(m.body)["recipients"]
    }
    assert recipients == {"f1", "f2", "f3", "f4"}
