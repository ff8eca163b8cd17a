"""The tailer's side of fan-out: a post's event (created, edited, deleted) becomes fan-out jobs,
confirmed by the broker.

Per post: the post and author are encoded once (``head``), the author's followers are planned into
ranges by keyset bounds (handlers/ranges.py; nothing is published while planning), and one job per
range is published to its lane, or to the delay queue when the author posts faster than allowed.
The post counts as handled only when every one of its jobs is confirmed: only then can the
checkpoint pass it. The chunks themselves are published by fan-out workers (worker/fanout/).
"""

from __future__ import annotations

from dataclasses import dataclass

from enrichment.snapshot import AuthorSnapshot
from handlers.confirms import ConfirmSet
from handlers.contract import POST_CREATED, encode_head
from handlers.events import NewPost
from handlers.jobs import job_message
from handlers.limits import AuthorRateLimiter
from handlers.ports import FollowerGraph, Publisher
from handlers.ranges import RangePlanner


@dataclass(slots=True)
class EmitStats:
    jobs: int = 0  # jobs confirmed by the broker
    ordinary: int = 0
    bulk: int = 0
    deferred_posts: int = 0  # posts over their author's rate: jobs sent through the delay queue
    largest_post_ranges: int = 0


class JobEmitter:
    def __init__(
        self,
        graph: FollowerGraph,
        jobs: Publisher,
        range_size: int,
        limiter: AuthorRateLimiter | None = None,
    ) -> None:
        self.graph = graph
        self._planner = RangePlanner(graph, range_size)
        self._jobs = jobs
        self._limiter = limiter
        self.stats = EmitStats()

    async def emit(self, post: NewPost, author: AuthorSnapshot | None) -> int:
        """Publish the post's jobs and wait for every confirm. Returns how many jobs it became."""
        head = encode_head(post.id_str, post.author_id, post.created_at, post.text, author)
        return await self.emit_event(POST_CREATED, post.id_str, post.author_id, head)

    async def emit_event(
        self,
        kind: str,
        post_id: str,
        author_id: str,
        head: bytes,
        edit: str | None = None,
        limited: bool = True,
    ) -> int:
        """Publish the jobs of one event of a post (created, updated or deleted, ``head`` encoded
        for that kind by handlers/contract.py) to the author's current followers, and wait for
        every confirm. ``limited``: the author's rate limit may defer them. Returns the job count."""
        jobs = await self._planner.plan(post_id, author_id, head, kind, edit)
        deferred = limited and self._limiter is not None and not self._limiter.allow(author_id)
        confirms = ConfirmSet()
        for job in jobs:
            confirms.add(await self._jobs.send(job_message(job, deferred)))
            if confirms.failed:
                break  # the post is retried whole, under the same job ids
        await confirms.wait()
        s = self.stats
        s.jobs += len(jobs)
        # Counted where they go: deferred jobs reach the bulk lane once the delay queue lets them go.
        if jobs and jobs[0].lane == "ordinary" and not deferred:
            s.ordinary += len(jobs)
        else:
            s.bulk += len(jobs)
        s.deferred_posts += deferred
        s.largest_post_ranges = max(s.largest_post_ranges, len(jobs))
        return len(jobs)
