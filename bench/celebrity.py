"""Celebrity fan-out in a fresh process: one post to N followers, wall time and RSS growth.

    python -m bench.celebrity 1000000 [WINDOW [CHUNK_SIZE]]   # prints one JSON object

A process of its own, so the growth is not hidden by memory an earlier phase already took.
"""

from __future__ import annotations

import asyncio
import gc
import sys
import time
from typing import Any

import orjson
from loguru import logger

from bench.graph import follower_id
from bench.probes import PeakRss
from bench.rig import Rig
from worker.settings import Settings


async def celebrity(followers: int, base: Settings) -> dict[str, Any]:
    rig = Rig(base, None)
    rig.add_user("star", [follower_id(n) for n in range(followers)])
    await rig.start()
    assert rig.runtime is not None and rig.queue is not None
    try:
        gc.collect()
        with PeakRss() as rss:
            started = time.perf_counter()
            rig.post("star")
            await rig.wait_handled(1, 0)
            elapsed = time.perf_counter() - started
        delivered = await rig.queue.drain_count()
        messages = rig.runtime.publisher.stats.confirmed
        recipients = rig.posts.stats.recipients
    finally:
        await rig.stop()
    return {
        "followers": followers,
        "messages": messages,
        "delivered_to_queue": delivered,
        "recipients": recipients,
        "seconds": elapsed,
        "recipients_per_s": recipients / elapsed,
        "rss_before_mb": rss.start / 2**20,
        "rss_peak_mb": rss.peak / 2**20,
        "rss_growth_mb": rss.growth / 2**20,
    }


def main() -> None:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    base = Settings()
    window = int(sys.argv[2]) if len(sys.argv) > 2 else base.rabbitmq.publish_window
    chunk = int(sys.argv[3]) if len(sys.argv) > 3 else base.pipeline.chunk_size
    base = base.model_copy(
        update={
            "rabbitmq": base.rabbitmq.model_copy(update={"publish_window": window}),
            "pipeline": base.pipeline.model_copy(update={"chunk_size": chunk}),
        }
    )
    result = asyncio.run(celebrity(int(sys.argv[1]), base))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
