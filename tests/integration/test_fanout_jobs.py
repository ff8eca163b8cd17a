"""Fan-out jobs on the real RabbitMQ: the job topology, the lane consumer, redelivery, dead-lettering,
lanes, the delay queue and a split celebrity post. Followers come from the in-memory graph.

Every test declares queues and exchanges of its own (uuid names) and deletes them afterwards.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncGenerator, AsyncIterator
from pathlib import Path
from typing import Any

import aio_pika
import orjson
import pytest
from aio_pika.abc import AbstractConnection
from jsonschema import Draft202012Validator

from enrichment.errors import ConfigError, PublishFailed, ServiceUnavailable
from handlers.contract import encode_head
from handlers.jobs import FanoutJob, job_message
from handlers.ports import OutgoingMessage
from handlers.ranges import RangePlanner
from tests.conftest import AMQP_URL
from tests.harness import Collector, wait_for
from worker.fanout.consumer import FanoutConsumer
from worker.fanout.runner import FanoutRunner
from worker.memory.publisher import MemoryPublisher
from worker.memory.stores import MemoryFollowerGraph
from worker.messaging.jobs import (
    BACKFILL,
    REASON_HEADER,
    BulkShards,
    backfill_queue,
    declare_job_topology,
    delete_job_topology,
    verify_job_topology,
)
from worker.messaging.publisher import RabbitPublisher
from worker.repair.pace import LanePublisher
from worker.settings import FanoutSettings

pytestmark = pytest.mark.integration
CHUNKS = Draft202012Validator(
    json.loads((Path(__file__).resolve().parents[2] / "schemas" / "post.created.v2.json").read_text())
)


@pytest.fixture
async def connection() -> AsyncIterator[AbstractConnection]:
    try:
        conn = await aio_pika.connect(AMQP_URL, timeout=5)
    except Exception as exc:  # aio-pika raises several kinds here
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL} ({exc!r}); run scripts/ensure-services.sh")
    yield conn
    await conn.close()


@pytest.fixture
async def jobs(connection: AbstractConnection, unique: str) -> AsyncIterator[FanoutSettings]:
    """Job topology under this test's own names, declared, and deleted afterwards."""
    p = f"t.jobs.{unique}"
    settings = FanoutSettings(
        exchange=p,
        ordinary_queue=f"{p}.ordinary",
        bulk_queue=f"{p}.bulk",
        deferred_queue=f"{p}.deferred",
        dead_letter_exchange=f"{p}.dlx",
        dead_letter_queue=f"{p}.dead",
        ordinary_prefetch=8,
        bulk_prefetch=2,
        delivery_limit=2,
        defer_seconds=1.0,
    )
    channel = await connection.channel()
    await declare_job_topology(channel, settings)
    await channel.close()
    yield settings
    await delete_job_topology(AMQP_URL, settings, 5.0)


async def publish(settings: FanoutSettings, messages: list[OutgoingMessage]) -> None:
    """Publish jobs the way the tailer will: the ordinary publisher on the job exchange, confirmed."""
    publisher = RabbitPublisher(AMQP_URL, settings.exchange, 256, 5.0, 1.0)
    await publisher.connect()
    try:
        await asyncio.gather(*[await publisher.send(m) for m in messages])
    finally:
        await publisher.close()


async def depth(connection: AbstractConnection, queue: str) -> int:
    channel = await connection.channel()
    declared = await channel.declare_queue(queue, passive=True)
    await channel.close()
    return int(declared.declaration_result.message_count or 0)


async def dead_jobs(connection: AbstractConnection, settings: FanoutSettings) -> list[Any]:
    channel = await connection.channel()
    queue = await channel.get_queue(settings.dead_letter_queue)
    out = []
    while (message := await queue.get(no_ack=True, fail=False)) is not None:
        out.append(message)
    await channel.close()
    return out


class GatedGraph(MemoryFollowerGraph):
    """Followers of ``held`` stream only once ``gate`` is set; ``failing`` always fails (a transient
    error that is not an outage); ``away`` fails as an unreachable MongoDB until ``gate`` is set."""

    def __init__(self, held: str = "", failing: str = "", away: str = "") -> None:
        super().__init__(page_size=100)
        self.held, self.failing, self.away = held, failing, away
        self.gate = asyncio.Event()

    async def follower_pages(
        self, user_id: str, after: str | None = None, until: str | None = None
    ) -> AsyncGenerator[list[str], None]:
        if user_id == self.failing:
            raise PublishFailed("chunk nacked by the broker")
        if user_id == self.away and not self.gate.is_set():
            raise ServiceUnavailable("MongoDB is unreachable: AutoReconnect")
        if user_id == self.held:
            await self.gate.wait()
        async for page in super().follower_pages(user_id, after, until):
            yield page


class StallingPublisher(MemoryPublisher):
    """Confirms the first ``limit`` chunks, then never again: a worker that dies mid-job."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self._limit = limit

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        if len(self.messages) >= self._limit:
            await asyncio.Event().wait()
        return await super().send(message)


async def plan(graph: MemoryFollowerGraph, post_id: str, author: str, range_size: int) -> list[FanoutJob]:
    return await RangePlanner(graph, range_size).plan(
        post_id, author, encode_head(post_id, author, None, "hi", None)
    )


class Started:
    """A consumer bound to the test's connection, so ``start()`` needs no argument."""

    def __init__(self, connection: AbstractConnection, consumer: FanoutConsumer) -> None:
        self.connection, self.consumer = connection, consumer
        self.stats, self.pause, self.resume, self.stop = (
            consumer.stats,
            consumer.pause,
            consumer.resume,
            consumer.stop,
        )

    @property
    def in_flight(self) -> int:
        return self.consumer.in_flight

    async def start(self) -> None:
        await self.consumer.start(self.connection)


def consumer(
    connection: AbstractConnection,
    settings: FanoutSettings,
    lane: Any,
    graph: Any,
    publisher: Any,
    chunk_size: int = 2,
) -> Started:
    return Started(
        connection, FanoutConsumer(settings, lane, graph, publisher, chunk_size, timeout_seconds=5.0)
    )


async def test_a_job_round_trip_publishes_confirmed_chunks_then_acks_the_job(
    connection: AbstractConnection, jobs: FanoutSettings, exchange: str, collector: Collector
) -> None:
    # Given a post of an author with five followers (and a self-follow), planned as one job
    graph = MemoryFollowerGraph()
    graph.set_followers("a", ["a", "f1", "f2", "f3", "f4", "f5"])
    [job] = await plan(graph, "p1", "a", range_size=10)
    chunks = RabbitPublisher(AMQP_URL, exchange, 64, 5.0, 1.0)
    worker = consumer(connection, jobs, "ordinary", graph, chunks)
    await worker.start()
    try:
        # When the job goes through the ordinary lane
        await publish(jobs, [job_message(job)])
        await wait_for(lambda: worker.stats.jobs_acked == 1, what="the job acked")
        await wait_for(lambda: len(collector.messages) == 3, what="three chunks")
    finally:
        await worker.stop()
        await chunks.close()

    # Then its chunks reached the fan-out exchange, confirmed before the ack, schema 2, ids per range
    assert [m.message_id for m in collector.messages] == [f"post:p1:range:0:chunk:{n}" for n in range(3)]
    assert [r for m in collector.messages for r in m.body["recipients"]] == ["f1", "f2", "f3", "f4", "f5"]
    for m in collector.messages:
        assert list(CHUNKS.iter_errors(m.body)) == [], m.body
    assert (worker.stats.chunks, worker.stats.recipients, worker.stats.redelivered) == (3, 5, 0)
    # and the job left the queue for good
    assert await depth(connection, jobs.ordinary_queue) == 0


async def test_a_malformed_job_is_dead_lettered_at_once_with_its_reason(
    connection: AbstractConnection, jobs: FanoutSettings
) -> None:
    worker = consumer(connection, jobs, "ordinary", MemoryFollowerGraph(), MemoryPublisher())
    await worker.start()
    try:
        await publish(jobs, [OutgoingMessage("ordinary", "job:junk", "junk", b'{"schema": 1, "kind": "?"}')])
        await wait_for(lambda: worker.stats.dead_lettered == 1, what="the job dead-lettered")
    finally:
        await worker.stop()
    [dead] = await dead_jobs(connection, jobs)
    assert dead.message_id == "job:junk"
    assert "malformed job: unknown job kind" in dead.headers[REASON_HEADER]
    assert (worker.stats.malformed, worker.stats.jobs_received, worker.stats.requeued) == (1, 1, 0)
    assert await depth(connection, jobs.ordinary_queue) == 0


async def test_a_job_that_keeps_failing_is_dead_lettered_after_the_delivery_limit_with_its_reason(
    connection: AbstractConnection, jobs: FanoutSettings
) -> None:
    # Given a job whose fan-out fails every time, and a healthy one behind it
    graph = GatedGraph(failing="bad")
    graph.set_followers("good", ["f1"])
    bad = (await plan(graph, "p-bad", "bad", 10))[0]
    good = (await plan(graph, "p-good", "good", 10))[0]
    worker = consumer(connection, jobs, "ordinary", graph, MemoryPublisher())
    await worker.start()
    try:
        await publish(jobs, [job_message(bad), job_message(good)])
        await wait_for(
            lambda: worker.stats.dead_lettered == 1 and worker.stats.jobs_acked == 1, what="both settled"
        )
    finally:
        await worker.stop()

    # Then it was tried delivery_limit + 1 times (what the broker allows), then dead-lettered with why
    [dead] = await dead_jobs(connection, jobs)
    assert dead.message_id == "job:p-bad:range:0"
    assert (
        dead.headers[REASON_HEADER] == "failed 3 deliveries; last: PublishFailed: chunk nacked by the broker"
    )
    assert (worker.stats.requeued, worker.stats.redelivered) == (2, 2)
    # and the lane moved on
    assert await depth(connection, jobs.ordinary_queue) == 0


async def test_an_unreachable_mongodb_is_waited_out_holding_the_job_never_spending_its_deliveries(
    connection: AbstractConnection, jobs: FanoutSettings
) -> None:
    # Given a job whose followers cannot be read while MongoDB is away
    graph = GatedGraph(away="a")
    graph.set_followers("a", ["f1", "f2"])
    [job] = await plan(graph, "p1", "a", 10)
    publisher = MemoryPublisher()
    worker = consumer(connection, jobs, "ordinary", graph, publisher)
    await worker.start()
    try:
        await publish(jobs, [job_message(job)])
        await wait_for(lambda: worker.stats.jobs_received == 1, what="the job")
        await asyncio.sleep(1.5)  # several retries in place
        # Then it is neither requeued nor dead-lettered while the outage lasts
        assert (worker.stats.requeued, worker.stats.dead_lettered, worker.stats.jobs_acked) == (0, 0, 0)
        # and when MongoDB is back, it completes on its first delivery
        graph.gate.set()
        await wait_for(lambda: worker.stats.jobs_acked == 1, what="the job acked")
    finally:
        await worker.stop()
    assert (worker.stats.redelivered, worker.stats.dead_lettered) == (0, 0)
    assert sorted(r for m in publisher.messages for r in orjson.loads(m.body)["recipients"]) == ["f1", "f2"]


async def test_a_job_that_kills_its_workers_is_dead_lettered_by_the_broker_past_the_limit(
    connection: AbstractConnection, jobs: FanoutSettings
) -> None:
    graph = GatedGraph(held="a")  # never released: every worker dies holding it
    graph.set_followers("a", ["f1"])
    [job] = await plan(graph, "p1", "a", 10)
    await publish(jobs, [job_message(job)])
    for attempt in range(jobs.delivery_limit + 1):
        worker = consumer(connection, jobs, "ordinary", graph, MemoryPublisher())
        await worker.start()
        await wait_for(lambda w=worker: w.stats.jobs_received == 1, what=f"delivery {attempt + 1}")
        await worker.stop()  # killed: the channel closes with the job unacknowledged

    dead: list[Any] = []
    for _ in range(100):  # the broker dead-letters on the last return, asynchronously
        if dead := await dead_jobs(connection, jobs):
            break
        await asyncio.sleep(0.05)
    [message] = dead
    assert message.headers["x-first-death-reason"] == "delivery_limit"
    assert message.message_id == "job:p1:range:0"


class HeldConfirms(MemoryPublisher):
    """Sends at once but confirms only when told: a broker slow to fsync."""

    def __init__(self) -> None:
        super().__init__()
        self.pending: list[asyncio.Future[None]] = []

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        await super().send(message)
        self.pending.append(asyncio.get_running_loop().create_future())
        return self.pending[-1]


async def test_a_job_is_acked_only_after_every_chunk_is_confirmed(
    connection: AbstractConnection, jobs: FanoutSettings
) -> None:
    graph = MemoryFollowerGraph()
    graph.set_followers("a", ["f1", "f2", "f3", "f4", "f5"])
    [job] = await plan(graph, "p1", "a", 10)
    publisher = HeldConfirms()
    worker = consumer(connection, jobs, "ordinary", graph, publisher)
    await worker.start()
    try:
        await publish(jobs, [job_message(job)])
        await wait_for(lambda: len(publisher.pending) == 3, what="every chunk sent")
        for future in publisher.pending[:2]:
            future.set_result(None)
        await asyncio.sleep(0.2)
        assert worker.stats.jobs_acked == 0  # one chunk still unconfirmed
        publisher.pending[2].set_result(None)
        await wait_for(lambda: worker.stats.jobs_acked == 1, what="the ack after the last confirm")
    finally:
        await worker.stop()


async def test_a_worker_killed_mid_job_loses_nothing_and_the_redelivery_replays_the_same_ids_and_recipients(
    connection: AbstractConnection, jobs: FanoutSettings
) -> None:
    # Given a job of 10 chunks and a worker that dies after publishing 3 of them
    graph = MemoryFollowerGraph(page_size=7)
    graph.set_followers("a", [f"f{i:02d}" for i in range(50)])
    [job] = await plan(graph, "p1", "a", 100)
    dying = StallingPublisher(limit=3)
    first = consumer(connection, jobs, "ordinary", graph, dying, chunk_size=5)
    await first.start()
    await publish(jobs, [job_message(job)])
    await wait_for(lambda: len(dying.messages) == 3, what="three chunks out")
    await first.stop()  # cancels the job and closes the channel before any ack
    assert first.stats.jobs_acked == 0

    # When another worker takes the redelivered job
    replay = MemoryPublisher()
    second = consumer(connection, jobs, "ordinary", graph, replay, chunk_size=5)
    await second.start()
    try:
        await wait_for(lambda: second.stats.jobs_acked == 1, what="the redelivered job acked")
    finally:
        await second.stop()

    # Then it is counted as a redelivery and replays the same ids with the same recipients
    assert second.stats.redelivered == 1
    replayed = {m.message_id: m.body for m in replay.messages}
    assert len(replayed) == 10
    for m in dying.messages:
        assert replayed[m.message_id] == m.body
    assert sorted(r for b in replayed.values() for r in orjson.loads(b)["recipients"]) == [
        f"f{i:02d}" for i in range(50)
    ]


async def test_the_ordinary_lane_keeps_flowing_while_the_bulk_lane_is_stuck_and_paused(
    connection: AbstractConnection, jobs: FanoutSettings
) -> None:
    # Given a celebrity post split into bulk ranges whose worker is stuck, then paused
    graph = GatedGraph(held="celeb")
    graph.set_followers("celeb", [f"c{i:03d}" for i in range(60)])
    for n in range(20):
        graph.set_followers(f"u{n}", [f"f{n}"])
    bulk_jobs = await plan(graph, "big", "celeb", range_size=10)
    assert len(bulk_jobs) == 6 and {j.lane for j in bulk_jobs} == {"bulk"}
    ordinary_jobs = [(await plan(graph, f"p{n}", f"u{n}", 10))[0] for n in range(20)]
    bulk = consumer(connection, jobs, "bulk", graph, MemoryPublisher())
    ordinary = consumer(connection, jobs, "ordinary", graph, MemoryPublisher())
    await bulk.start()
    await ordinary.start()
    try:
        await publish(jobs, [job_message(j) for j in bulk_jobs])
        await wait_for(lambda: bulk.in_flight == jobs.bulk_prefetch, what="the bulk worker's hands full")
        await bulk.pause()

        # When ordinary posts arrive behind the celebrity's backlog
        await publish(jobs, [job_message(j) for j in ordinary_jobs])

        # Then every one of them is fanned out while no bulk range has finished
        await wait_for(lambda: ordinary.stats.jobs_acked == 20, what="the ordinary lane drained")
        assert bulk.stats.jobs_acked == 0
        assert await depth(connection, jobs.bulk_queue) == 4  # waiting, besides the 2 in hand (unacked)

        # and the bulk lane catches up once it can go on
        graph.gate.set()
        await bulk.resume()
        await wait_for(lambda: bulk.stats.jobs_acked == 6, what="the bulk lane drained")
    finally:
        await bulk.stop()
        await ordinary.stop()


async def test_a_deferred_job_waits_in_the_delay_queue_then_reaches_the_bulk_lane(
    connection: AbstractConnection, jobs: FanoutSettings
) -> None:
    graph = MemoryFollowerGraph()
    graph.set_followers("a", ["f1"])
    [job] = await plan(graph, "p1", "a", 10)
    bulk = consumer(connection, jobs, "bulk", graph, MemoryPublisher())
    await bulk.start()
    try:
        await publish(jobs, [job_message(job, deferred=True)])
        assert await depth(connection, jobs.deferred_queue) == 1
        await wait_for(lambda: bulk.stats.jobs_acked == 1, what="the deferred job fanned out")
    finally:
        await bulk.stop()
    assert await depth(connection, jobs.deferred_queue) == 0


async def test_a_100k_follower_post_split_into_ranges_by_two_workers_reaches_exactly_its_followers(
    connection: AbstractConnection, jobs: FanoutSettings
) -> None:
    # Given a celebrity with 100,000 followers (and a self-follow), split into ranges of 10,000
    followers = [f"f{i:06d}" for i in range(100_000)]
    graph = MemoryFollowerGraph()
    graph.set_followers("celeb", [*followers, "celeb"])
    planned = await plan(graph, "big", "celeb", range_size=10_000)
    assert len(planned) == 11  # 100,001 follow edges, the self-follow included

    # When two workers compete for the bulk lane
    publishers = [MemoryPublisher(), MemoryPublisher()]
    workers = [consumer(connection, jobs, "bulk", graph, p, chunk_size=1_000) for p in publishers]
    for w in workers:
        await w.start()
    try:
        await publish(jobs, [job_message(j) for j in planned])
        await wait_for(lambda: sum(w.stats.jobs_acked for w in workers) == 11, what="every range acked")
    finally:
        for w in workers:
            await w.stop()

    # Then the union of the recipients is exactly the followers, each once, never the author
    messages = [m for p in publishers for m in p.messages]
    recipients = [r for m in messages for r in orjson.loads(m.body)["recipients"]]
    assert len(recipients) == 100_000
    assert sorted(recipients) == followers
    assert (
        len({m.message_id for m in messages}) == len(messages) == 101
    )  # 10,000 edges a range, less the author
    assert all(w.stats.jobs_acked > 0 for w in workers)  # both took part
    assert list(CHUNKS.iter_errors(orjson.loads(messages[0].body))) == []


async def test_the_job_topology_is_idempotent_and_a_mismatch_names_the_queue_and_the_section(
    connection: AbstractConnection, jobs: FanoutSettings
) -> None:
    channel = await connection.channel()
    await declare_job_topology(channel, jobs)  # again: no change, accepted
    changed = jobs.model_copy(update={"delivery_limit": jobs.delivery_limit + 1})
    with pytest.raises(ConfigError, match=rf"queue '{jobs.ordinary_queue}' already exists.*\[fanout\]"):
        await declare_job_topology(channel, changed)


async def test_check_verifies_the_job_queues_without_creating_any(
    connection: AbstractConnection, jobs: FanoutSettings, unique: str
) -> None:
    # Given job queues as the worker declares them, verification finds nothing to say
    await verify_job_topology(connection, jobs)
    # and on names nobody declared it creates nothing
    fresh = jobs.model_copy(
        update={"ordinary_queue": f"t.jobs.{unique}.never", "bulk_queue": f"t.jobs.{unique}.nor"}
    )
    await verify_job_topology(connection, fresh)
    probe = await connection.channel()
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await probe.declare_queue(fresh.ordinary_queue, passive=True)
    # When the configuration asks for another delivery limit than the existing queues have
    changed = jobs.model_copy(update={"delivery_limit": jobs.delivery_limit + 1})
    # Then `check`'s verification names the queue and the [fanout] section
    with pytest.raises(ConfigError, match=rf"queue '{jobs.ordinary_queue}' already exists.*\[fanout\]"):
        await verify_job_topology(connection, changed)


async def test_backfill_jobs_wait_in_their_own_lane_at_its_prefetch_while_live_posts_flow(
    connection: AbstractConnection, jobs: FanoutSettings
) -> None:
    # Given a backfill's jobs, routed as the repair commands route them, whose fan-out is stuck
    graph = GatedGraph(held="old")
    graph.set_followers("old", ["f1"])
    for n in range(10):
        graph.set_followers(f"u{n}", [f"f{n}"])
    backfill_jobs = [(await plan(graph, f"b{n}", "old", 10))[0] for n in range(6)]
    live_jobs = [(await plan(graph, f"p{n}", f"u{n}", 10))[0] for n in range(10)]
    lane = consumer(connection, jobs, BACKFILL, graph, MemoryPublisher())
    ordinary = consumer(connection, jobs, "ordinary", graph, MemoryPublisher())
    await lane.start()
    await ordinary.start()
    routed = LanePublisher(RabbitPublisher(AMQP_URL, jobs.exchange, 256, 5.0, 1.0), BACKFILL)
    try:
        await routed.connect()
        await asyncio.gather(*[await routed.send(job_message(j)) for j in backfill_jobs])
        await wait_for(
            lambda: lane.in_flight == jobs.backfill_prefetch, what="the backfill lane's hands full"
        )
        assert await depth(connection, backfill_queue(jobs)) == 6 - jobs.backfill_prefetch
        assert await depth(connection, jobs.ordinary_queue) == 0

        # When live posts arrive
        await publish(jobs, [job_message(j) for j in live_jobs])

        # Then every one is fanned out while no backfill job has finished, and the backfill goes on after
        await wait_for(lambda: ordinary.stats.jobs_acked == 10, what="the ordinary lane drained")
        assert lane.stats.jobs_acked == 0
        graph.gate.set()
        await wait_for(lambda: lane.stats.jobs_acked == 6, what="the backfill lane drained")
    finally:
        await routed.close()
        await lane.stop()
        await ordinary.stop()


async def test_a_fanout_process_reports_every_queue_depth_and_how_long_its_lanes_jobs_waited(
    jobs: FanoutSettings,
) -> None:
    # Given a malformed job (to be dead-lettered) and two jobs that wait 2 s in the ordinary lane,
    # published by a stamping publisher like the tailer's
    graph = MemoryFollowerGraph()
    graph.set_followers("a", ["f1", "f2"])
    planned = [*(await plan(graph, "p1", "a", 10)), *(await plan(graph, "p2", "a", 10))]
    stamped = RabbitPublisher(AMQP_URL, jobs.exchange, 8, 5.0, 1.0, stamped=True)
    await stamped.connect()
    try:
        junk = OutgoingMessage("ordinary", "job:junk", "junk", b"{}")
        await asyncio.gather(*[await stamped.send(m) for m in [junk, *map(job_message, planned)]])
    finally:
        await stamped.close()
    await asyncio.sleep(2.2)

    # When a fan-out process's runner takes them
    runner = FanoutRunner(AMQP_URL, jobs, graph, MemoryPublisher(), 10, 5.0, 1.0)
    assert runner.oldest_job_ages() == {}  # nothing read yet: unknown, not "none waiting"
    stop = asyncio.Event()
    task = asyncio.create_task(runner.run(stop, 1.0))
    try:
        ordinary = runner.consumers["ordinary"].stats
        await wait_for(lambda: ordinary.jobs_acked == 2 and ordinary.dead_lettered == 1, what="the jobs")
        # (the depths are read on connecting, then every 5 s)
        await wait_for(lambda: runner.depths.get("dead") == 1, timeout=12, what="the dead job counted")
    finally:
        stop.set()
        await task

    # Then it saw how long the jobs had waited (AMQP timestamps are whole seconds), every queue's
    # depth (lanes, the delay queue, the dead letters), and no job waits now
    assert ordinary.last_job_wait_seconds is not None and ordinary.last_job_wait_seconds >= 1.0
    assert runner.depths == {"ordinary": 0, "bulk": 0, "backfill": 0, "deferred": 0, "dead": 1}
    assert runner.oldest_job_ages() == {"ordinary": 0.0, "bulk": 0.0, "backfill": 0.0}


@pytest.mark.parametrize("shards", [1, 4])
async def test_two_celebrities_posting_at_once_share_the_bulk_lane_side_by_side(
    connection: AbstractConnection, jobs: FanoutSettings, shards: int
) -> None:
    # Given two celebrities' posts of 6 ranges each, A's jobs published before B's by the job
    # publisher's shard router, and one bulk worker (2 ranges in hand per shard)
    settings = jobs.model_copy(update={"bulk_shards": shards})
    graph = MemoryFollowerGraph(page_size=100)
    for star in ("A", "B"):
        graph.set_followers(star, [f"{star}{i:05d}" for i in range(6_000)])
    planned = [*(await plan(graph, "pa", "A", 1_000)), *(await plan(graph, "pb", "B", 1_000))]
    router = RabbitPublisher(AMQP_URL, jobs.exchange, 64, 5.0, 1.0, route=BulkShards(shards).routing_key)
    await router.connect()
    try:
        await asyncio.gather(*[await router.send(job_message(j)) for j in planned])
    finally:
        await router.close()
    chunks = MemoryPublisher()
    worker = consumer(connection, settings, "bulk", graph, chunks, chunk_size=100)

    # When the worker fans them out
    await worker.start()
    try:
        await wait_for(lambda: worker.stats.jobs_acked == 12, what="both posts fanned out")
    finally:
        await worker.stop()

    # Then with shards, B's ranges were taken beside A's instead of after all of them
    posts = [m.correlation_id for m in chunks.messages]
    assert len(posts) == 120 and posts.count("pa") == posts.count("pb") == 60
    first_b = posts.index("pb")
    if shards == 1:
        assert first_b == 60  # one FIFO queue: B waited for every range of A
    else:
        assert first_b < 40, first_b
        assert posts[:60].count("pb") >= 20, posts  # a fair part of the first half was B's
