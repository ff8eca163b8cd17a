"""Shutdown stages are bounded even when a library turns a cancellation into an error, and the
last-resort guard exits a process whose event loop is stuck."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time

import pytest

from tests.harness import World, settings, start, wait_for
from worker.ports import Checkpoint
from worker.publisher import MemoryPublisher
from worker.shutdown import EXIT_SHUTDOWN_STUCK, bounded


class HangingCheckpoints:
    """Wraps the in-memory store: once ``hang`` is set, a save blocks, and when cancelled raises
    RuntimeError instead, as a database driver might."""

    def __init__(self, world: World) -> None:
        self._save = world.checkpoints.save  # before it is replaced by ours
        self.hang = False
        self.hung = 0

    async def save(self, checkpoint: Checkpoint) -> None:
        if not self.hang:
            return await self._save(checkpoint)
        self.hung += 1
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise RuntimeError("operation cancelled") from None


async def test_a_checkpoint_save_that_swallows_its_cancellation_does_not_hold_the_stop() -> None:
    # Given a worker whose checkpoint store hangs and converts cancellations into errors
    world = World()
    world.add_user("u0")
    world.graph.set_followers("u0", ["f1"])
    store = HangingCheckpoints(world)
    world.checkpoints.save = store.save  # type: ignore[method-assign]
    worker, task = await start(
        world.runtime(settings(shutdown_deadline_seconds=0.5), None, MemoryPublisher())
    )
    store.hang = True
    world.post("p0", "u0")
    await wait_for(lambda: store.hung > 0, what="a save to hang")
    # When asked to stop, it ends in bounded time: the saver's retry loop does not absorb the cancel
    started = time.monotonic()
    worker.stop.set()
    await asyncio.wait_for(task, 10)
    assert time.monotonic() - started < 8


async def test_bounded_gives_up_on_a_step_that_does_not_answer() -> None:
    assert await bounded("a dead peer", asyncio.sleep(3600), 0.05) is None
    assert await bounded("a live peer", asyncio.sleep(0, "ok"), 1) == "ok"


@pytest.mark.timeout(30)
def test_the_exit_guard_ends_a_process_whose_event_loop_is_stuck() -> None:
    # Given a process that armed the guard and then blocked its only thread (a wedged loop)
    code = (
        "import time; from worker.shutdown import ExitGuard; "
        "ExitGuard(0.3, lambda: 'closing the publisher').arm(); time.sleep(20)"
    )
    started = time.monotonic()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=15)
    # Then it exits with the documented code, saying what was pending, long before the sleep ends
    assert proc.returncode == EXIT_SHUTDOWN_STUCK
    assert time.monotonic() - started < 10
    err = proc.stderr.decode()
    assert "shutdown still not finished" in err and "closing the publisher" in err
