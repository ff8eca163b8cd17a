"""The Worker: by its role (``fanout.role``) it leads (or waits as a standby) and runs one pipeline
per stream plus the invalidation listener, runs this process's fan-out workers, or both; and it
shuts down in stages.

Shutdown order: stop reading (and the fan-out workers stop taking jobs) → drain in-flight work
and jobs in hand within the deadline → save checkpoints → release the lease → close the publishers,
then the clients in reverse order of creation. Every stage is bounded
(worker/shutdown.py), so a dependency that is down cannot hold the process: what could not be
confirmed is not checkpointed and is replayed at the next start.
"""

from __future__ import annotations

import asyncio
import gc
import signal
import time

from loguru import logger

from enrichment.errors import Deposed
from worker.ports import Lease
from worker.shutdown import SETTLE_SECONDS, bounded, settle, until_stopped
from worker.stats import StreamStats
from worker.tailer.leader import Leadership
from worker.tailer.pipeline import StreamPipeline
from worker.wiring import Runtime

GC_GEN0_THRESHOLD = 50_000
STEP_SECONDS = 1.0  # each shutdown step after the drain: lease release, publisher, each client
HEARTBEAT_SECONDS = 1.0  # the event-loop heartbeat liveness reads
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)  # SIGHUP: a clean stop, no reload


def tune_gc() -> None:
    """Run the cyclic garbage collector far less often, and never over start-up objects.

    Each message allocates many short-lived objects while the process holds a large long-lived heap
    (L1, clients). With CPython's default (a young collection every 700 allocations) the collector
    cost about a fifth of the fan-out throughput in ``make bench`` (docs/performance.md), whose
    process also holds the MongoDB stand-in's data. Process-wide: called by the daemon's entry
    points, not by library code.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_GEN0_THRESHOLD, older, oldest)


class Worker:
    def __init__(self, runtime: Runtime, leadership: Leadership | None = None) -> None:
        self.runtime = runtime
        self.stop = asyncio.Event()
        self.tails = runtime.role != "fanout"  # a fan-out-only process holds no lease, reads no stream
        if leadership is None and runtime.leases is not None and self.tails:
            leadership = Leadership(runtime.leases, runtime.settings.leader)
        self.leadership = leadership
        self.epoch = 0
        self.terms = 0
        self.pipelines: list[StreamPipeline] = []
        self.ready_checks = runtime.checks
        self._stats = {name: StreamStats() for name in runtime.feeds}
        self.hard_stop = False  # a second signal: close without waiting for confirms
        self.stage = "running"  # what shutdown is doing, for the last-resort guard's line
        self.heartbeat = time.monotonic()  # moved every second while the event loop turns

    @property
    def role(self) -> str:
        """ "leader" or "standby" once known; "starting" before. Without election, always leader.
        "fanout" for a process that only runs fan-out workers (``fanout.role = "fanout"``)."""
        if not self.tails:
            return "fanout"
        return self.leadership.role if self.leadership is not None else "leader"

    def _pipelines(self, epoch: int) -> list[StreamPipeline]:
        rt = self.runtime
        return [
            StreamPipeline(
                feed,
                rt.handlers[name],
                rt.checkpoints,
                rt.dead_letters,
                rt.settings.pipeline,
                epoch,
                self._stats[name],
            )
            for name, feed in rt.feeds.items()
        ]

    def install_signal_handlers(self) -> None:
        """SIGTERM/SIGINT/SIGHUP stop gracefully; a second one cancels everything at once."""
        loop = asyncio.get_running_loop()
        main = asyncio.current_task()

        def on_signal(signum: int) -> None:
            if self.stop.is_set() and main is not None:
                logger.warning("second {} signal: exiting without draining", signal.Signals(signum).name)
                self.hard_stop = True
                main.cancel()
                return
            logger.info("{} received: stopping", signal.Signals(signum).name)
            self.stop.set()

        for sig in STOP_SIGNALS:
            loop.add_signal_handler(sig, on_signal, sig)

    async def run(self) -> None:
        """Run until ``stop`` is set or a stream fails fatally (re-raised after a clean shutdown)."""
        cache = self.runtime.cache
        listener = asyncio.create_task(
            self.runtime.bus.run(cache.on_remote_invalidation, cache.clear_local), name="invalidations"
        )
        beat = asyncio.create_task(self._beat(), name="heartbeat")
        runner = self.runtime.fanout
        drain = self.runtime.settings.pipeline.shutdown_deadline_seconds
        fanout = asyncio.create_task(runner.run(self.stop, drain), name="fan-out") if runner else None
        if fanout is not None:
            fanout.add_done_callback(self._fanout_ended)
        try:
            if not self.tails:
                await self._fanout_only(fanout)
            elif self.leadership is None:
                await self._term(None)
            while self.tails and self.leadership is not None and not self.stop.is_set():
                # Raced against stop: a lease store that does not answer must not hold a shutdown.
                lease = await until_stopped(self.leadership.acquire(self.stop), self.stop, 0.0)
                if lease is None:
                    break
                await self._term(lease)
        finally:
            self.stop.set()
            self.stage = "stopping the invalidation listener"
            await settle([listener, beat], SETTLE_SECONDS)
            if fanout is not None:
                # The fan-out workers started draining at the stop, beside the tailer: the jobs in
                # hand finish (acked once their chunks are confirmed) within the same deadline; the
                # rest are redelivered to another worker.
                self.stage = "draining fan-out jobs"
                await bounded("draining fan-out jobs", asyncio.shield(fanout), drain + STEP_SECONDS)
                await settle([fanout], SETTLE_SECONDS)
            if self.leadership is not None:
                self.stage = "releasing the lease"
                await bounded("releasing the lease", self.leadership.release(), STEP_SECONDS)
            await self.close()
        if fanout is not None and not fanout.cancelled() and (exc := fanout.exception()) is not None:
            raise exc  # after a clean shutdown of the rest: exit 1 with the error logged

    def _fanout_ended(self, task: asyncio.Task[None]) -> None:
        """Fan-out workers that end before a stop was asked for have failed (their runner survives
        lost connections by itself): stop the whole process rather than tail posts nobody fans out."""
        if self.stop.is_set() or task.cancelled():
            return
        logger.error("the fan-out workers stopped unexpectedly ({!r}); stopping", task.exception())
        self.stop.set()

    async def _fanout_only(self, fanout: asyncio.Task[None] | None) -> None:
        """A fan-out-only process: run until stop, or until the fan-out workers fail."""
        if fanout is None:
            raise RuntimeError("fanout.role = 'fanout' but no fan-out workers were wired")
        stopped = asyncio.create_task(self.stop.wait())
        try:
            await asyncio.wait([stopped, fanout], return_when=asyncio.FIRST_COMPLETED)
        finally:
            stopped.cancel()
        if fanout.done() and not fanout.cancelled() and (exc := fanout.exception()) is not None:
            raise exc

    async def _term(self, lease: Lease | None) -> None:
        """One leadership term: run the pipelines until stop, a lost lease, or a fatal error."""
        self.epoch = lease.epoch if lease is not None else 0
        self.terms += 1
        # While standing by, invalidations may have been missed: start the term with an empty L1.
        self.runtime.cache.clear_local()
        term_stop = asyncio.Event()
        pipelines = self.pipelines = self._pipelines(self.epoch)

        def lost(reason: str) -> None:
            logger.warning("leadership lost: {}; stopping the streams without draining", reason)
            for p in pipelines:
                p.abort()
            term_stop.set()

        helpers = [asyncio.create_task(self._forward_stop(term_stop))]
        if lease is not None and self.leadership is not None:
            helpers.append(asyncio.create_task(self.leadership.hold(lease, lost), name="lease"))
        tasks = [asyncio.create_task(p.run(term_stop), name=p.stream) for p in pipelines]
        self.stage = "draining the streams"
        try:
            # A pipeline that ends before stop was asked for has failed: stop the others too.
            await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
            term_stop.set()
            results = await asyncio.gather(*tasks, return_exceptions=True)
            for result in results:
                if isinstance(result, Deposed):
                    logger.warning("a newer leader fenced this worker off; back to standby")
                    if self.leadership is not None:
                        self.leadership.role = "standby"
                elif isinstance(result, BaseException):
                    raise result
        finally:
            term_stop.set()  # readers exit at their next step even if a cancellation is lost
            await settle([*tasks, *helpers], SETTLE_SECONDS)

    async def _beat(self) -> None:
        while True:
            self.heartbeat = time.monotonic()
            await asyncio.sleep(HEARTBEAT_SECONDS)

    async def _forward_stop(self, term_stop: asyncio.Event) -> None:
        await self.stop.wait()
        term_stop.set()

    async def close(self) -> None:
        """Close both publishers side by side, then each client, every one bounded: a dead peer does
        not answer."""
        # The streams drained within the deadline already; only a hard stop skips the confirms.
        drain = 0.0 if self.hard_stop else STEP_SECONDS
        self.stage = "closing the publishers"
        # Side by side: each is bounded, and a broker that is down must not cost the wait twice.
        closing = [
            bounded("closing the publisher", self.runtime.publisher.close(drain), drain + 2 * STEP_SECONDS)
        ]
        if self.runtime.jobs is not None:
            jobs = self.runtime.jobs.close(drain)
            closing.append(bounded("closing the job publisher", jobs, drain + 2 * STEP_SECONDS))
        await asyncio.gather(*closing)
        self.stage = "closing the clients"
        await self.runtime.resources.aclose()
        self.stage = "stopped"
        logger.info("fanout-worker stopped")
