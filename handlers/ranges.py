"""Range planning: how many fan-out jobs a post becomes, and which followers each one covers.

A post whose author has at most ``range_size`` followers is one job on the ordinary lane. A larger
one is split by follower id into keyset ranges of about ``range_size`` follow edges, each a job on
the bulk lane, so several workers fan one celebrity post out in parallel and a backlog of them
never delays ordinary posts. Planning reads follower ids through the index (FollowerGraph
.range_bounds) and keeps only the bounds, one id per range; it publishes nothing.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

from handlers.contract import POST_CREATED
from handlers.jobs import FanoutJob, FollowerRange, Lane
from handlers.ports import FollowerGraph


@dataclass(slots=True)
class PlanStats:
    posts: int = 0
    ordinary_jobs: int = 0
    bulk_jobs: int = 0


class RangePlanner:
    def __init__(self, graph: FollowerGraph, range_size: int) -> None:
        if range_size < 1:
            raise ValueError("range_size must be at least 1")
        self._graph = graph
        self._range_size = range_size
        self.stats = PlanStats()

    async def ranges(self, author_id: str) -> list[FollowerRange]:
        """The author's followers as contiguous keyset ranges covering every follower id, in order."""
        async with contextlib.aclosing(self._graph.range_bounds(author_id, self._range_size)) as bounds:
            ends: list[str | None] = [b async for b in bounds]
        ends.append(None)  # the last range is open-ended: followers added later still fall in one
        starts: list[str | None] = [None, *ends[:-1]]
        return [FollowerRange(after, until) for after, until in zip(starts, ends, strict=True)]

    async def plan(
        self, post_id: str, author_id: str, head: bytes, kind: str = POST_CREATED, edit: str | None = None
    ) -> list[FanoutJob]:
        """The jobs of one post's event (``kind``; ``edit`` names an edit). ``post_id`` is the post's
        id as messages render it and ``head`` its encoded event (handlers/contract.py), both made
        once by the caller. Planned on the author's followers now, whatever the event."""
        ranges = await self.ranges(author_id)
        lane: Lane = "ordinary" if len(ranges) == 1 else "bulk"
        self.stats.posts += 1
        if lane == "ordinary":
            self.stats.ordinary_jobs += 1
        else:
            self.stats.bulk_jobs += len(ranges)
        return [
            FanoutJob(kind, post_id, author_id, head, rng, k, len(ranges), lane, edit)
            for k, rng in enumerate(ranges)
        ]
