"""A seeded social graph and workload for the benchmarks.

Follower counts follow Zipf's law by rank: the user of popularity rank ``k`` has
``max_followers / k**s`` followers (at least ``min_followers``). Authors are drawn by the same law,
so popular users post more. Followers are ids from an audience of ``audience`` accounts: only the
authors need profiles, and an audience larger than the user count lets a celebrity have 50,000
distinct followers among 10,000 posting users.
"""

from __future__ import annotations

import bisect
import itertools
import random
from collections.abc import Iterator
from dataclasses import dataclass

from worker.memory.db import MemoryDatabase
from worker.memory.stores import MemoryFollowerGraph


@dataclass(frozen=True)
class GraphSpec:
    users: int = 10_000
    zipf_s: float = 1.1
    max_followers: int = 50_000
    min_followers: int = 1
    audience: int = 1_000_000
    seed: int = 42


def user_id(rank: int) -> str:
    return f"u{rank:06d}"


def follower_id(n: int) -> str:
    return f"a{n:07d}"


def profile(uid: str, version: int = 1) -> dict[str, object]:
    return {
        "_id": uid,
        "username": uid,
        "display_name": f"User {uid}" if version == 1 else f"User {uid} v{version}",
        "avatar_url": f"https://cdn.example/{uid}/{version}.png",
        "version": version,
    }


class SocialGraph:
    """Users ranked by popularity (rank 1 is the most followed) and their followers."""

    def __init__(self, spec: GraphSpec) -> None:
        self.spec = spec
        self.users = [user_id(k) for k in range(1, spec.users + 1)]
        self.followers_of = {
            uid: max(spec.min_followers, min(spec.max_followers, round(spec.max_followers / k**spec.zipf_s)))
            for k, uid in enumerate(self.users, start=1)
        }
        weights = [1 / k**spec.zipf_s for k in range(1, spec.users + 1)]
        self._cumulative = list(itertools.accumulate(weights))

    @property
    def edges(self) -> int:
        return sum(self.followers_of.values())

    def load(self, db: MemoryDatabase, graph: MemoryFollowerGraph) -> None:
        """Write every profile and follower list into the in-memory stand-ins."""
        rng = random.Random(self.spec.seed)
        for uid in self.users:
            db.insert("profiles", profile(uid))
            count = min(self.followers_of[uid], self.spec.audience)
            graph.set_followers(uid, [follower_id(n) for n in rng.sample(range(self.spec.audience), count)])

    def authors(self, n: int, seed: int) -> list[str]:
        """``n`` post authors drawn by popularity (Zipf), reproducibly."""
        rng = random.Random(seed)
        total = self._cumulative[-1]
        return [self.users[bisect.bisect_left(self._cumulative, rng.random() * total)] for _ in range(n)]


@dataclass(frozen=True)
class Write:
    """One write of a workload: a post by ``user``, or (``edit``) a profile edit of ``user``."""

    user: str
    edit: bool = False


def workload(graph: SocialGraph, posts: int, edit_rate: float, seed: int) -> Iterator[Write]:
    """``posts`` posts by popularity, with profile edits of uniformly drawn users mixed in at
    ``edit_rate`` edits per post."""
    rng = random.Random(seed + 1)
    for author in graph.authors(posts, seed):
        yield Write(author)
        if rng.random() < edit_rate:
            yield Write(rng.choice(graph.users), edit=True)
