"""Metric conventions: labelled counters that sum, the latency histogram, build info and the
process collectors, and ``promtool check metrics`` clean on a live scrape of the real endpoint."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from bson import Timestamp
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from handlers.events import ChangeEvent
from tests.support.tools import require_tool
from tests.worker.observe.test_metrics_health import fake_worker, get, key, scrape
from worker.observe.health import HealthServer
from worker.observe.metrics import build_registry, render
from worker.observe.process_metrics import package_version
from worker.stats import FanoutStats, LatencyHistogram, StreamStats

NOW = 1_750_000_000.0


def promtool_check(text: bytes) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [require_tool("promtool"), "check", "metrics"],
        input=text.decode(),
        capture_output=True,
        text=True,
        timeout=30,
    )


def event(**raw: object) -> ChangeEvent:
    return ChangeEvent.from_raw("posts", {"_id": {"_data": "00"}, "operationType": "insert", **raw})


def busy_worker() -> SimpleNamespace:
    """A worker with every family present: fan-out workers on both lanes, Redis, latencies."""
    w = fake_worker()
    lanes = {
        "ordinary": SimpleNamespace(stats=FanoutStats(10, 7, 2, 2, 1, 1), in_flight=0),
        "bulk": SimpleNamespace(stats=FanoutStats(4, 3, 1, 1, 0, 0), in_flight=1),
    }
    w.runtime.fanout = SimpleNamespace(
        consumers=lanes,
        depths={"ordinary": 5, "bulk": None, "deferred": 0, "dead": 1},
        oldest_job_ages=lambda: {"ordinary": 2.0},
        connected=True,
        reconnects=1,
    )
    w.runtime.posts.emitter.stats.ordinary, w.runtime.posts.emitter.stats.bulk = 6, 4
    posts = w.pipelines[0]
    posts.stats.count("insert", "read", 3)
    posts.stats.count("insert", "handled", 2)
    posts.stats.count("insert", "dead_lettered", 1)
    wall = datetime.fromtimestamp(NOW, UTC)
    posts.stats.observe_handled(event(wallTime=wall - timedelta(seconds=0.3)), now=NOW)
    posts.stats.observe_handled(event(wallTime=wall - timedelta(seconds=4)), now=NOW)
    return w


def test_job_counters_split_so_each_labelled_one_sums() -> None:
    # Given fan-out workers that received 14 deliveries and settled 12 of them
    m = scrape(busy_worker())
    # Then the settled outcomes are disjoint and sum to what was settled; the parts of a count
    # (redelivered, malformed) are counters of their own
    settled = {
        lane: sum(
            m[key("fanout_jobs_settled_total", lane=lane, outcome=o)]
            for o in ("acked", "requeued", "dead_lettered")
        )
        for lane in ("ordinary", "bulk")
    }
    assert settled == {"ordinary": 7 + 2 + 1, "bulk": 3 + 1 + 0}
    assert m[key("fanout_jobs_received_total", lane="ordinary")] == 10
    assert m[key("fanout_jobs_redelivered_total", lane="ordinary")] == 2
    assert m[key("fanout_jobs_malformed_total", lane="ordinary")] == 1
    assert m[key("fanout_jobs_published_total", lane="ordinary")] == 6
    assert m[key("fanout_jobs_published_total", lane="bulk")] == 4
    assert m[key("fanout_job_queue_depth", lane="ordinary")] == 5
    assert key("fanout_job_queue_depth", lane="bulk") not in m  # unknown depth: absent, not 0
    # and events finished (handled + dead_lettered) sum to the events read minus those in flight
    finished = sum(
        m[key("fanout_events_finished_total", stream="posts", type="insert", outcome=o)]
        for o in ("handled", "dead_lettered")
    )
    assert finished == m[key("fanout_events_read_total", stream="posts", type="insert")] == 3


def test_no_family_mixes_a_total_into_its_labels_and_every_one_has_help() -> None:
    text = render(build_registry(busy_worker())).decode()
    for family in text_string_to_metric_families(text):
        assert family.documentation, f"{family.name} has no HELP"
        if family.type == "gauge":
            assert not family.name.endswith("_total"), family.name
        outcomes = {s.labels.get("outcome") for s in family.samples} - {None}
        assert not outcomes & {"total", "all", "read", "published"}, (family.name, outcomes)


def test_latency_histogram_buckets_an_event_by_its_wall_time_else_its_cluster_time() -> None:
    stats = StreamStats()
    wall = datetime.fromtimestamp(NOW, UTC)
    # Given events written 0.3 s ago (wallTime), 7 s ago (clusterTime only, whole seconds), in the
    # future (a clock behind MongoDB's), and one that does not say when it was written
    stats.observe_handled(event(wallTime=wall - timedelta(seconds=0.3)), now=NOW)
    stats.observe_handled(event(clusterTime=Timestamp(int(NOW) - 7, 1)), now=NOW)
    stats.observe_handled(event(wallTime=wall + timedelta(seconds=2)), now=NOW)
    stats.observe_handled(event(), now=NOW)
    # Then three are observed, each in the first bucket that holds it, the future one as 0
    h = stats.latency
    assert h.count == 3
    assert h.total == pytest.approx(7.3)
    cumulative = dict(h.cumulative())
    assert cumulative[0.05] == 1
    assert cumulative[0.25] == 1
    assert cumulative[0.5] == 2
    assert cumulative[5.0] == 2
    assert cumulative[10.0] == 3
    assert cumulative[float("inf")] == 3


def test_latency_histogram_is_exported_with_buckets_sum_and_count() -> None:
    m = scrape(busy_worker())
    assert m[key("fanout_event_latency_seconds_count", stream="posts")] == 2
    assert m[key("fanout_event_latency_seconds_sum", stream="posts")] == pytest.approx(4.3)
    assert m[key("fanout_event_latency_seconds_bucket", stream="posts", le="0.5")] == 1
    assert m[key("fanout_event_latency_seconds_bucket", stream="posts", le="+Inf")] == 2
    assert m[key("fanout_event_latency_seconds_count", stream="profiles")] == 0


def test_a_naive_wall_time_is_taken_as_utc() -> None:
    stats = StreamStats()
    naive = datetime.fromtimestamp(NOW - 1, UTC).replace(tzinfo=None)
    stats.observe_handled(event(wallTime=naive), now=NOW)
    assert stats.latency.total == pytest.approx(1.0)


def test_empty_histogram_counts_nothing() -> None:
    assert LatencyHistogram().cumulative()[-1] == (float("inf"), 0)


def test_build_info_and_process_collectors_on_the_workers_own_registry() -> None:
    # Given the global registry as prometheus_client left it
    before = set(REGISTRY._names_to_collectors)
    # When a worker's registry is built and scraped
    text = render(build_registry(fake_worker())).decode()
    # Then it carries the version, the process, platform and GC metrics
    assert f'fanout_worker_build_info{{version="{package_version()}"}} 1.0' in text
    assert package_version() != "unknown"
    for name in ("process_cpu_seconds_total", "process_resident_memory_bytes", "python_info", "python_gc_"):
        assert name in text, name
    # and the global registry gained nothing
    assert set(REGISTRY._names_to_collectors) == before


async def test_promtool_finds_a_live_scrape_of_the_endpoint_clean() -> None:
    # Given the real health server over a worker with every family present
    server = HealthServer(busy_worker(), "127.0.0.1", 0, watchdog_seconds=30)
    await server.start()
    try:
        # When /metrics is scraped
        status, _, body = await get(server.port, "/metrics")
    finally:
        await server.close()
    assert status == 200
    # Then promtool's lint finds nothing to say
    result = promtool_check(body)
    assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr


def test_promtool_check_can_fail() -> None:
    # A gauge named like a counter: the lint this test relies on does complain
    result = promtool_check(b"# HELP bad_total x\n# TYPE bad_total gauge\nbad_total 1\n")
    assert result.returncode != 0 or result.stdout.strip()
