"""Shutdown is bounded whatever is down: the real daemon, each dependency cut under load, SIGTERM.

The daemon reaches WireMongo (the MongoDB wire stand-in), Redis and RabbitMQ through TcpProxies the
test controls; the collector consumes from the real broker directly. After the cut, a SIGTERM must
end the process with exit 0 within ``shutdown_deadline_seconds`` plus a few seconds — by the normal
shutdown path, not the last-resort guard (which exits 1) — and the checkpoint must not pass a post
whose messages did not all reach the broker.
"""

from __future__ import annotations

import asyncio
import signal
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime

import pytest

from tests.faults.daemon import (
    DB,
    LEASES,
    REDIS_URL,
    AggregateRecorder,
    Daemon,
    Daemons,
    checkpoint,
    insert_positions,
    wait_until,
    worker_env,
)
from tests.faults.proxy import TcpProxy
from tests.harness import Collector
from tests.support.wire_mongo import WireMongo

pytestmark = pytest.mark.timeout(60)

DEADLINE = 3.0  # pipeline.shutdown_deadline_seconds
SLACK = 5.0  # the few seconds the issue allows past the deadline
FOLLOWERS = {f"a{n}": [f"a{n}-f{i:02d}" for i in range(count)] for n, count in enumerate((3, 7, 12, 23, 1))}


class Proxies:
    def __init__(self, wm: WireMongo) -> None:
        redis_port = int(REDIS_URL.rsplit(":", 1)[1].split("/")[0])
        self.by_name = {
            "mongodb": TcpProxy("127.0.0.1", wm.port),
            "redis": TcpProxy("127.0.0.1", redis_port),
            "rabbitmq": TcpProxy("127.0.0.1", 5672),
        }

    def env(self) -> dict[str, str]:
        p = {name: proxy.port for name, proxy in self.by_name.items()}
        db = REDIS_URL.rsplit("/", 1)[1]
        return {
            # directConnection: the replica set's hello names WireMongo's own port, not the proxy's.
            "FANOUT_MONGO__URI": f"mongodb://127.0.0.1:{p['mongodb']}/?directConnection=true",
            "FANOUT_REDIS__URL": f"redis://127.0.0.1:{p['redis']}/{db}",
            "FANOUT_RABBITMQ__URL": f"amqp://guest:guest@127.0.0.1:{p['rabbitmq']}/",
        }


@pytest.fixture
async def proxies(wm: WireMongo) -> AsyncIterator[Proxies]:
    px = Proxies(wm)
    for proxy in px.by_name.values():
        await proxy.start()
    yield px
    for proxy in px.by_name.values():
        await proxy.close()


class Writer:
    """Inserts a post every few milliseconds, rotating over the authors, until stopped."""

    def __init__(self, wm: WireMongo) -> None:
        self.wm = wm
        self.authors: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None

    async def _run(self) -> None:
        authors = sorted(FOLLOWERS)
        n = 0
        while True:
            post_id = f"s{n:05d}"
            self.wm.db(DB).insert(
                "posts", {"_id": post_id, "author_id": authors[n % len(authors)], "text": "x"}
            )
            self.authors[post_id] = authors[n % len(authors)]
            n += 1
            await asyncio.sleep(0.01)

    def start(self) -> None:
        self._task = asyncio.create_task(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)


@pytest.fixture
async def writer(wm: WireMongo) -> AsyncIterator[Writer]:
    w = Writer(wm)
    yield w
    await w.stop()


async def start_under_load(
    wm: WireMongo,
    proxies: Proxies,
    daemons: Daemons,
    writer: Writer,
    collector: Collector,
    exchange: str,
    key_prefix: str,
    **extra: str,
) -> Daemon:
    recorder = AggregateRecorder(wm)
    env = worker_env(
        wm,
        exchange,
        key_prefix,
        FANOUT_PIPELINE__SHUTDOWN_DEADLINE_SECONDS=str(DEADLINE),
        FANOUT_PIPELINE__CHUNK_SIZE="5",
        FANOUT_PIPELINE__MAX_IN_FLIGHT_EVENTS="50",
        FANOUT_RABBITMQ__CONFIRM_TIMEOUT_SECONDS="1",
        FANOUT_RABBITMQ__RECONNECT_MAX_SECONDS="1",
        FANOUT_REDIS__SOCKET_TIMEOUT_SECONDS="0.3",
        **proxies.env(),
        **extra,
    )
    daemon = daemons.spawn(env)
    await daemon.log_line("leader now", 15)
    await wait_until(lambda: recorder.change_streams("posts"), 10, "the posts change stream to open")
    writer.start()
    await wait_until(lambda: len(collector.of("post.created")) >= 30, 15, "posts delivered before the cut")
    # A checkpoint past some posts, so the check after the stop is not vacuous.
    await wait_until(lambda: (checkpoint(wm) or {}).get("token"), 10, "a posts checkpoint with a token")
    return daemon


async def assert_stops_in_time(daemon: Daemon) -> None:
    signalled = time.monotonic()
    daemon.terminate()
    code = await daemon.exited(DEADLINE + SLACK + 10)
    took = time.monotonic() - signalled
    assert code == 0, f"exit {code} after {took:.1f}s"
    assert took <= DEADLINE + SLACK, f"took {took:.1f}s to stop after SIGTERM"
    print(f"stopped in {took:.1f}s after SIGTERM")
    assert daemon.find_log("SIGTERM received: stopping") is not None
    assert daemon.find_log("fanout-worker stopped") is not None


async def assert_checkpoint_covers_only_delivered(
    wm: WireMongo, writer: Writer, collector: Collector, daemons: Daemons, proxies: Proxies, stopped: Daemon
) -> None:
    """Every post the checkpoint passed is delivered: its jobs were confirmed into the durable job
    queues before the checkpoint could pass it, so a fan-out worker started afterwards (with every
    dependency back) fans out whatever the stopped process had not."""
    for proxy in proxies.by_name.values():
        await proxy.restore()
    fanout = daemons.spawn({**stopped.env, "FANOUT_FANOUT__ROLE": "fanout"}, name="fan-out after the stop")
    await fanout.log_line("running", 15)
    cp = checkpoint(wm)
    assert cp is not None and cp.get("token"), "no posts checkpoint was ever saved"
    mark = cp["token"]["_data"]
    positions = insert_positions(wm)
    covered = {p: a for p, a in writer.authors.items() if positions[p] <= mark}

    def delivered() -> bool:
        got = collector.recipients_by_post()
        return all(got.get(p) == set(FOLLOWERS[a]) for p, a in covered.items())

    # Whatever the broker confirmed reaches the collector shortly; what it never got would not.
    await wait_until(delivered, 15, f"every one of the {len(covered)} checkpointed posts delivered")
    fanout.terminate()
    assert await fanout.exited(DEADLINE + SLACK + 10) == 0


@pytest.mark.parametrize("dependency", ["mongodb", "redis", "rabbitmq"])
async def test_sigterm_under_load_exits_0_within_the_deadline_whichever_dependency_is_down(
    dependency: str,
    wm: WireMongo,
    proxies: Proxies,
    daemons: Daemons,
    writer: Writer,
    collector: Collector,
    exchange: str,
    key_prefix: str,
) -> None:
    # Given a leader fanning out a steady stream of posts
    daemon = await start_under_load(wm, proxies, daemons, writer, collector, exchange, key_prefix)
    # When one dependency is cut (connections reset, new ones refused) and stays down
    await proxies.by_name[dependency].cut()
    await asyncio.sleep(2.0)
    # Then SIGTERM ends the process cleanly within the deadline plus a few seconds
    await assert_stops_in_time(daemon)
    await writer.stop()
    # and the checkpoint passed nothing that was not confirmed by the broker
    await assert_checkpoint_covers_only_delivered(wm, writer, collector, daemons, proxies, daemon)


async def test_leadership_lost_while_mongodb_is_down_then_sigterm_exits_0_in_time(
    wm: WireMongo,
    proxies: Proxies,
    daemons: Daemons,
    writer: Writer,
    collector: Collector,
    exchange: str,
    key_prefix: str,
) -> None:
    # Given a leader under load whose MongoDB goes away for good
    daemon = await start_under_load(wm, proxies, daemons, writer, collector, exchange, key_prefix)
    await proxies.by_name["mongodb"].cut()
    # When it cannot renew its lease and gives the streams up
    await daemon.log_line("leadership lost", 10)
    # the term ends (bounded) and it is back to standby, trying for the lease, although MongoDB is down
    await daemon.log_line("lease store unavailable", 10)
    # Then it is a standby that still stops at once on SIGTERM
    await assert_stops_in_time(daemon)
    await writer.stop()
    await assert_checkpoint_covers_only_delivered(wm, writer, collector, daemons, proxies, daemon)


async def test_sighup_is_a_logged_clean_stop_that_releases_the_lease(
    wm: WireMongo, daemons: Daemons, exchange: str, key_prefix: str
) -> None:
    # Given a leader
    daemon = daemons.spawn(worker_env(wm, exchange, key_prefix))
    await daemon.log_line("stream posts starting", 15)
    # When it gets SIGHUP
    daemon.proc.send_signal(signal.SIGHUP)
    # Then it says so, stops cleanly, and hands the lease back instead of leaving it to expire
    assert await daemon.exited(DEADLINE + SLACK + 5) == 0
    assert daemon.find_log("SIGHUP received: stopping") is not None
    assert daemon.find_log("fanout-worker stopped") is not None
    lease = wm.db(DB).find_one(LEASES)
    assert lease is not None
    assert lease["expires_at"].replace(tzinfo=UTC) <= datetime.now(UTC)
