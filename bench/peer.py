"""A second replica for the profile storm, in a process of its own as in production.

    python -m bench.peer KEY_PREFIX USERS     # started by the storm scenario, not by hand

It is wired by the same ``assemble`` a worker uses (its own Redis connection, L1 and invalidation
listener; only its change streams are left out), holds the storm's USERS in L1, prints ``ready``,
and on a line on stdin prints, as JSON, when (``time.monotonic``, system-wide on Linux) it heard
each invalidation and how many L1 entries are still stale.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from typing import Any

import orjson
from loguru import logger

from bench.graph import profile
from worker.memory.db import MemoryDatabase
from worker.memory.publisher import MemoryPublisher
from worker.memory.stores import (
    MemoryCheckpointStore,
    MemoryDeadLetters,
    MemoryFollowerGraph,
    MemoryPostStore,
    MemoryProfileSource,
)
from worker.settings import Settings
from worker.wiring import Stores, assemble, redis_client


def storm_user(i: int) -> str:
    return f"e{i:05d}"


async def serve(key_prefix: str, users: int) -> dict[str, Any]:
    base = Settings()
    settings = base.model_copy(update={"redis": base.redis.model_copy(update={"key_prefix": key_prefix})})
    db = MemoryDatabase()  # this replica's view of the shared profiles (the stand-in is per process)
    names = [storm_user(i) for i in range(users)]
    for name in names:
        db.insert("profiles", profile(name))
    redis = redis_client(settings)
    stores = Stores(
        MemoryProfileSource(db),
        MemoryPostStore(db),
        MemoryFollowerGraph(),
        MemoryCheckpointStore(),
        MemoryDeadLetters(),
    )
    runtime = assemble(settings, {}, stores, MemoryPublisher(), redis)
    cache, bus = runtime.cache, runtime.bus
    heard: dict[str, float] = {}

    def on_invalidate(user: str, version: int) -> None:
        heard.setdefault(f"{user}:{version}", time.monotonic())
        cache.on_remote_invalidation(user, version)

    listener = asyncio.create_task(bus.run(on_invalidate, cache.l1.clear))
    # Polled: subscribed once the bus has cleared L1 for its first subscription.
    while getattr(bus, "gaps", 1) < 1:  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    await cache.get_many(names)
    print("ready", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
    found, _ = cache.l1.get_many(names)
    stale = sum(1 for snap in found.values() if snap is not None and snap.version < 2)
    listener.cancel()
    await asyncio.gather(listener, return_exceptions=True)
    await redis.aclose()
    return {"heard": heard, "stale": stale}


class PeerProcess:
    """The storm scenario's handle on the peer process."""

    def __init__(self, key_prefix: str, users: int) -> None:
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "bench.peer", key_prefix, str(users)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )

    async def ready(self) -> None:
        assert self._proc.stdout is not None
        line = await asyncio.get_running_loop().run_in_executor(None, self._proc.stdout.readline)
        if line.strip() != "ready":
            raise RuntimeError(f"the peer replica did not start: {line!r}")

    async def finish(self) -> tuple[dict[tuple[str, int], float], int]:
        """Ask for its observations and wait for it to exit."""
        out, _ = await asyncio.get_running_loop().run_in_executor(None, self._proc.communicate, "done\n")
        result = orjson.loads(out)
        heard = {(k.rsplit(":", 1)[0], int(k.rsplit(":", 1)[1])): t for k, t in result["heard"].items()}
        return heard, int(result["stale"])

    def kill(self) -> None:
        if self._proc.poll() is None:
            self._proc.kill()
            self._proc.wait()


def main() -> None:
    logger.remove()
    logger.add(sys.stderr, level="WARNING")
    result = asyncio.run(serve(sys.argv[1], int(sys.argv[2])))
    sys.stdout.write(orjson.dumps(result).decode() + "\n")


if __name__ == "__main__":
    main()
