"""A fan-out worker process for tests whose follows collection is too large for WireMongo.

    python -m tests.support.fanout_process AUTHOR COUNT      # settings from FANOUT_* variables

It runs the fan-out role's real parts (``worker.wiring``: the job topology declared, the
``FanoutRunner`` consuming every lane, chunks published by ``RabbitPublisher`` with confirms), but
its followers come from the in-memory graph (``worker/memory/stores.py``, a test stand-in), filled
with ``follower_id(0..COUNT-1)`` for AUTHOR: every process generates the very same list, as they
would all read the one MongoDB. It logs to stderr ``running``, then on SIGTERM ``acked N jobs`` and
exits 0.
"""

from __future__ import annotations

import asyncio
import signal
import sys

from handlers.posts import PostStats
from worker.memory.stores import MemoryFollowerGraph
from worker.messaging.jobs import ensure_job_topology
from worker.settings import Settings
from worker.wiring import fanout_runner, rabbit_publisher


def follower_id(n: int) -> str:
    return f"f{n:08d}"


async def _main(author: str, count: int) -> int:
    settings = Settings()
    graph = MemoryFollowerGraph()
    graph.set_followers(author, [follower_id(n) for n in range(count)])
    url, timeout = settings.rabbitmq.url.get_secret_value(), settings.rabbitmq.confirm_timeout_seconds
    await ensure_job_topology(url, settings.fanout, timeout)
    publisher = rabbit_publisher(settings)
    await publisher.connect()
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    runner = fanout_runner(settings, graph, publisher, PostStats())
    sys.stderr.write("running\n")
    try:
        await runner.run(stop, settings.pipeline.shutdown_deadline_seconds)
    finally:
        await publisher.close()
    acked = sum(c.stats.jobs_acked for c in runner.consumers.values())
    sys.stderr.write(f"acked {acked} jobs\n")
    return 0


if __name__ == "__main__":
    sys.exit(asyncio.run(_main(sys.argv[1], int(sys.argv[2]))))
