"""Liveness while waiting: a leader whose broker is away is alive, not wedged (the real daemon).

RabbitMQ is cut under load, in-flight work fills up and the reader waits for room: ``/readyz``
turns 503 (a dependency is down) while ``/healthz`` stays 200, so a liveness probe does not restart
a worker that would only exit 3 at start while the broker is still away.
"""

from __future__ import annotations

import asyncio
import re
import time

import orjson

from tests.faults.daemon import Daemons
from tests.faults.test_shutdown import (  # noqa: F401 - fixtures, and the followers wm seeds
    FOLLOWERS,
    Proxies,
    Writer,
    proxies,
    start_under_load,
    writer,
)
from tests.harness import Collector
from tests.support.wire_mongo import WireMongo

WATCHDOG = 2.0  # health.watchdog_seconds: far shorter than the outage below


async def get(port: int, path: str) -> tuple[int, dict[str, object]]:
    reader, conn = await asyncio.open_connection("127.0.0.1", port)
    try:
        conn.write(f"GET {path} HTTP/1.1\r\nHost: x\r\n\r\n".encode())
        data = await asyncio.wait_for(reader.read(), 5)
    finally:
        conn.close()
    head, _, body = data.partition(b"\r\n\r\n")
    return int(head.split(b" ")[1]), orjson.loads(body)


async def test_healthz_stays_200_while_the_broker_is_away_and_in_flight_work_is_full(
    wm: WireMongo,
    proxies: Proxies,  # noqa: F811
    daemons: Daemons,
    writer: Writer,  # noqa: F811
    collector: Collector,
    exchange: str,
    key_prefix: str,
) -> None:
    # Given a leader under load whose /healthz judges a stream stale after 2 s
    daemon = await start_under_load(
        wm,
        proxies,
        daemons,
        writer,
        collector,
        exchange,
        key_prefix,
        FANOUT_HEALTH__WATCHDOG_SECONDS=str(WATCHDOG),
    )
    line = daemon.find_log("health and metrics on http://")
    assert line is not None
    match = re.search(r"http://127\.0\.0\.1:(\d+)/", line)
    assert match, line
    port = int(match[1])
    # When RabbitMQ goes away and stays away well past the watchdog
    await proxies.by_name["rabbitmq"].cut()
    healthz: list[tuple[int, dict[str, object]]] = []
    readyz: list[int] = []
    until = time.monotonic() + 3 * WATCHDOG + 2
    while time.monotonic() < until:
        healthz.append(await get(port, "/healthz"))
        readyz.append((await get(port, "/readyz"))[0])
        await asyncio.sleep(0.2)
    # Then readiness reports the outage, liveness never fails
    assert readyz[-1] == 503
    assert all(status == 200 for status, _ in healthz), [b for s, b in healthz if s != 200][:1]
    # and the reader really was held by backpressure (in-flight full), not idle
    assert any(body.get("waiting_for") == {"posts": "room in flight"} for _, body in healthz[-5:])
    assert daemon.returncode is None
