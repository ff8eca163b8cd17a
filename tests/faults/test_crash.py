"""SIGKILL of the real daemon mid-stream: a successor takes the lease over and replays from the checkpoint.

Runs ``fanout-worker run`` as a subprocess against WireMongo (the MongoDB wire stand-in, owned by
this process, so it outlives the killed worker) and the real Redis and RabbitMQ, in both
deployments: role ``all`` (one process), and split (a ``tailer`` killed between the broker's confirm
of its jobs and its next checkpoint, while a separate ``fanout`` process keeps consuming the jobs).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest
import redis.asyncio as aioredis

from tests.faults.daemon import (
    DB,
    DEPLOYMENTS,
    LEASES,
    AggregateRecorder,
    Daemons,
    checkpoint,
    fanout_beside,
    insert_positions,
    wait_until,
    worker_env,
)
from tests.harness import Collector
from tests.support.wire_mongo import WireMongo

TTL = 3.0  # FANOUT_LEADER__TTL_SECONDS in worker_env
RENEW = 1.0  # FANOUT_LEADER__RENEW_INTERVAL_SECONDS
CHECKPOINT_INTERVAL = 2.0
FOLLOWERS = {f"a{n}": [f"a{n}-f{i:02d}" for i in range(count)] for n, count in enumerate((3, 7, 12, 23, 1))}


class Writer:
    """Inserts a post every ``interval`` seconds until stopped, rotating over the authors."""

    def __init__(self, wm: WireMongo, interval: float = 0.015) -> None:
        self.wm = wm
        self.interval = interval
        self.authors: dict[str, str] = {}  # post id → author
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        authors = sorted(FOLLOWERS)
        n = 0
        while True:
            post_id = f"c{n:05d}"
            author = authors[n % len(authors)]
            self.wm.db(DB).insert("posts", {"_id": post_id, "author_id": author, "text": f"post {n}"})
            self.authors[post_id] = author
            n += 1
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        assert self._task is not None
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task


@pytest.fixture
async def writer(wm: WireMongo) -> AsyncIterator[Writer]:
    w = Writer(wm)
    yield w
    if w._task is not None:
        await w.stop()


async def _settled(collector: Collector, quiet: float = 1.0, timeout: float = 15.0) -> None:
    """Wait until no message has arrived for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    seen, since = len(collector.messages), time.monotonic()
    while time.monotonic() - since < quiet:
        assert time.monotonic() < deadline, "the messages never settled"
        await asyncio.sleep(0.1)
        if len(collector.messages) != seen:
            seen, since = len(collector.messages), time.monotonic()


def _epoch(leader_line: str) -> int:
    m = re.search(r"epoch (\d+)", leader_line)
    assert m, leader_line
    return int(m[1])


@pytest.mark.timeout(120)
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
async def test_sigkill_mid_stream_loses_nothing_and_replays_only_after_the_checkpoint(
    deployment: str,
    wm: WireMongo,
    daemons: Daemons,
    writer: Writer,
    collector: Collector,
    exchange: str,
    key_prefix: str,
    redis: aioredis.Redis,
) -> None:
    recorder = AggregateRecorder(wm)
    # Checkpoints every 2 s (not 0.1 s), so the kill can be timed to fall well inside an interval,
    # with posts already delivered past the checkpoint: their replay is certain, not luck.
    env = worker_env(
        wm,
        exchange,
        key_prefix,
        FANOUT_PIPELINE__CHUNK_SIZE="5",
        FANOUT_PIPELINE__CHECKPOINT_INTERVAL_SECONDS=str(CHECKPOINT_INTERVAL),
    )
    # Split: the jobs outlive the tailer in their durable queues; one fan-out process serves both.
    env, fanout = await fanout_beside(daemons, env, deployment)

    first = daemons.spawn(env, "first")
    first_epoch = _epoch(await first.log_line("leader now", 15))
    # The posts stream opens "from now": write only once it is open.
    await wait_until(lambda: recorder.change_streams("posts"), 10, "the posts change stream to open")
    writer.start()

    def mid_interval() -> bool:
        """Some posts are delivered past the saved checkpoint, and the next save is not due yet."""
        cp = checkpoint(wm)
        if cp is None or cp["event_time"] is None or len(collector.of("post.created")) < 40:
            return False
        age = (datetime.now(UTC) - cp["saved_at"].replace(tzinfo=UTC)).total_seconds()
        positions = insert_positions(wm)
        beyond = {
            m.correlation_id
            for m in collector.of("post.created")
            if positions.get(m.correlation_id, "") > cp["token"]["_data"]
        }
        return len(beyond) >= 5 and age < CHECKPOINT_INTERVAL - 0.7

    await wait_until(mid_interval, 20, "posts delivered past a fresh checkpoint")
    first.kill()
    killed_at = time.monotonic()
    assert first.returncode == -9
    # Whatever the dead worker had already sent reaches WireMongo and the collector meanwhile (split:
    # the fan-out process drains the jobs the dead tailer had confirmed).
    await asyncio.sleep(0.5)
    if fanout is not None:
        await _settled(collector)
    dead_checkpoint = checkpoint(wm)
    assert dead_checkpoint is not None, "the first daemon never saved a posts checkpoint"
    assert dead_checkpoint["epoch"] == first_epoch
    lease = wm.db(DB).find_one(LEASES)
    assert lease is not None
    assert lease["epoch"] == first_epoch
    from_dead = len(collector.messages)  # every message before this index came from the dead daemon
    mark = dead_checkpoint["token"]["_data"]
    positions = insert_positions(wm)
    delivered_past_checkpoint = {
        m.message_id for m in collector.messages[:from_dead] if positions.get(m.correlation_id, "") > mark
    }
    assert delivered_past_checkpoint, "the dead daemon had delivered nothing past its checkpoint"
    aggregates_before = len(recorder.commands)

    second = daemons.spawn(env, "second")
    second_epoch = _epoch(await second.log_line("leader now", 15))
    takeover = time.monotonic() - killed_at
    assert second.find_log("standby: another worker holds the lease") is not None, (
        "the successor took over while the dead daemon's lease was still valid"
    )
    assert takeover <= TTL + RENEW + 2.0, f"takeover took {takeover:.1f}s with a {TTL}s lease"
    assert second_epoch > first_epoch

    await asyncio.sleep(1.0)  # keep writing for a while under the new leader
    await writer.stop()
    posts = dict(writer.authors)

    def complete() -> bool:
        got = collector.recipients_by_post()
        return all(got.get(p) == set(FOLLOWERS[a]) for p, a in posts.items())

    await wait_until(complete, 20, f"all {len(posts)} posts delivered to every follower")
    await asyncio.sleep(0.3)  # late duplicates, if any, arrive too
    assert await second.stopped() == 0
    if fanout is not None:
        assert await fanout.stopped() == 0

    # No recipient lost, none invented.
    got = collector.recipients_by_post()
    assert set(got) == set(posts)
    for post_id, author in posts.items():
        assert got[post_id] == set(FOLLOWERS[author]), post_id

    # The successor resumed exactly after the dead daemon's checkpoint.
    new_streams = recorder.change_streams("posts", since=aggregates_before)
    assert new_streams, "the successor never opened the posts stream"
    assert new_streams[0].get("resumeAfter") == dead_checkpoint["token"]
    positions = insert_positions(wm)
    after = {p for p in posts if positions[p] > mark}
    assert after, "no post was written after the checkpoint: the crash tested nothing"
    replayed = {m.correlation_id for m in collector.messages[from_dead:] if m.routing_key == "post.created"}
    assert replayed == after, "the successor must handle exactly the posts after the checkpoint"

    # Duplicates only for posts after the checkpoint, each with the very same body.
    by_id: dict[str, list[dict[str, object]]] = {}
    for m in collector.of("post.created"):
        by_id.setdefault(m.message_id, []).append(m.body)
    duplicated = {mid: bodies for mid, bodies in by_id.items() if len(bodies) > 1}
    for message_id, bodies in duplicated.items():
        post_id = message_id.split(":")[1]
        assert post_id in after, f"{message_id} duplicated although its post is before the checkpoint"
        assert all(b == bodies[0] for b in bodies), f"{message_id} replayed with a different body"
    # What the dead daemon delivered past its checkpoint was all delivered again (at-least-once).
    assert delivered_past_checkpoint <= set(duplicated)

    # Fencing: the successor's checkpoint carries its newer epoch.
    final = checkpoint(wm)
    assert final is not None
    assert final["epoch"] == second_epoch
    assert final["token"]["_data"] >= max(positions[p] for p in posts)
    lease = wm.db(DB).find_one(LEASES)
    assert lease is not None
    assert lease["epoch"] == second_epoch
    print(
        f"\n{len(posts)} posts, {len(after)} after the checkpoint, {len(duplicated)} duplicated "
        f"message ids, takeover {takeover:.2f}s, epochs {first_epoch} → {second_epoch}"
    )
