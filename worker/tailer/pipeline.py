"""One stream's pipeline: read → micro-batch → handle concurrently → checkpoint the contiguous end.

Work in flight is bounded by ``max_in_flight_events``: when it is all taken, the reader stops
pulling from the change stream, which is the backpressure. Failures are retried with capped,
jittered backoff: a dependency that is away for as long as it takes, other transient errors up to
``max_attempts``; permanent ones, and those out of attempts, go to the dead letters with the
reason, and the stream moves on (the handling of one batch: ``processing.py``).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from loguru import logger

from enrichment.backoff import Backoff, wait_event
from enrichment.errors import (
    Deposed,
    EventTooLarge,
    ServiceUnavailable,
    StreamFatal,
    TransientError,
)
from handlers.events import Token
from handlers.ports import DeadLetters
from worker.ports import ChangeFeed, Checkpoint, CheckpointStore, EventHandler, Gap
from worker.settings import PipelineSettings
from worker.shutdown import SETTLE_SECONDS, bounded, raise_if_cancelling, settle, until_stopped
from worker.stats import StreamStats
from worker.tailer.processing import BatchProcessor, Item
from worker.tailer.watermark import Watermark

# Once stopping: how long the reader may take to come back from its getMore before it is cancelled
# (that closes the stream, which is fine now), and how long the final checkpoint save may take.
READER_GRACE_SECONDS = 1.0
FINAL_SAVE_SECONDS = 1.5


class StreamPipeline:
    def __init__(
        self,
        feed: ChangeFeed,
        handler: EventHandler,
        checkpoints: CheckpointStore,
        dead_letters: DeadLetters,
        settings: PipelineSettings,
        epoch: int = 0,
        stats: StreamStats | None = None,
    ) -> None:
        self.stream = feed.stream
        self._feed = feed
        self._handler = handler
        self._checkpoints = checkpoints
        self._dead = dead_letters
        self._cfg = settings
        self._slots = asyncio.Semaphore(settings.max_in_flight_events)
        # Unbounded by itself, but only events holding a slot enter it: bounded by the semaphore.
        self._queue: asyncio.Queue[Item | None] = asyncio.Queue()
        self._tasks: set[asyncio.Task[None]] = set()
        self.stats = stats or StreamStats()  # passed in, so counters survive leadership terms
        self._processor = BatchProcessor(
            self.stream, handler, dead_letters, settings, self.stats, self._finish
        )
        self.watermark = Watermark()
        self._saved_version = 0
        self.last_progress = time.monotonic()  # a getMore (or try_next) came back
        self._last_reopen = 0.0  # a failed getMore or open, before a reopen: MongoDB being away
        # What the reader legitimately waits for (room in flight, its checkpoint); None otherwise.
        self.waiting_for: str | None = None
        # While the stream fails to (re)open or read: consecutive failures, and the time.time() since
        # which nothing has been read (the last successful read before them, or the term's start).
        self.reopen_failures = 0
        self.reopening_since: float | None = None
        self.resumed_from: Token | None = None
        self.checkpoint: Checkpoint | None = None  # the last one loaded or saved
        self.checkpoint_saved_at: float | None = None  # time.time() of the last save
        self.epoch = epoch
        self.deposed: Deposed | None = None
        self._stop: asyncio.Event | None = None
        self._drain_seconds = settings.shutdown_deadline_seconds
        self._stopping_since: float | None = None  # loop time stop was seen: the drain counts from it

    @property
    def in_flight(self) -> int:
        return self.watermark.outstanding

    @property
    def alive_at(self) -> float:
        """For liveness (monotonic): now while the reader waits on backpressure or a dependency,
        else its last getMore or its last failed attempt to reach MongoDB."""
        if self.waiting_for is not None:
            return time.monotonic()
        return max(self.last_progress, self._last_reopen)

    def abort(self) -> None:
        """Stop at once without draining: leadership is lost, another worker will replay."""
        self._drain_seconds = 0.0
        if self._stop is not None:
            self._stop.set()

    async def run(self, stop: asyncio.Event) -> None:
        """Run until ``stop`` is set, then drain within the deadline and save the checkpoint.

        Raises StreamFatal (policy "fail") and Deposed (a newer leader fenced our checkpoint).
        """
        self._stop = stop
        # Raced against stop: loading the checkpoint can block for a whole server-selection timeout.
        self.waiting_for = "its checkpoint"
        try:
            opened = await until_stopped(self._open_term(stop), stop, 0.0)
        finally:
            self.waiting_for = None
        if opened is None:
            return  # stopped while MongoDB was unreachable
        checkpoint, first_start = opened
        self.checkpoint = checkpoint
        self.resumed_from = checkpoint.token
        self.watermark.token = checkpoint.token
        self.watermark.event_time = checkpoint.event_time
        logger.bind(stream=self.stream).info(
            "stream {} starting {}",
            self.stream,
            "from its checkpoint"
            if checkpoint.token
            else "from now (first start)"
            if first_start
            else f"at {checkpoint.start_at.isoformat() if checkpoint.start_at else '?'} (checkpoint reset)",
        )
        batcher = asyncio.create_task(self._batch_loop(), name=f"{self.stream} batcher")
        saver = asyncio.create_task(self._save_loop(), name=f"{self.stream} checkpointer")
        noter = asyncio.create_task(self._note_stop(stop))
        try:
            # A getMore can block for a whole server-selection timeout while MongoDB is away.
            await until_stopped(self._read_loop(stop), stop, READER_GRACE_SECONDS)
        finally:
            try:
                self._queue.put_nowait(None)
                await self._drain(batcher)
            finally:
                # Even when cancelled mid-drain (a second signal), leave no task behind, and never
                # wait long for one that a library keeps from ending.
                await settle([noter, saver, batcher, *self._tasks], SETTLE_SECONDS)
            if self.deposed is None:
                what = f"final checkpoint save of stream {self.stream}"
                await bounded(what, self._final_save(), FINAL_SAVE_SECONDS)
        if self.deposed is not None:
            raise self.deposed

    async def _note_stop(self, stop: asyncio.Event) -> None:
        await stop.wait()
        self._stopping_since = asyncio.get_running_loop().time()

    async def _final_save(self) -> None:
        """Not saved (MongoDB away, or fenced off): the next start replays from the last save."""
        with contextlib.suppress(Deposed):
            await self.save_checkpoint()

    async def _open_term(self, stop: asyncio.Event) -> tuple[Checkpoint, bool] | None:
        """Load the checkpoint (retrying while MongoDB is away) and claim it with this epoch.

        Re-saving it at once fences a deposed leader off from the start of the term, not from the
        first save, and on a very first start records "now" before the stream opens, so a crash
        before the first token is saved replays from here instead of a later "now".
        """
        backoff = Backoff(0.2, self._cfg.retry_max_seconds)
        while not stop.is_set():
            try:
                checkpoint = await self._checkpoints.load(self.stream)
                first_start = checkpoint is None
                now = datetime.now(UTC)
                if checkpoint is None:
                    start = now - timedelta(seconds=self._cfg.first_start_lookback_seconds)
                    checkpoint = Checkpoint(self.stream, None, None, now, self.epoch, start)
                if first_start or checkpoint.epoch < self.epoch:
                    checkpoint = replace(checkpoint, epoch=self.epoch)  # saved_at stays: its age is real
                    await self._checkpoints.save(checkpoint)
                return checkpoint, first_start
            except TransientError as exc:
                raise_if_cancelling()
                self._failing()
                delay = backoff.next_delay()
                logger.bind(stream=self.stream).warning(
                    "stream {}: cannot load its checkpoint ({}); retrying in {:.1f}s", self.stream, exc, delay
                )
                await wait_event(stop, delay)
        return None

    async def _read_loop(self, stop: asyncio.Event) -> None:
        backoff = Backoff(0.2, self._cfg.retry_max_seconds)
        resume = self.resumed_from
        # An operator reset to a time: used for the first open only, tokens take over after.
        start_at = self.checkpoint.start_at if self.checkpoint is not None and resume is None else None
        lost: StreamFatal | None = None  # history lost and policy resume-from-now: a gap to record
        while not stop.is_set():
            try:
                async with self._feed.open(resume, start_at) as cursor:
                    if lost is not None:
                        # Recorded once the new stream is open, so its end covers everything up to
                        # where reading resumes, and before anything after it is processed.
                        if not await self._record_gap(lost, stop):
                            return  # stopping: the checkpoint never passed the gap
                        lost = None
                    while not stop.is_set():
                        # Never wrap try_next in a timeout: cancelling it closes the stream.
                        event = await cursor.try_next()
                        self.last_progress = time.monotonic()
                        if self.reopen_failures:
                            self._reading_again()
                        backoff.reset()
                        resume = cursor.resume_token or resume
                        start_at = None if resume is not None else start_at
                        if event is None:
                            self.stats.idle_polls += 1
                            self.watermark.idle(cursor.resume_token)
                            continue
                        if not await self._take_slot(stop):
                            break  # stopping: this event was not begun, so it will be replayed
                        seq = self.watermark.begin(event.token, event.cluster_time)
                        self.stats.read += 1
                        self.stats.count_size(event.fragments, event.oversize_bytes)
                        self.stats.count(event.op, "read")
                        self._queue.put_nowait((seq, event))
            except StreamFatal as exc:
                self._describe(exc)
                # An event too large is not lost history: resuming from now would skip far more.
                if self._cfg.on_history_lost == "fail" or isinstance(exc, EventTooLarge):
                    raise
                # From now: neither the token nor a time before the fatal event can be used again.
                lost, resume, start_at = exc, None, None
            except ServiceUnavailable as exc:
                # Errors the driver could not resume by itself: reopen after the last event read.
                self._last_reopen = time.monotonic()
                self.stats.reopens += 1
                self._failing()
                delay = backoff.next_delay()
                logger.bind(stream=self.stream).warning(
                    "stream {} failed ({}); reopening in {:.1f}s ({} failure(s) in a row)",
                    self.stream,
                    exc,
                    delay,
                    self.reopen_failures,
                )
                await wait_event(stop, delay)

    def _failing(self) -> None:
        """Count one more failure to (re)open or read; lag and health show it until a read succeeds."""
        self.reopen_failures += 1
        if self.reopening_since is None:
            self.reopening_since = time.time() - (time.monotonic() - self.last_progress)

    def _reading_again(self) -> None:
        since = self.reopening_since
        logger.bind(stream=self.stream).info(
            "stream {} reading again after {} failure(s), {:.0f}s without reading",
            self.stream,
            self.reopen_failures,
            time.time() - since if since is not None else 0.0,
        )
        self.reopen_failures, self.reopening_since = 0, None

    async def _take_slot(self, stop: asyncio.Event) -> bool:
        """Wait for room in flight, but give up as soon as the pipeline is told to stop."""
        if self._slots.locked():
            self.waiting_for = "room in flight"  # backpressure: alive, not wedged
        try:
            while not stop.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(0.25):
                        await self._slots.acquire()
                        return True
            return False
        finally:
            self.waiting_for = None

    def _describe(self, exc: StreamFatal) -> None:
        """Attach the checkpoint's times for the operator's log line."""
        cp = self.checkpoint
        exc.checkpoint_saved_at = cp.saved_at if cp is not None else None
        exc.checkpoint_event_time = self.watermark.event_time or (cp.event_time if cp else None)

    async def _record_gap(self, exc: StreamFatal, stop: asyncio.Event) -> bool:
        """Durably record the skipped window; False if told to stop before it was stored."""
        gap = Gap(self.stream, exc.checkpoint_event_time, datetime.now(UTC), exc.reason)
        backoff = Backoff(0.2, self._cfg.retry_max_seconds)
        while not stop.is_set():
            try:
                await self._checkpoints.record_gap(gap)
            except Exception as err:
                raise_if_cancelling()
                logger.warning("could not record the gap ({}); retrying", type(err).__name__)
                await wait_event(stop, backoff.next_delay())
                continue
            self.stats.gaps += 1
            logger.bind(stream=self.stream).error(
                "stream {}: {}; resuming from now (on_history_lost = resume-from-now). Events from {} "
                "to {} were NOT processed; the gap is recorded in the gaps collection for a backfill",
                self.stream,
                exc.reason,
                gap.start.isoformat() if gap.start else "an unknown time",
                gap.end.isoformat(),
            )
            return True
        return False

    async def _batch_loop(self) -> None:
        loop = asyncio.get_running_loop()
        max_wait = self._cfg.batch_max_wait_ms / 1000
        while True:
            first = await self._queue.get()
            if first is None:
                return
            batch = [first]
            deadline = loop.time() + max_wait
            ended = False
            while len(batch) < self._cfg.batch_max_events:
                remaining = deadline - loop.time()
                try:
                    if remaining <= 0:
                        item = self._queue.get_nowait()
                    else:
                        async with asyncio.timeout(remaining):
                            item = await self._queue.get()
                except (TimeoutError, asyncio.QueueEmpty):
                    break
                if item is None:
                    ended = True
                    break
                batch.append(item)
            self.stats.batches += 1
            task = asyncio.create_task(self._processor.process(batch))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            if ended:
                return

    def _finish(self, seq: int, op: str, handled: bool = True) -> None:
        if handled:
            self.stats.handled += 1
            self.stats.count(op, "handled")
        self.watermark.finish(seq)
        self._slots.release()

    async def _drain(self, batcher: asyncio.Task[None]) -> None:
        loop = asyncio.get_running_loop()
        # From the moment stop was asked for, not from when the reader came back.
        deadline = (self._stopping_since or loop.time()) + self._drain_seconds
        await asyncio.wait([batcher], timeout=max(0.0, deadline - loop.time()))
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=max(0.0, deadline - loop.time()))
        leftover = [t for t in (batcher, *self._tasks) if not t.done()]
        if leftover:
            logger.bind(stream=self.stream).warning(
                "stream {}: {} event(s) unfinished at the shutdown deadline; they will be replayed",
                self.stream,
                self.watermark.outstanding,
            )
        for task in leftover:
            task.cancel()
        if leftover:
            # Bounded too: a task that swallowed its cancellation must not hold the shutdown.
            await asyncio.wait(leftover, timeout=SETTLE_SECONDS)

    async def _save_loop(self) -> None:
        while True:
            await asyncio.sleep(self._cfg.checkpoint_interval_seconds)
            try:
                await self.save_checkpoint()
            except Deposed as exc:
                logger.bind(stream=self.stream).warning(
                    "stream {}: checkpoint fenced off by a newer leader; stopping", self.stream
                )
                self.deposed = exc
                self.abort()
                return
            except Exception as exc:
                raise_if_cancelling()  # else the saver outlives the pipeline it saves for
                logger.bind(stream=self.stream).warning(
                    "checkpoint save failed ({}); will retry", type(exc).__name__
                )

    async def save_checkpoint(self) -> None:
        """Save the contiguous watermark if it moved since the last save."""
        mark = self.watermark
        if mark.token is None or mark.version == self._saved_version:
            return
        version = mark.version
        checkpoint = Checkpoint(self.stream, mark.token, mark.event_time, datetime.now(UTC), self.epoch)
        await self._checkpoints.save(checkpoint)
        self.checkpoint = checkpoint
        self.checkpoint_saved_at = time.time()
        self._saved_version = version
        self.stats.checkpoints_saved += 1
