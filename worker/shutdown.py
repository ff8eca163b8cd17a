"""Bounded shutdown: every stage has a time limit, and a last-resort guard ends a stuck process.

A dependency that is down must never hold a shutdown: a call into a client can block for its whole
server-selection or socket timeout, and a retry loop that catches ``Exception`` can absorb a
cancellation when a library turns it into another error. So each stage is raced against a time
limit (``bounded``), loops ask ``cancelling()`` before retrying, and ``ExitGuard`` — a daemon
thread, so it fires even if the event loop is wedged — exits with ``EXIT_SHUTDOWN_STUCK`` once a
stop has taken far longer than the deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from typing import TypeVar

from loguru import logger

T = TypeVar("T")

EXIT_SHUTDOWN_STUCK = 5
GUARD_GRACE_SECONDS = 10.0  # past shutdown_deadline_seconds, before the guard exits the process
SETTLE_SECONDS = 1.0  # for a cancelled task to end


def cancelling() -> bool:
    """The current task was asked to cancel, even if a library turned the CancelledError into
    another exception on its way out."""
    task = asyncio.current_task()
    return task is not None and task.cancelling() > 0


def raise_if_cancelling() -> None:
    """Call in a retry loop's ``except Exception``: a cancellation must end the loop, not retry."""
    if cancelling():
        raise asyncio.CancelledError


async def bounded(what: str, aw: Awaitable[T], seconds: float) -> T | None:
    """Await ``aw`` for at most ``seconds``; on a timeout or an error log one WARNING, return None."""
    try:
        async with asyncio.timeout(seconds):
            return await aw
    except TimeoutError:
        logger.warning("shutdown: {} did not finish within {:.1f}s; going on without it", what, seconds)
    except Exception as exc:
        raise_if_cancelling()
        logger.warning("shutdown: {} failed ({}); going on without it", what, type(exc).__name__)
    return None


async def settle(tasks: list[asyncio.Task[T]], seconds: float) -> None:
    """Cancel ``tasks`` and wait at most ``seconds`` for them: one that swallows its cancellation
    (a library that converts it) is left behind instead of holding the shutdown."""
    for task in tasks:
        task.cancel()
    pending = [t for t in tasks if not t.done()]
    if pending:
        _, stuck = await asyncio.wait(pending, timeout=seconds)
        for task in stuck:
            logger.warning("shutdown: task {} ignored its cancellation; left behind", task.get_name())


class ExitGuard:
    """Once armed, exits the process with ``EXIT_SHUTDOWN_STUCK`` after ``seconds`` unless disarmed.

    A daemon thread, not a task: it must fire even when the event loop itself is stuck.
    ``pending()`` says what was still going on, for the one ERROR line.
    """

    def __init__(self, seconds: float, pending: Callable[[], str]) -> None:
        self.seconds = seconds
        self._pending = pending
        self._timer: threading.Timer | None = None

    def arm(self) -> None:
        if self._timer is None:
            self._timer = threading.Timer(self.seconds, self._fire)
            self._timer.daemon = True
            self._timer.start()

    def disarm(self) -> None:
        if self._timer is not None:
            self._timer.cancel()

    def _fire(self) -> None:
        try:
            what = self._pending()
        except Exception as exc:  # a broken description must not stop the exit
            what = f"unknown ({type(exc).__name__})"
        logger.error(
            "shutdown still not finished {:.0f}s after the stop was asked for (pending: {}); exiting "
            "with code {}: anything not checkpointed is replayed at the next start",
            self.seconds,
            what,
            EXIT_SHUTDOWN_STUCK,
        )
        for stream in (sys.stderr, sys.stdout):
            with contextlib.suppress(Exception):  # exiting anyway
                stream.flush()
        os._exit(EXIT_SHUTDOWN_STUCK)


async def until_stopped(aw: Awaitable[T], stop: asyncio.Event, grace: float) -> T | None:
    """Await ``aw`` until it ends or, once ``stop`` is set, for ``grace`` seconds more; then cancel
    it (bounded) and return None. Its own exception, if it ended with one, is raised."""
    task = asyncio.ensure_future(aw)
    waiter = asyncio.ensure_future(stop.wait())
    try:
        await asyncio.wait([task, waiter], return_when=asyncio.FIRST_COMPLETED)
        if not task.done() and grace > 0:
            await asyncio.wait([task], timeout=grace)
        if task.done():
            return task.result() if not task.cancelled() else None
        await settle([task], SETTLE_SECONDS)
        return None
    finally:
        waiter.cancel()
        if not task.done():  # we were cancelled ourselves
            task.cancel()
