"""The Worker: runs one pipeline per stream plus the invalidation listener, and shuts down in stages.

Shutdown order: stop reading → drain in-flight work within the deadline → save checkpoints →
close clients in reverse order of creation.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal

from loguru import logger

from worker.app import POSTS_STREAM, PROFILES_STREAM, Runtime
from worker.dispatch import EventHandler, StreamPipeline


class Worker:
    def __init__(self, runtime: Runtime) -> None:
        self.runtime = runtime
        self.stop = asyncio.Event()
        handlers: dict[str, EventHandler] = {
            POSTS_STREAM: runtime.posts,
            PROFILES_STREAM: runtime.profiles,
        }
        self.pipelines = [
            StreamPipeline(
                feed,
                handlers[name],
                runtime.checkpoints,
                runtime.dead_letters,
                runtime.settings.pipeline,
            )
            for name, feed in runtime.feeds.items()
        ]

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT stop gracefully; a second one cancels everything at once."""
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()

        def on_signal(signum: int) -> None:
            if self.stop.is_set() and main is not None:
                logger.warning("second {} signal: exiting without draining", signal.Signals(signum).name)
                main.cancel()
                return
            logger.info("{} received: stopping", signal.Signals(signum).name)
            self.stop.set()

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig)

    async def run(self) -> None:
        """Run until ``stop`` is set or a stream fails fatally (re-raised after a clean shutdown)."""
        cache = self.runtime.cache
        listener = asyncio.create_task(
            self.runtime.bus.run(cache.on_remote_invalidation, cache.l1.clear), name="invalidations"
        )
        tasks = [asyncio.create_task(p.run(self.stop), name=p.stream) for p in self.pipelines]
        try:
            # A pipeline that ends before stop was asked for has failed: stop the others too.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            self.stop.set()
            await asyncio.gather(*tasks, return_exceptions=True)
            for task in tasks:
                if not task.cancelled() and (exc := task.exception()) is not None:
                    raise exc
        finally:
            self.stop.set()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener
            await self.close()

    async def close(self) -> None:
        await self.runtime.publisher.close(self.runtime.settings.pipeline.shutdown_deadline_seconds)
        for close in reversed(self.runtime.closers):
            try:
                await close()
            except Exception as exc:  # closing must go on for the rest
                logger.warning("error while closing a client: {}", type(exc).__name__)
        logger.info("fanout-worker stopped")
