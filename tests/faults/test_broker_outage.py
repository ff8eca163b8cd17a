"""RabbitMQ faults: a dead broker, a hung broker and a broker-wide resource alarm.

The worker's publisher reaches the real broker through a TcpProxy the test controls; the test
collector consumes from the real broker directly, so it sees exactly what the broker accepted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import shutil
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

import pytest
import redis.asyncio as aioredis
from loguru import logger

from handlers.ports import OutgoingMessage
from tests.faults.proxy import TcpProxy
from tests.harness import Collector, World, settings, start, wait_for
from worker.daemon import Worker
from worker.memory.db import token_seq
from worker.messaging.publisher import RabbitPublisher
from worker.tailer.pipeline import StreamPipeline

pytestmark = pytest.mark.timeout(120)

OUTAGE_SECONDS = float(os.environ.get("FANOUT_FAULT_OUTAGE_SECONDS", "30"))
CHUNK = 50
MAX_IN_FLIGHT = 20
CONFIRM_TIMEOUT = 2.0


class RecordingPublisher(RabbitPublisher):
    """The real publisher, noting which message ids the broker confirmed (and when)."""

    def __init__(self, port: int, exchange: str) -> None:
        super().__init__(
            f"amqp://guest:guest@127.0.0.1:{port}/",
            exchange,
            64,
            confirm_timeout_seconds=CONFIRM_TIMEOUT,
            reconnect_max_seconds=2,
        )
        self.confirmed_at: dict[str, float] = {}
        self.sent_at: dict[str, float] = {}

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        self.sent_at.setdefault(message.message_id, time.monotonic())
        future = await super().send(message)
        # Registered before the handler's own callback, so it runs first: a post can never be
        # finished (and checkpointed) before its confirms are on record here.
        future.add_done_callback(lambda f, mid=message.message_id: self._done(f, mid))
        return future

    def _done(self, future: asyncio.Future[None], message_id: str) -> None:
        if not future.cancelled() and future.exception() is None:
            self.confirmed_at.setdefault(message_id, time.monotonic())


@dataclass
class Scenario:
    world: World
    followers: dict[str, set[str]]
    authors: list[str]
    rng: random.Random
    written: list[tuple[str, float]] = field(default_factory=list)  # (post id, monotonic time)

    def chunks(self, post_id: str) -> int:
        author = self.world.db.collection("posts")[post_id]["author_id"]
        return math.ceil(len(self.followers[author]) / CHUNK)

    def post_seq(self) -> dict[str, int]:
        return {
            ev["documentKey"]["_id"]: pos
            for pos, ev in self.world.db.log()
            if ev["ns"]["coll"] == "posts" and ev["operationType"] == "insert"
        }

    async def write_posts(self, every: float, stop: asyncio.Event) -> None:
        while not stop.is_set():
            post_id = f"p{len(self.written):05d}"
            self.world.post(post_id, self.rng.choice(self.authors), text=f"post {post_id}")
            self.written.append((post_id, time.monotonic()))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), every)


def scenario(seed: int) -> Scenario:
    """30 authors, each with 1..150 followers (so every post needs the broker: 1..3 chunks)."""
    rng = random.Random(seed)
    world = World()
    fans = [f"f{i:04d}" for i in range(1000)]
    followers: dict[str, set[str]] = {}
    for i in range(30):
        author = f"u{i:02d}"
        world.add_user(author)
        chosen = set(rng.sample(fans, rng.randint(1, 150)))
        if i % 5 == 0:
            chosen.add(author)  # follows themself: never a recipient, never the only follower
        followers[author] = chosen - {author}
        world.graph.set_followers(author, sorted(chosen))
    return Scenario(world, followers, sorted(followers), rng)


def posts_pipeline(worker: Worker) -> StreamPipeline:
    return next(p for p in worker.pipelines if p.stream == "posts")


def delivered(sc: Scenario, collector: Collector) -> Callable[[], bool]:
    def check() -> bool:
        got = collector.recipients_by_post()
        return all(
            got.get(p) == sc.followers[sc.world.db.collection("posts")[p]["author_id"]] for p, _ in sc.written
        )

    return check


def assert_every_post_delivered_once_per_body(sc: Scenario, collector: Collector) -> None:
    received = collector.recipients_by_post()
    posts = sc.world.db.collection("posts")
    for post_id, _ in sc.written:
        assert received.get(post_id) == sc.followers[posts[post_id]["author_id"]], post_id
    bodies: dict[str, dict[str, Any]] = {}
    for m in collector.of("post.created"):
        assert m.message_id == f"post:{m.correlation_id}:range:0:chunk:{m.body['chunk']['index']}"
        if m.message_id in bodies:
            assert m.body == bodies[m.message_id], f"re-publish of {m.message_id} changed its body"
        bodies[m.message_id] = m.body
    # and the chunk sets are complete: 0..n-1, exactly the expected number per post
    for post_id, _ in sc.written:
        indexes = {
            int(mid.rsplit(":", 1)[1]) for mid in bodies if mid.startswith(f"post:{post_id}:range:0:chunk:")
        }
        assert indexes == set(range(sc.chunks(post_id))), post_id


@pytest.fixture
async def proxy() -> AsyncIterator[TcpProxy]:
    p = TcpProxy("127.0.0.1", 5672)
    await p.start()
    yield p
    await p.close()


async def test_broker_outage_holds_reads_and_checkpoint_then_delivers_everything(
    redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector, proxy: TcpProxy
) -> None:
    # Given authors with known followers and a worker publishing through the proxy
    sc = scenario(11)
    cfg = settings(key_prefix, exchange, chunk_size=CHUNK, max_in_flight_events=MAX_IN_FLIGHT)
    publisher = RecordingPublisher(proxy.port, exchange)
    runtime = sc.world.runtime(cfg, redis, publisher)
    worker, task = await start(runtime)
    pipeline = posts_pipeline(worker)
    stop_writing = asyncio.Event()
    writer = asyncio.create_task(sc.write_posts(0.05, stop_writing))

    def checkpoint_seq() -> int:
        cp = sc.world.checkpoints.saved.get("posts")
        seq = token_seq(cp.token) if cp is not None else 0
        assert seq is not None
        return seq

    def first_unconfirmed_seq() -> int:
        """Log position of the first post written so far whose chunks are not all confirmed."""
        seq_of = sc.post_seq()
        pending = [
            seq_of[p]
            for p, _ in sc.written
            if any(f"post:{p}:range:0:chunk:{i}" not in publisher.confirmed_at for i in range(sc.chunks(p)))
        ]
        return min(pending, default=sc.world.db.position + 1)

    in_flight_seen: list[int] = []
    checkpoint_violations: list[tuple[int, int]] = []

    async def sample(until: float) -> None:
        while time.monotonic() < until:
            in_flight_seen.append(
                pipeline.stats.read - (pipeline.stats.handled + pipeline.stats.dead_lettered)
            )
            cp, first = checkpoint_seq(), first_unconfirmed_seq()
            if cp >= first:
                checkpoint_violations.append((cp, first))
            await asyncio.sleep(0.05)

    try:
        # and posts flowing through the broker
        await wait_for(lambda: len(collector.recipients_by_post()) >= 10, what="some posts delivered")

        # When the broker goes away (connections reset, new ones refused) while posts keep coming
        await proxy.cut()
        cut_at = time.monotonic()
        settle = min(3.0, OUTAGE_SECONDS / 2)
        await sample(cut_at + settle)
        read_settled, checkpoint_settled = pipeline.stats.read, checkpoint_seq()
        delivered_settled = len(collector.messages)
        written_settled = len(sc.written)
        await sample(cut_at + OUTAGE_SECONDS)
        read_end, checkpoint_end = pipeline.stats.read, checkpoint_seq()
        in_flight_end = pipeline.stats.read - (pipeline.stats.handled + pipeline.stats.dead_lettered)
        written_during_outage = len(sc.written) - written_settled
        delivered_during_outage = len(collector.messages) - delivered_settled
        first_pending_end = first_unconfirmed_seq()

        # and comes back
        await proxy.restore()
        await asyncio.sleep(1.0)  # a few more posts after the restore
        stop_writing.set()
        await writer
        await wait_for(delivered(sc, collector), timeout=60, what="every post delivered after the outage")
        await asyncio.sleep(0.3)  # let late duplicates (if any) arrive before checking bodies
    finally:
        stop_writing.set()
        await writer
        worker.stop.set()
        await task

    # Then during the outage the reader stopped at the in-flight bound: backpressure, not buffering
    assert max(in_flight_seen) <= MAX_IN_FLIGHT, max(in_flight_seen)
    assert in_flight_end == MAX_IN_FLIGHT, "the pipeline should be full and waiting on the broker"
    assert written_during_outage > 2 * MAX_IN_FLIGHT, "the test must write more than the bound"
    assert read_end == read_settled, f"read kept growing during the outage: {read_settled} -> {read_end}"
    assert delivered_during_outage == 0, "nothing can reach the broker through a cut proxy"
    # and the checkpoint never passed a post whose messages were not confirmed, and stood still
    assert checkpoint_violations == [], checkpoint_violations[:5]
    assert checkpoint_end == checkpoint_settled
    assert checkpoint_end < first_pending_end
    # and afterwards every post reached exactly its followers; re-publishes kept their bodies
    assert_every_post_delivered_once_per_body(sc, collector)
    assert publisher.stats.reconnects >= 1
    assert publisher.stats.retried >= 1
    # and nothing was dead-lettered
    assert sc.world.dead.items == []
    assert pipeline.stats.dead_lettered == 0
    # and the final checkpoint covers every post
    assert checkpoint_seq() >= max(sc.post_seq().values())


async def test_hung_broker_times_out_publishes_then_recovers(
    redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector, proxy: TcpProxy
) -> None:
    # Given a running worker publishing through the proxy, and its warnings captured with their time
    sc = scenario(12)
    cfg = settings(key_prefix, exchange, chunk_size=CHUNK, max_in_flight_events=MAX_IN_FLIGHT)
    publisher = RecordingPublisher(proxy.port, exchange)
    runtime = sc.world.runtime(cfg, redis, publisher)
    warnings: list[tuple[float, str]] = []
    sink = logger.add(lambda m: warnings.append((time.monotonic(), m.record["message"])), level="WARNING")
    worker, task = await start(runtime)
    pipeline = posts_pipeline(worker)
    stop_writing = asyncio.Event()
    writer = asyncio.create_task(sc.write_posts(0.05, stop_writing))

    def logged(text: str) -> list[float]:
        return [at for at, message in warnings if text in message]

    try:
        await wait_for(lambda: len(collector.recipients_by_post()) >= 5, what="some posts delivered")

        # When the broker hangs: connections stay up but nothing answers, and new connects hang too
        await proxy.blackhole()
        hung_at = time.monotonic()
        # Then publishes in flight give up after the confirm timeout instead of waiting forever
        await wait_for(
            lambda: bool(logged("not confirmed (TimeoutError)")),
            timeout=CONFIRM_TIMEOUT + 2,
            what="a publish to time out",
        )
        # and the reconnect to the hung broker times out too (TCP connects, AMQP never answers)
        await wait_for(
            lambda: bool(logged("RabbitMQ unreachable (TimeoutError)")),
            timeout=CONFIRM_TIMEOUT * 4,
            what="a reconnect to time out",
        )
        read_hung = pipeline.stats.read
        in_flight_hung = pipeline.stats.read - pipeline.stats.handled - pipeline.stats.dead_lettered
        delivered_hung = len(collector.messages)
        await asyncio.sleep(0.5)
        assert pipeline.stats.read == read_hung, "the reader must be held while the broker hangs"
        assert len(collector.messages) == delivered_hung

        # When the broker answers again
        await proxy.restore()
        await asyncio.sleep(0.5)
        stop_writing.set()
        await writer
        await wait_for(delivered(sc, collector), timeout=30, what="every post delivered after the hang")
        await asyncio.sleep(0.3)
    finally:
        stop_writing.set()
        await writer
        worker.stop.set()
        await task
        logger.remove(sink)

    first_timeout = min(logged("not confirmed (TimeoutError)")) - hung_at
    # a publish sent just before the hang times out a little under CONFIRM_TIMEOUT after it
    assert CONFIRM_TIMEOUT - 0.5 <= first_timeout <= CONFIRM_TIMEOUT + 0.5, first_timeout
    assert in_flight_hung == MAX_IN_FLIGHT
    # Then everything is delivered once the broker is back, with the same ids and bodies
    assert_every_post_delivered_once_per_body(sc, collector)
    assert publisher.stats.reconnects >= 1
    assert publisher.stats.retried >= 1
    assert sc.world.dead.items == []


# --- connection.blocked: a broker-wide memory alarm ------------------------------------------------

TINY_WATERMARK = "0.000001"


def _rabbitmqctl() -> str:
    path = shutil.which("rabbitmqctl") or next(
        (p for p in ("/usr/sbin/rabbitmqctl", "/usr/lib/rabbitmq/bin/rabbitmqctl") if os.path.exists(p)), None
    )
    if path is None:
        pytest.fail("rabbitmqctl is not available: the blocked-connection test needs it")
    return path


def _ctl(*args: str) -> str:
    done = subprocess.run([_rabbitmqctl(), *args], capture_output=True, text=True, timeout=30, check=False)
    if done.returncode != 0:
        pytest.fail(f"rabbitmqctl {' '.join(args)} failed: {done.stderr.strip() or done.stdout.strip()}")
    return done.stdout


def _watermark_args() -> list[str]:
    """The current memory high watermark, as arguments to set_vm_memory_high_watermark."""
    status = json.loads(_ctl("status", "--formatter", "json"))
    setting = status.get("vm_memory_high_watermark_setting") or {}
    if "relative" in setting and float(setting["relative"]) >= 0.01:
        return [str(setting["relative"])]
    if "absolute" in setting and int(setting["absolute"]) >= 64 * 1024 * 1024:
        return ["absolute", str(setting["absolute"])]
    # Missing, or a tiny value left behind by an interrupted run: RabbitMQ's default.
    return ["0.4"]


def _alarms() -> list[Any]:
    return list(json.loads(_ctl("status", "--formatter", "json")).get("alarms") or [])


@pytest.fixture
def memory_watermark() -> Iterator[list[str]]:
    """The broker's watermark before the test; restored after it whatever happens (even a timeout)."""
    original = _watermark_args()
    yield original
    _ctl("set_vm_memory_high_watermark", *original)


async def _ctl_async(*args: str) -> None:
    await asyncio.to_thread(_ctl, *args)


async def test_blocked_connection_pauses_publishing_and_loses_nothing(
    redis: aioredis.Redis,
    key_prefix: str,
    exchange: str,
    collector: Collector,
    proxy: TcpProxy,
    memory_watermark: list[str],
) -> None:
    # Given a running worker with posts flowing
    sc = scenario(13)
    cfg = settings(key_prefix, exchange, chunk_size=CHUNK, max_in_flight_events=MAX_IN_FLIGHT)
    publisher = RecordingPublisher(proxy.port, exchange)
    runtime = sc.world.runtime(cfg, redis, publisher)
    worker, task = await start(runtime)
    stop_writing = asyncio.Event()
    writer = asyncio.create_task(sc.write_posts(0.05, stop_writing))
    blocked_seen_at: float | None = None
    unblocked_at: float | None = None
    try:
        await wait_for(lambda: len(collector.recipients_by_post()) >= 5, what="some posts delivered")
        assert not publisher.blocked

        # When the broker raises a memory alarm (it blocks every publishing connection)
        await _ctl_async("set_vm_memory_high_watermark", TINY_WATERMARK)
        try:
            await wait_for(lambda: publisher.blocked, timeout=10, what="connection.blocked")
            blocked_seen_at = time.monotonic()
            posts_before_block = {p for p, t in sc.written if t < blocked_seen_at}
            await asyncio.sleep(3.0)
            still_blocked = publisher.blocked
            delivered_while_blocked = set(collector.recipients_by_post()) - posts_before_block
        finally:
            # Then, whatever happened, the alarm is cleared at once (the fixture restores it again)
            # (the alarm clears while the command runs: anything after this instant may pass)
            unblocked_at = time.monotonic()
            await _ctl_async("set_vm_memory_high_watermark", *memory_watermark)
        await wait_for(lambda: not publisher.blocked, timeout=10, what="connection.unblocked")
        await asyncio.sleep(0.5)
        stop_writing.set()
        await writer
        await wait_for(delivered(sc, collector), timeout=30, what="every post delivered after the alarm")
        await asyncio.sleep(0.3)
    finally:
        stop_writing.set()
        await writer
        worker.stop.set()
        await task

    assert _alarms() == [], "the memory alarm must be cleared"
    # Then the publisher saw the block and paused instead of reconnecting in a loop
    assert still_blocked
    assert publisher.stats.blocked_pauses >= 1
    assert publisher.stats.reconnects == 0, "a blocked connection is not a dead one"
    # and nothing written after the block was confirmed (or delivered) before the alarm cleared
    assert blocked_seen_at is not None and unblocked_at is not None
    confirmed_while_blocked = [
        mid
        for mid, at in publisher.confirmed_at.items()
        if blocked_seen_at < at < unblocked_at and mid.split(":")[1] not in posts_before_block
    ]
    assert confirmed_while_blocked == []
    assert delivered_while_blocked == set()
    # and nothing was lost: every post reached exactly its followers
    assert_every_post_delivered_once_per_body(sc, collector)
    assert sc.world.dead.items == []
