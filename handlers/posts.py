"""The posts stream: new posts, their edits and their deletes, each handed to fan-out as jobs
(``handlers/emitter.py``) and done when its jobs are confirmed.

New posts: enrich the batch once, embed the snapshots, emit ``post.created``. Edits and deletes
(handlers/lifecycle.py says which events are which) emit ``post.updated`` and ``post.deleted`` to
the author's followers as they are now; edits of fields followers do not see are counted, and a
delete whose author cannot be known is reported (dead-lettered) with the reason.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass

from loguru import logger

from enrichment.cache import LayeredCache
from enrichment.errors import InvalidEvent
from enrichment.snapshot import AuthorSnapshot
from handlers.contract import POST_DELETED, POST_UPDATED, encode_delete_head, encode_update_head
from handlers.emitter import JobEmitter
from handlers.events import ChangeEvent, NewPost, parse_new_post
from handlers.lifecycle import (
    OWN_WRITE,
    AuthorUnknown,
    Ignored,
    PostDelete,
    PostEdit,
    PostRules,
    parse_post_change,
)
from handlers.ports import PostStore, Report


@dataclass(slots=True)
class PostStats:
    posts: int = 0
    messages: int = 0  # chunks fanned out by this process (its fan-out side)
    recipients: int = 0
    snapshots_written: int = 0
    author_missing: int = 0
    edits: int = 0  # post.updated fanned out (jobs confirmed)
    deletes: int = 0  # post.deleted fanned out (jobs confirmed)
    edits_ignored: int = 0  # updates of fields followers do not see, or of posts deleted since
    deletes_author_unknown: int = 0  # deletes dead-lettered: no pre-image, no soft delete


class PostCreatedHandler:
    def __init__(
        self,
        cache: LayeredCache,
        posts: PostStore,
        emitter: JobEmitter,
        max_text_bytes: int = 256 * 1024,
        stats: PostStats | None = None,
        rules: PostRules | None = None,
    ) -> None:
        self._cache = cache
        self._rules = rules or PostRules()
        self._posts = posts
        self.emitter = emitter
        self._max_text = max_text_bytes
        self.stats = stats or PostStats()

    @property
    def invalid_follower_ids(self) -> int:
        """Follow edges skipped because their follower_id is not a string (see FollowerGraph)."""
        return self.emitter.graph.invalid_ids

    async def process(self, events: Sequence[ChangeEvent], report: Report) -> None:
        """Validate, then handle the new posts as one batch and each edit and delete on its own,
        reporting each event as it finishes.

        Invalid events are reported at once with InvalidEvent (AuthorUnknown for a delete whose
        author cannot be known); changes followers do not see are reported done at once.
        """
        valid: list[NewPost] = []
        positions: list[int] = []
        changes: list[tuple[int, PostEdit | PostDelete]] = []
        for i, event in enumerate(events):
            try:
                if event.op == "insert":
                    valid.append(parse_new_post(event, self._max_text))
                    positions.append(i)
                    continue
                change = parse_post_change(event, self._rules, self._max_text)
            except AuthorUnknown as exc:
                self.stats.deletes_author_unknown += 1
                report(i, exc)
                continue
            except InvalidEvent as exc:
                report(i, exc)
                continue
            if isinstance(change, Ignored):
                if change.reason != OWN_WRITE:
                    self.stats.edits_ignored += 1
                report(i, None)
            else:
                changes.append((i, change))
        work = [self._change(i, change, report) for i, change in changes]
        if valid:
            work.append(self.handle_batch(valid, lambda j, error: report(positions[j], error)))
        await asyncio.gather(*work)

    async def _change(self, i: int, change: PostEdit | PostDelete, report: Report) -> None:
        """Fan an edit or a delete out to the author's followers as they are now."""
        emit = self.emitter.emit_event
        try:
            if isinstance(change, PostEdit):
                head = encode_update_head(
                    change.id_str,
                    change.author_id,
                    change.text,
                    change.fields,
                    change.edit_id,
                    change.version,
                    change.at,
                )
                await emit(POST_UPDATED, change.id_str, change.author_id, head, change.edit_id)
                self.stats.edits += 1
            else:
                head = encode_delete_head(change.id_str, change.author_id, change.at)
                # Never deferred by the author's rate limit: a delete should not wait.
                await emit(POST_DELETED, change.id_str, change.author_id, head, limited=False)
                self.stats.deletes += 1
        except Exception as exc:
            report(i, exc)
            return
        report(i, None)

    async def handle_batch(self, batch: Sequence[NewPost], report: Report) -> None:
        """Handle posts that arrived together. A post is done only when its snapshot is written and
        every one of its fan-out jobs is confirmed; each is reported as soon as it is done."""
        if not batch:
            return
        try:
            # One layered lookup for the whole batch; a failure here fails every post in it.
            authors = await self._cache.get_many(p.author_id for p in batch)
            to_write = [(p.post_id, s) for p in batch if (s := authors.get(p.author_id)) is not None]
            if to_write:
                # Awaited first: `x += await ...` reads x before suspending and loses concurrent updates.
                written = await self._posts.set_snapshots(to_write)
                self.stats.snapshots_written += written
        except Exception as exc:
            for i in range(len(batch)):
                report(i, exc)
            return

        async def one(i: int, post: NewPost) -> None:
            try:
                await self._fan_out(post, authors.get(post.author_id))
            except Exception as exc:
                report(i, exc)
                return
            self.stats.posts += 1
            report(i, None)

        await asyncio.gather(*(one(i, p) for i, p in enumerate(batch)))

    async def _fan_out(self, post: NewPost, author: AuthorSnapshot | None) -> None:
        if author is None:
            # Published without an author: consumers can look it up; the profile cascade fills the
            # post's snapshot when the profile appears. Dropping the fan-out would lose the post.
            self.stats.author_missing += 1
            logger.warning("post {} has no profile for author {}", post.id_str, post.author_id)
        await self.emitter.emit(post, author)
