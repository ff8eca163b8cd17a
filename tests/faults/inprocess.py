"""One stream's pipeline in the test's own process, over the production wiring (``build_runtime``:
PyMongo async against WireMongo, the real Redis and RabbitMQ), with this process's fan-out workers
on the test's own job queues. For the fault tests that need to reach inside the pipeline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from typing import Any

from tests.faults.daemon import REDIS_URL, job_settings, wait_until
from tests.support.wire_mongo import WireMongo
from worker.settings import Settings, load_settings
from worker.tailer.pipeline import StreamPipeline
from worker.wiring import Runtime, build_runtime


def settings(wm: WireMongo, exchange: str, key_prefix: str, **mongo: Any) -> Settings:
    """Fast cadences, no election, the default consumer queues left alone, job queues of its own."""
    return load_settings(
        None,
        mongo={"uri": wm.uri, "max_await_time_ms": 200, "server_selection_timeout_ms": 3000, **mongo},
        redis={"url": REDIS_URL, "key_prefix": key_prefix},
        rabbitmq={"exchange": exchange},
        pipeline={"checkpoint_interval_seconds": 0.1, "retry_max_seconds": 2},
        leader={"enabled": False},
        topology={"declare": False},
        fanout=job_settings(exchange),
    )


@contextlib.asynccontextmanager
async def pipeline_of(
    cfg: Settings, stream: str, prepare: Callable[[Runtime], None] = lambda runtime: None
) -> AsyncIterator[tuple[Runtime, StreamPipeline, asyncio.Event, asyncio.Task[None]]]:
    """``stream``'s pipeline and the fan-out workers, running until the block ends, then closed.
    ``prepare`` sees the runtime before anything starts (to wrap a store, say)."""
    runtime = await build_runtime(cfg)
    prepare(runtime)
    pipeline = StreamPipeline(
        runtime.feeds[stream],
        runtime.handlers[stream],
        runtime.checkpoints,
        runtime.dead_letters,
        cfg.pipeline,
    )
    stop = asyncio.Event()
    task = asyncio.create_task(pipeline.run(stop))
    assert runtime.fanout is not None  # role "all": this process fans its jobs out too
    fanout = asyncio.create_task(runtime.fanout.run(stop, 1.0))
    try:
        await wait_until(
            lambda: pipeline.stats.idle_polls > 0 or task.done(), 10, f"the {stream} stream to open"
        )
        yield runtime, pipeline, stop, task
    finally:
        stop.set()
        for running in (task, fanout):
            with contextlib.suppress(Exception):
                await asyncio.wait_for(running, 10)
        await runtime.publisher.close(1.0)
        if runtime.jobs is not None:
            await runtime.jobs.close(1.0)
        await runtime.resources.aclose()
