"""The daemon's roles: fan-out workers beside the tailer (role all), or alone (role fanout)."""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import World, settings
from worker.daemon import Worker
from worker.memory.publisher import MemoryPublisher


class FailingRunner:
    """Fan-out workers that fail after a moment, as a bug in them would."""

    consumers: dict[str, object] = {}  # noqa: RUF012 - a stand-in's constant
    depths: dict[str, int | None] = {}  # noqa: RUF012
    connected = True
    reconnects = 0

    async def run(self, stop: asyncio.Event, drain_seconds: float) -> None:
        await asyncio.sleep(0.2)
        raise RuntimeError("fan-out bug")


@pytest.mark.parametrize("role", ["all", "fanout"])
async def test_fanout_workers_that_fail_stop_the_process_with_their_error(role: str) -> None:
    # Given a worker whose fan-out workers fail while it runs
    cfg = settings(exchange="test.roles")
    cfg = cfg.model_copy(update={"fanout": cfg.fanout.model_copy(update={"role": role})})
    runtime = World().runtime(cfg, None, MemoryPublisher())
    runtime.fanout = FailingRunner()  # type: ignore[assignment]
    worker = Worker(runtime)
    # When it runs, Then it stops by itself (no signal) and surfaces their error
    with pytest.raises(RuntimeError, match="fan-out bug"):
        await asyncio.wait_for(worker.run(), 10)
    assert worker.stop.is_set()
    assert worker.role == ("fanout" if role == "fanout" else "leader")
