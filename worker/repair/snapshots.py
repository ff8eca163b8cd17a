"""Snapshot repair: bring every post to its author's current snapshot. Profiles are read in
``_id`` order, a batch at a time, and each author's posts holding no snapshot or an older one are
rewritten by the post store's version-guarded rewrite, the one the profile cascade uses: a post
never gets a lower version, whatever runs beside it. Resumable from its own checkpoint (the last
profile done); a run that finished starts over next time, since posts go stale again."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

from enrichment.snapshot import AuthorSnapshot
from handlers.ports import PostStore
from worker.repair.pace import TokenBucket
from worker.repair.ports import Position, ProfileReader, RunState, RunStore
from worker.repair.progress import Progress

RUN_KEY = "snapshots"


class SnapshotRepair:
    def __init__(
        self,
        profiles: ProfileReader,
        posts: PostStore,
        runs: RunStore,
        batch_size: int,
        concurrency: int,
        bucket: TokenBucket | None = None,
    ) -> None:
        self._profiles = profiles
        self._posts = posts
        self._runs = runs
        self._batch = batch_size
        self._gate = asyncio.Semaphore(concurrency)
        self._bucket = bucket

    async def run(self, progress: Progress | None = None, restart: bool = False) -> RunState:
        state = None if restart else await self._runs.load_run(RUN_KEY)
        if state is None or state.done:
            state = RunState(RUN_KEY, counts={"profiles": 0, "posts_rewritten": 0})
        after = str(state.position.id) if state.position is not None else None
        while True:
            snapshots, last = await self._profiles.profiles_after(after, self._batch)
            if last is None:
                break
            if self._bucket is not None:
                await self._bucket.take(max(len(snapshots), 1))
            rewritten = await asyncio.gather(*(self._rewrite(s) for s in snapshots))
            c = state.counts
            c["profiles"] = c.get("profiles", 0) + len(snapshots)
            c["posts_rewritten"] = c.get("posts_rewritten", 0) + sum(rewritten)
            after = last
            state.position = Position(last, last)
            state.updated_at = datetime.now(UTC)
            await self._runs.save_run(state)
            if progress is not None:
                progress.update(c["profiles"], c)
        state.done = True
        state.updated_at = datetime.now(UTC)
        await self._runs.save_run(state)
        return state

    async def _rewrite(self, snapshot: AuthorSnapshot) -> int:
        async with self._gate:
            return await self._posts.rewrite_author_snapshot(snapshot)
