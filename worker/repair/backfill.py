"""Backfill: posts read from the collection by an indexed range, fanned out by the live posts
handler on synthetic insert events (one code path: the same validation, enrichment, snapshot
writes and jobs, so the same message ids), at a set pace, resumable from its own checkpoint.

A batch's position is saved only once every post of it is done (jobs confirmed) or dead-lettered,
so a backfill killed at any point resumes without a loss, replaying at most one batch under the
same ids. Posts that fail validation are dead-lettered with the reason, as live handling does.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from loguru import logger

from handlers.events import ChangeEvent
from handlers.ids import encode_post_id
from handlers.ports import DeadLetters
from handlers.posts import PostCreatedHandler
from worker.repair.apply import apply_events
from worker.repair.pace import TokenBucket
from worker.repair.ports import Doc, Position, PostReader, RunState, RunStore, Window
from worker.repair.progress import Progress
from worker.streams import POSTS


def post_event(run_key: str, doc: Doc) -> ChangeEvent:
    """The insert event live handling would have received for ``doc`` (its fields as stored)."""
    token = {"backfill": run_key, "post": encode_post_id(doc.get("_id"))}
    raw: dict[str, Any] = {
        "_id": token,
        "operationType": "insert",
        "documentKey": {"_id": doc.get("_id")},
        "fullDocument": dict(doc),
    }
    return ChangeEvent(POSTS.name, token, "insert", raw)


def position_of(window: Window, doc: Doc) -> Position:
    return Position(doc.get(window.field), doc.get("_id"))


class PostBackfill:
    def __init__(
        self,
        reader: PostReader,
        runs: RunStore,
        handler: PostCreatedHandler,
        dead_letters: DeadLetters,
        batch_size: int,
        bucket: TokenBucket | None = None,
        max_attempts: int = 5,
        retry_max_seconds: float = 30.0,
    ) -> None:
        self._reader = reader
        self._runs = runs
        self._handler = handler
        self._dead = dead_letters
        self._batch = batch_size
        self._bucket = bucket
        self._max_attempts = max_attempts
        self._retry_max = retry_max_seconds

    async def run(
        self, key: str, window: Window, progress: Progress | None = None, restart: bool = False
    ) -> RunState:
        """Backfill ``window`` under the run ``key``, from its checkpoint (or the start when there is
        none, or ``restart``). Returns the final state; a run already done is returned untouched."""
        state = None if restart else await self._runs.load_run(key)
        if state is not None and state.done:
            return state
        if state is None:
            state = RunState(key, counts={"posts": 0, "jobs": 0, "invalid": 0})
        if state.position is not None:
            logger.info("backfill {}: resuming after post {}", key, encode_post_id(state.position.id))
        jobs_before = self._handler.emitter.stats.jobs
        jobs_saved = state.counts.get("jobs", 0)
        while docs := await self._reader.read_posts(window, state.position, self._batch):
            if self._bucket is not None:
                await self._bucket.take(len(docs))
            events = [post_event(key, doc) for doc in docs]
            failed = await apply_events(self._handler, events, self._max_attempts, self._retry_max)
            for i, reason in failed.items():
                await self._dead_letter(events[i], reason)
            c = state.counts
            c["posts"] = c.get("posts", 0) + len(docs) - len(failed)
            c["invalid"] = c.get("invalid", 0) + len(failed)
            c["jobs"] = jobs_saved + self._handler.emitter.stats.jobs - jobs_before
            state.position = position_of(window, docs[-1])
            state.updated_at = datetime.now(UTC)
            # Only now: every post of the batch is confirmed or dead-lettered.
            await self._runs.save_run(state)
            if progress is not None:
                progress.update(c["posts"] + c["invalid"], c)
        state.done = True
        state.updated_at = datetime.now(UTC)
        await self._runs.save_run(state)
        return state

    async def _dead_letter(self, event: ChangeEvent, reason: str) -> None:
        logger.error("backfill: dead-lettering post {}: {}", _post_id(event.raw), reason)
        await self._dead.put(event.stream, event.token, event.raw, reason)


def _post_id(raw: Mapping[str, Any]) -> str:
    doc = raw.get("fullDocument")
    return encode_post_id(doc.get("_id")) if isinstance(doc, Mapping) else "?"


async def dry_run(reader: PostReader, window: Window, sample: int = 5) -> tuple[int, list[Doc]]:
    """How many posts ``window`` holds and the first few: what a backfill would fan out."""
    return await reader.count_posts(window), await reader.read_posts(window, None, sample)
