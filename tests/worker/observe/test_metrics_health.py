"""Metrics collector over a fake worker, and the health server over loopback with a raw client."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from enrichment.cache import CacheStats
from handlers.emitter import EmitStats
from handlers.posts import PostStats
from handlers.profiles import ProfileStats
from worker.observe.health import HealthServer, stale_parts, status_line, worker_alive
from worker.observe.metrics import CONTENT_TYPE, WorkerCollector, build_registry, render
from worker.ports import PublishStats
from worker.stats import StreamStats

WALL = 1_750_000_000.0
MONO = 5_000.0


class FakePipeline(SimpleNamespace):
    """``alive_at`` follows ``last_progress`` as the real pipeline's does, unless a test moves it."""

    _alive = 0.0

    @property
    def alive_at(self) -> float:
        return max(self.last_progress, self._alive)

    @alive_at.setter
    def alive_at(self, value: float) -> None:
        self._alive = value


def pipeline(stream: str, **kw: Any) -> SimpleNamespace:
    """A stand-in with every field of worker.stats.StreamView."""
    fields: dict[str, Any] = {
        "stream": stream,
        "stats": StreamStats(),
        "last_progress": time.monotonic(),
        "in_flight": 0,
        "watermark": SimpleNamespace(event_time=None),
        "checkpoint_saved_at": None,
        "checkpoint": None,
        "waiting_for": None,
        "reopen_failures": 0,
        "reopening_since": None,
    }
    fields.update(kw)
    if not hasattr(fields["watermark"], "oldest_pending_time"):
        fields["watermark"].oldest_pending_time = None
    return FakePipeline(**fields)


def fake_worker(**kw: Any) -> SimpleNamespace:
    runtime = SimpleNamespace(
        posts=SimpleNamespace(
            stats=PostStats(), invalid_follower_ids=0, emitter=SimpleNamespace(stats=EmitStats())
        ),
        profiles=SimpleNamespace(stats=ProfileStats()),
        cache=SimpleNamespace(
            stats=CacheStats(),
            l2=SimpleNamespace(mget_calls=0, errors=0, available=True),
            repairs_pending=0,
        ),
        publisher=SimpleNamespace(stats=PublishStats(), in_flight=0),
        fanout=None,
    )
    fields: dict[str, Any] = {  # every field of worker.stats.WorkerView
        "runtime": runtime,
        "pipelines": [pipeline("posts"), pipeline("profiles")],
        "role": "leader",
        "epoch": 7,
        "stop": asyncio.Event(),
        "heartbeat": time.monotonic(),
        "ready_checks": {},
    }
    fields.update(kw)
    return SimpleNamespace(**fields)


def scrape(
    worker: Any, wall: float = WALL, mono: float = MONO
) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """{(sample name, sorted labels): value} from one scrape with a fixed clock."""
    registry = CollectorRegistry()
    registry.register(WorkerCollector(worker, wall=lambda: wall, monotonic=lambda: mono))
    text = render(registry).decode()
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def key(name: str, **labels: str) -> tuple[str, tuple[tuple[str, str], ...]]:
    return (name, tuple(sorted(labels.items())))


# --- metrics -----------------------------------------------------------------------------------


def test_counters_track_the_live_stats() -> None:
    # Given a worker with some activity
    w = fake_worker()
    posts, profiles = w.pipelines
    for outcome, n in (("read", 10), ("handled", 8), ("dead_lettered", 1), ("retried", 3)):
        posts.stats.count("insert", outcome, n)
    posts.stats.batches = 4
    profiles.stats.count("update", "read", 4)
    profiles.stats.count("replace", "read", 1)
    profiles.stats.count("update", "handled", 5)
    w.runtime.profiles.stats.ignored = 2
    pub = w.runtime.publisher.stats
    pub.sent, pub.confirmed, pub.returned, pub.nacked, pub.retried, pub.reconnects = 20, 18, 1, 1, 2, 3
    pub.blocked_pauses, pub.blocked_seconds = 2, 4.5
    w.runtime.publisher.in_flight = 6
    w.runtime.posts.stats.posts, w.runtime.posts.stats.recipients = 8, 400
    w.runtime.posts.invalid_follower_ids = 5
    w.runtime.profiles.stats.stale, w.runtime.profiles.stats.unbumped = 6, 1
    w.runtime.profiles.stats.deleted = 2
    c = w.runtime.cache.stats
    c.l1_hits, c.l2_hits, c.l3_hits, c.not_found, c.source_queries = 50, 7, 3, 2, 4
    w.runtime.cache.l2.mget_calls, w.runtime.cache.l2.errors = 9, 1
    posts.in_flight = 1

    m = scrape(w)

    assert m[key("fanout_events_read_total", stream="posts", type="insert")] == 10
    assert m[key("fanout_events_finished_total", stream="posts", type="insert", outcome="handled")] == 8
    assert m[key("fanout_events_finished_total", stream="posts", type="insert", outcome="dead_lettered")] == 1
    assert m[key("fanout_event_retries_total", stream="posts", type="insert")] == 3
    assert m[key("fanout_events_read_total", stream="profiles", type="update")] == 4
    assert m[key("fanout_events_read_total", stream="profiles", type="replace")] == 1
    assert m[key("fanout_profile_updates_ignored_total")] == 2
    assert m[key("fanout_batches_total", stream="posts")] == 4
    assert m[key("fanout_in_flight_events", stream="posts")] == 1
    for name, value in [
        ("fanout_messages_published_total", 20),
        ("fanout_messages_confirmed_total", 18),
        ("fanout_messages_returned_total", 1),
        ("fanout_messages_nacked_total", 1),
        ("fanout_message_republishes_total", 2),
    ]:
        assert m[key(name)] == value
    assert m[key("fanout_publisher_reconnects_total")] == 3
    assert m[key("fanout_rabbitmq_blocked_episodes_total")] == 2
    assert m[key("fanout_rabbitmq_blocked_seconds_total")] == 4.5
    assert m[key("fanout_publishes_in_flight")] == 6
    assert m[key("fanout_posts_handled_total")] == 8
    assert m[key("fanout_recipients_total")] == 400
    assert m[key("fanout_follower_ids_skipped_total")] == 5
    assert m[key("fanout_profile_changes_stale_total")] == 6
    assert m[key("fanout_profiles_deleted_total")] == 2
    assert m[key("fanout_profile_changes_unbumped_total")] == 1
    assert m[key("fanout_cache_hits_total", layer="l1")] == 50
    assert m[key("fanout_cache_hits_total", layer="l2")] == 7
    assert m[key("fanout_cache_hits_total", layer="l3")] == 3
    assert m[key("fanout_cache_not_found_total")] == 2
    assert m[key("fanout_source_queries_total")] == 4
    assert m[key("fanout_cache_l2_reads_total")] == 9
    assert m[key("fanout_cache_l2_errors_total")] == 1
    assert m[key("fanout_redis_available")] == 1
    assert m[key("fanout_leader")] == 1
    assert m[key("fanout_leader_epoch")] == 7
    assert m[key("fanout_up")] == 1

    # When the stats move, the next scrape follows them
    posts.stats.count("insert", "handled", 5)
    w.runtime.cache.l2.available = False
    m = scrape(w)
    assert m[key("fanout_events_finished_total", stream="posts", type="insert", outcome="handled")] == 13
    assert m[key("fanout_redis_available")] == 0


def test_ages_and_lag_from_the_clocks() -> None:
    posts = pipeline(
        "posts",
        checkpoint_saved_at=WALL - 12.5,
        last_progress=MONO - 3.0,
        in_flight=2,
        watermark=SimpleNamespace(event_time=datetime.fromtimestamp(WALL - 40, UTC)),
    )
    # A quiet stream: last event long ago, nothing in flight → caught up, lag 0
    profiles = pipeline(
        "profiles",
        last_progress=MONO - 0.5,
        watermark=SimpleNamespace(event_time=datetime.fromtimestamp(WALL - 3600, UTC)),
    )
    m = scrape(fake_worker(pipelines=[posts, profiles]))
    assert m[key("fanout_checkpoint_age_seconds", stream="posts")] == pytest.approx(12.5)
    assert m[key("fanout_change_stream_lag_seconds", stream="posts")] == pytest.approx(40)
    assert m[key("fanout_last_progress_age_seconds", stream="posts")] == pytest.approx(3.0)
    assert m[key("fanout_change_stream_lag_seconds", stream="profiles")] == 0
    assert m[key("fanout_last_progress_age_seconds", stream="profiles")] == pytest.approx(0.5)
    # No checkpoint saved or loaded yet: age unknown, so absent
    assert key("fanout_checkpoint_age_seconds", stream="profiles") not in m


def test_oldest_pending_time_is_preferred_and_loaded_checkpoint_is_the_fallback() -> None:
    mark = SimpleNamespace(
        event_time=datetime.fromtimestamp(WALL - 3600, UTC),
        oldest_pending_time=datetime.fromtimestamp(WALL - 2, UTC),
    )
    loaded = SimpleNamespace(saved_at=datetime.fromtimestamp(WALL - 300, UTC))
    p = pipeline("posts", in_flight=1, watermark=mark, checkpoint=loaded)
    m = scrape(fake_worker(pipelines=[p]))
    assert m[key("fanout_change_stream_lag_seconds", stream="posts")] == pytest.approx(2)
    assert m[key("fanout_checkpoint_age_seconds", stream="posts")] == pytest.approx(300)


def test_unknown_event_time_in_flight_is_absent() -> None:
    p = pipeline("posts", in_flight=3)  # no checkpoint, nothing handled yet
    assert key("fanout_change_stream_lag_seconds", stream="posts") not in scrape(fake_worker(pipelines=[p]))


def test_standby_has_no_stream_ages_and_leader_zero() -> None:
    stale = pipeline("posts", last_progress=MONO - 999, checkpoint_saved_at=WALL - 999)
    stale.stats.count("insert", "read", 0)
    m = scrape(fake_worker(role="standby", epoch=3, pipelines=[stale]))
    assert m[key("fanout_leader")] == 0
    assert m[key("fanout_leader_epoch")] == 3
    assert not any(name.endswith(("_age_seconds", "_lag_seconds")) for name, _ in m)
    assert m[key("fanout_events_read_total", stream="posts", type="insert")] == 0  # counters stay


def test_no_redis_no_pipelines_and_no_election() -> None:
    w = fake_worker(pipelines=[], role="leader", epoch=0)  # what a Worker without election reports
    w.runtime.cache.l2 = None
    m = scrape(w)
    assert not any("l2" in name or "redis" in name for name, _ in m)
    assert m[key("fanout_leader")] == 1  # no election: the worker always tails
    assert m[key("fanout_leader_epoch")] == 0


def test_registry_per_worker_not_the_global_one() -> None:
    a, b = build_registry(fake_worker()), build_registry(fake_worker())
    assert a is not b
    assert b"fanout_up 1.0" in render(a)
    assert REGISTRY.get_sample_value("fanout_up") is None


# --- health server -----------------------------------------------------------------------------


@pytest.fixture
def worker() -> SimpleNamespace:
    return fake_worker()


@pytest.fixture
async def server(worker: SimpleNamespace) -> AsyncIterator[HealthServer]:
    srv = HealthServer(worker, "127.0.0.1", 0, watchdog_seconds=30, read_timeout=0.3, check_timeout=0.1)
    await srv.start()
    yield srv
    await srv.close()


async def http(port: int, raw: bytes) -> tuple[int, dict[str, str], bytes]:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(raw)
        await writer.drain()
        data = await asyncio.wait_for(reader.read(), 5)  # the server closes after one response
    finally:
        writer.close()
        await writer.wait_closed()
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.split(": ", 1) for line in lines[1:])
    return int(lines[0].split(" ")[1]), {k.lower(): v for k, v in headers.items()}, body


async def get(port: int, path: str) -> tuple[int, dict[str, str], bytes]:
    return await http(port, f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())


async def test_port_zero_binds_a_real_port(server: HealthServer) -> None:
    assert server.port > 0


async def test_healthz_ok(server: HealthServer) -> None:
    status, headers, body = await get(server.port, "/healthz?probe=1")
    assert status == 200
    assert headers["connection"] == "close"
    assert json.loads(body) == {"status": "ok", "role": "leader"}


async def test_healthz_names_the_stale_stream(server: HealthServer, worker: SimpleNamespace) -> None:
    worker.pipelines[1].last_progress = time.monotonic() - 45
    status, _, body = await get(server.port, "/healthz")
    assert status == 503
    payload = json.loads(body)
    assert payload["status"] == "stale"
    assert list(payload["seconds_since_progress"]) == ["profiles"]


async def test_healthz_stays_ok_while_a_stream_waits_on_backpressure_or_a_dependency(
    server: HealthServer, worker: SimpleNamespace
) -> None:
    # Given a leader whose posts reader has not seen a getMore for long, because in-flight work is
    # full (the broker is away): the reader is waiting, alive
    worker.pipelines[0].last_progress = time.monotonic() - 999
    worker.pipelines[0].alive_at = time.monotonic()
    worker.pipelines[0].waiting_for = "room in flight"
    status, _, body = await get(server.port, "/healthz")
    assert status == 200
    assert json.loads(body)["waiting_for"] == {"posts": "room in flight"}


async def test_healthz_fails_when_the_event_loop_heartbeat_is_stale(
    server: HealthServer, worker: SimpleNamespace
) -> None:
    worker.heartbeat = time.monotonic() - 45
    status, _, body = await get(server.port, "/healthz")
    assert status == 503
    assert "event loop" in json.loads(body)["seconds_since_progress"]
    assert "event loop" in stale_parts(worker, 30)


async def test_healthz_ignores_streams_when_standby_or_stopping(
    server: HealthServer, worker: SimpleNamespace
) -> None:
    worker.pipelines[0].last_progress = time.monotonic() - 999
    worker.role = "standby"
    assert (await get(server.port, "/healthz"))[0] == 200
    worker.role = "leader"
    worker.stop.set()
    assert (await get(server.port, "/healthz"))[0] == 200


async def test_readyz_follows_role_checks_and_stop(server: HealthServer, worker: SimpleNamespace) -> None:
    worker.role = "starting"
    status, _, body = await get(server.port, "/readyz")
    assert status == 503
    assert json.loads(body)["ready"] is False

    async def ok() -> bool:
        return True

    async def down() -> bool:
        return False

    async def broken() -> bool:
        raise ConnectionRefusedError

    async def hangs() -> bool:
        await asyncio.sleep(10)
        return True

    worker.role = "standby"
    worker.ready_checks = {"mongo": ok, "redis": ok}
    status, _, body = await get(server.port, "/readyz")
    assert status == 200
    assert json.loads(body)["checks"] == {"mongo": "ok", "redis": "ok"}

    worker.ready_checks = {"mongo": ok, "redis": down, "rabbitmq": broken, "slow": hangs}
    status, _, body = await get(server.port, "/readyz")
    assert status == 503
    assert json.loads(body)["checks"] == {
        "mongo": "ok",
        "redis": "failed",
        "rabbitmq": "error: ConnectionRefusedError",
        "slow": "timeout",
    }

    worker.ready_checks = {"mongo": ok}
    worker.stop.set()
    status, _, body = await get(server.port, "/readyz")
    assert status == 503
    assert json.loads(body)["stopping"] is True


async def test_readyz_without_checks_is_the_role(server: HealthServer, worker: SimpleNamespace) -> None:
    assert (await get(server.port, "/readyz"))[0] == 200


async def test_metrics_endpoint(server: HealthServer, worker: SimpleNamespace) -> None:
    worker.pipelines[0].stats.count("insert", "read", 42)
    status, headers, body = await get(server.port, "/metrics")
    assert status == 200
    assert headers["content-type"] == CONTENT_TYPE == "text/plain; version=0.0.4; charset=utf-8"
    assert int(headers["content-length"]) == len(body)
    names = {f.name for f in text_string_to_metric_families(body.decode())}
    assert {"fanout_events_read", "fanout_up", "fanout_leader", "fanout_last_progress_age_seconds"} <= names
    assert 'fanout_events_read_total{stream="posts",type="insert"} 42.0' in body.decode()


async def test_head_has_no_body(server: HealthServer) -> None:
    status, headers, body = await http(server.port, b"HEAD /metrics HTTP/1.1\r\n\r\n")
    assert status == 200
    assert int(headers["content-length"]) > 0
    assert body == b""


async def test_unknown_path_404(server: HealthServer) -> None:
    assert (await get(server.port, "/admin"))[0] == 404


async def test_other_methods_405(server: HealthServer) -> None:
    status, headers, _ = await http(server.port, b"POST /healthz HTTP/1.1\r\nContent-Length: 0\r\n\r\n")
    assert status == 405
    assert headers["allow"] == "GET, HEAD"


async def test_garbage_request_400(server: HealthServer) -> None:
    assert (await http(server.port, b"hello\r\n\r\n"))[0] == 400


async def test_oversized_head_431(server: HealthServer) -> None:
    raw = b"GET /healthz HTTP/1.1\r\nX-Pad: " + b"a" * 9_000 + b"\r\n\r\n"
    assert (await http(server.port, raw))[0] == 431


async def test_silent_client_times_out_408(server: HealthServer) -> None:
    started = time.monotonic()
    assert (await http(server.port, b"GET /healthz HTTP/1.1\r\n"))[0] == 408
    assert time.monotonic() - started < 3


async def test_close_drops_open_connections(worker: SimpleNamespace) -> None:
    srv = HealthServer(worker, "127.0.0.1", 0, watchdog_seconds=30)  # 5 s read timeout
    await srv.start()
    reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
    await asyncio.sleep(0.05)  # let the server accept it
    await asyncio.wait_for(srv.close(), 2)
    assert await asyncio.wait_for(reader.read(), 2) == b""
    writer.close()
    await writer.wait_closed()


# --- helpers for the systemd watchdog ----------------------------------------------------------


def test_worker_progress_and_status_line() -> None:
    w = fake_worker()
    w.pipelines[0].stats.handled, w.pipelines[0].in_flight = 5, 2
    assert worker_alive(w, 30)
    assert status_line(w) == "leader epoch 7; posts: 5 handled, 2 in flight; profiles: 0 handled, 0 in flight"
    w.pipelines[0].last_progress = time.monotonic() - 60
    assert not worker_alive(w, 30)  # the watchdog follows /healthz
    w.role = "standby"  # nothing to tail: only the loop is judged
    assert worker_alive(w, 30)


# --- idle and slow connections must not starve the probes ---------------------------------------


async def test_idle_connections_beyond_the_cap_do_not_starve_healthz(worker: SimpleNamespace) -> None:
    # Given more idle connections (open, nothing sent) than the listener has slots
    from worker.observe.health import MAX_CONNECTIONS

    server = HealthServer(worker, "127.0.0.1", 0, watchdog_seconds=30)  # the default read timeout
    await server.start()
    idle = [await asyncio.open_connection("127.0.0.1", server.port) for _ in range(MAX_CONNECTIONS + 44)]
    try:
        await asyncio.sleep(0.1)  # all accepted
        # When a probe arrives, it is answered at once: the oldest idle connection made room
        status, _, body = await asyncio.wait_for(get(server.port, "/healthz"), 2)
        assert status == 200, body
        assert server.evicted > 0
    finally:
        for _, writer in idle:
            writer.close()
        await server.close()


async def test_idle_connections_are_dropped_after_the_read_timeout(worker: SimpleNamespace) -> None:
    srv = HealthServer(worker, "127.0.0.1", 0, watchdog_seconds=30)  # the default read timeout
    await srv.start()
    try:
        reader, writer = await asyncio.open_connection("127.0.0.1", srv.port)
        started = time.monotonic()
        data = await asyncio.wait_for(reader.read(), 10)
        assert b" 408 " in data.split(b"\r\n", 1)[0]
        assert time.monotonic() - started < 4  # seconds, not the old 5 s per idle socket
        writer.close()
    finally:
        await srv.close()


def test_the_listener_binds_loopback_unless_told_otherwise() -> None:
    from worker.settings import Settings

    assert Settings().health.host == "127.0.0.1"
