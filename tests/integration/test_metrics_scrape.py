"""A live scrape of the real daemon's /metrics passes ``promtool check metrics``, and carries the
build info, the process collectors and the latency of a post it fanned out.

MongoDB is WireMongo, a wire-protocol test stand-in (not MongoDB); Redis and RabbitMQ are real.
"""

from __future__ import annotations

import socket
import time
import urllib.request

import pytest

from tests.faults.daemon import DB, Daemons, seed_authors, worker_env
from tests.support.wire_mongo import WireMongo
from tests.worker.observe.test_metric_conventions import promtool_check


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> bytes:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        body: bytes = response.read()
        return body


@pytest.mark.timeout(60)
def test_a_live_scrape_of_the_daemon_is_promtool_clean(unique: str, daemon_exchange: str) -> None:
    # Given a daemon (role all) on WireMongo, with an author and two followers
    port = _free_port()
    daemons = Daemons()
    with WireMongo() as wire:
        seed_authors(wire, {"a1": ["f1", "f2"]})
        env = worker_env(wire, daemon_exchange, f"t{unique}:", FANOUT_HEALTH__PORT=str(port))
        try:
            daemon = daemons.spawn(env)
            daemon.wait_for_log("running", timeout=20)
            time.sleep(0.5)  # the streams open after the log line
            # When a post is written and fanned out
            wire.db(DB).insert("posts", {"_id": f"p{unique}", "author_id": "a1", "text": "hello"})
            deadline = time.monotonic() + 20
            body = _scrape(port)
            while b'fanout_event_latency_seconds_count{stream="posts"} 1.0' not in body:
                assert time.monotonic() < deadline, body.decode()[-3000:] + daemon.log_text()
                time.sleep(0.2)
                body = _scrape(port)
            # Then the scrape has the build, the process and the post's latency, and lints clean
            text = body.decode()
            assert 'fanout_worker_build_info{version="' in text
            assert "process_resident_memory_bytes" in text and "python_gc_collections_total" in text
            assert 'fanout_jobs_published_total{lane="ordinary"} 1.0' in text
            result = promtool_check(body)
            assert result.returncode == 0 and not result.stdout.strip(), result.stdout + result.stderr
            assert daemon.stop() == 0
        finally:
            daemons.cleanup()
