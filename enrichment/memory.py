"""L1: a bounded, in-process LRU of snapshots with a TTL and a version floor per user."""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from enrichment.snapshot import MISSING_VERSION, AuthorSnapshot


@dataclass(slots=True)
class _Entry:
    expires_at: float
    value: AuthorSnapshot | None  # None: the user does not exist (negative entry)
    # The lowest version this user may be filled with. An invalidation raises it so a slow fill
    # that read the old profile before the invalidation cannot put it back.
    floor: int
    tombstone: bool = False  # invalidated: a miss, until refilled
    deleted: bool = False  # the profile was deleted: a "no such user" hit no fill at or below floor replaces

    @property
    def version(self) -> int:
        return self.value.version if self.value is not None else MISSING_VERSION


class MemoryLayer:
    """An LRU bounded in entries. Every write is guarded by version: never stale over new."""

    def __init__(
        self,
        max_entries: int,
        ttl_seconds: float,
        negative_ttl_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be at least 1")
        self._max = max_entries
        self._ttl = ttl_seconds
        self._negative_ttl = negative_ttl_seconds
        self._clock = clock
        self._entries: OrderedDict[str, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def get_many(self, user_ids: Iterable[str]) -> tuple[dict[str, AuthorSnapshot | None], list[str]]:
        """Return (hits, misses). A hit whose value is None is a cached 'no such user'."""
        now = self._clock()
        hits: dict[str, AuthorSnapshot | None] = {}
        misses: list[str] = []
        for user_id in user_ids:
            entry = self._entries.get(user_id)
            if entry is None or entry.tombstone or entry.expires_at <= now:
                misses.append(user_id)
                continue
            self._entries.move_to_end(user_id)
            hits[user_id] = entry.value
        return hits, misses

    def put(self, user_id: str, value: AuthorSnapshot | None) -> bool:
        """Store ``value`` unless a newer one is already known (equal refreshes the TTL). True if stored."""
        new_version = value.version if value is not None else MISSING_VERSION
        now = self._clock()
        current = self._entries.get(user_id)
        floor = MISSING_VERSION
        if current is not None:
            floor = current.floor
            live = not current.tombstone and current.expires_at > now
            if new_version < floor or (live and new_version < current.version):
                return False
            if live and current.deleted and new_version <= floor:
                return False  # a fill that read the profile before it was deleted
        ttl = self._ttl if value is not None else self._negative_ttl
        self._entries[user_id] = _Entry(now + ttl, value, max(floor, new_version))
        self._entries.move_to_end(user_id)
        self._evict()
        return True

    def known_version(self, user_id: str) -> int | None:
        """The highest version this layer has seen for ``user_id`` (held, filled or invalidated
        to), expired or not: versions only grow, so it is a floor for the current one."""
        entry = self._entries.get(user_id)
        return None if entry is None else max(entry.floor, entry.version)

    def drop(self, user_id: str, min_version: int | None = None) -> None:
        """Forget ``user_id``. With ``min_version``, refuse later fills older than it for one TTL."""
        if min_version is None:
            self._entries.pop(user_id, None)
            return
        current = self._entries.get(user_id)
        floor = max(min_version, current.floor if current is not None else MISSING_VERSION)
        self._entries[user_id] = _Entry(self._clock() + self._ttl, None, floor, tombstone=True)
        self._entries.move_to_end(user_id)
        self._evict()

    def forget(self, user_id: str, version: int) -> None:
        """The profile was deleted: serve "no such user" for the negative TTL, and refuse fills of
        ``version`` or older (they read it before the delete). A newer version (re-created) passes."""
        current = self._entries.get(user_id)
        floor = max(version, current.floor if current is not None else MISSING_VERSION)
        self._entries[user_id] = _Entry(self._clock() + self._negative_ttl, None, floor, deleted=True)
        self._entries.move_to_end(user_id)
        self._evict()

    def clear(self) -> None:
        self._entries.clear()

    def _evict(self) -> None:
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)
