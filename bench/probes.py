"""What the benchmarks read off a running worker without changing what it does.

Each probe costs at most a counter bump or a list append per call; together they cost about 2-3 %
of the worker's CPU, which the reported numbers include (docs/performance.md).
"""

from __future__ import annotations

import math
import re
import resource
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import redis.asyncio as aioredis

from handlers.events import ChangeEvent
from handlers.ports import Report

_STATUS = Path("/proc/self/status")


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100); NaN for no values."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q / 100 * len(ordered))))
    return ordered[rank - 1]


def _status_kb(field: str) -> int:
    match = re.search(rf"^{field}:\s+(\d+) kB", _STATUS.read_text(), re.MULTILINE)
    if match is None:
        raise OSError(f"{field} not in {_STATUS}")
    return int(match.group(1))


def rss_bytes() -> int:
    return _status_kb("VmRSS") * 1024


class PeakRss:
    """Peak resident memory over a stretch of code (Linux).

    Resets the kernel's high-water mark (``clear_refs`` 5) at the start; where that is not allowed,
    a thread samples RSS every 5 ms instead, which can miss a spike shorter than that.
    """

    def __init__(self) -> None:
        self.start = 0
        self.peak = 0
        self._sampler: threading.Thread | None = None
        self._running = False

    def __enter__(self) -> PeakRss:
        self.start = rss_bytes()
        try:
            Path("/proc/self/clear_refs").write_text("5")
        except OSError:
            self._running = True
            self._sampler = threading.Thread(target=self._sample, daemon=True)
            self._sampler.start()
        return self

    def _sample(self) -> None:
        while self._running:
            self.peak = max(self.peak, rss_bytes())
            time.sleep(0.005)

    def __exit__(self, *exc: object) -> None:
        if self._sampler is not None:
            self._running = False
            self._sampler.join()
        else:
            self.peak = _status_kb("VmHWM") * 1024
        self.peak = max(self.peak, self.start)

    @property
    def growth(self) -> int:
        return self.peak - self.start


def process_peak_rss() -> int:
    """The whole process's peak RSS so far, in bytes."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


class RedisRoundTrips:
    """Counts a redis-py asyncio client's round trips: each command by name, each pipeline as one
    (``PIPELINE``). Subscriptions have connections of their own and are not counted."""

    def __init__(self, client: aioredis.Redis) -> None:
        self.by_command: Counter[str] = Counter()
        send: Callable[..., Awaitable[Any]] = client.execute_command
        pipeline = client.pipeline

        async def counted(*args: Any, **options: Any) -> Any:
            self.by_command[str(args[0]).upper()] += 1
            return await send(*args, **options)

        def counted_pipeline(*args: Any, **kwargs: Any) -> Any:
            pipe = pipeline(*args, **kwargs)
            execute = pipe.execute

            async def run(*a: Any, **k: Any) -> Any:
                self.by_command["PIPELINE"] += 1
                return await execute(*a, **k)

            pipe.execute = run  # type: ignore[method-assign]
            return pipe

        client.execute_command = counted  # type: ignore[method-assign]
        client.pipeline = counted_pipeline  # type: ignore[method-assign]

    @property
    def total(self) -> int:
        return sum(self.by_command.values())


class DoneTimes:
    """Wraps an event handler to note when each event is done (every chunk confirmed)."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.done: dict[Any, float] = {}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)

    async def process(self, events: Sequence[ChangeEvent], report: Report) -> None:
        done = self.done

        def timed(i: int, error: BaseException | None) -> None:
            if error is None:
                done[events[i].raw["documentKey"]["_id"]] = time.monotonic()
            report(i, error)

        await self._inner.process(events, timed)
