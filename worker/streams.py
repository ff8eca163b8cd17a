"""THE table of change streams: one row per stream, read by the wiring, the demo, the pipelines'
loggers, metrics and ``checkpoint show|reset``.

Adding a stream is one row here and one handler in ``handlers/`` (an ``EventHandler``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from handlers.events import POST_EVENT_FIELDS, PROFILE_EVENT_FIELDS
from worker.ports import EventHandler
from worker.settings import MongoSettings


class Handlers(Protocol):
    """What a stream's handler is picked from (the Runtime)."""

    @property
    def posts(self) -> EventHandler: ...

    @property
    def profiles(self) -> EventHandler: ...


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str  # the checkpoint's key, the metrics' and logs' ``stream`` label
    collection: Callable[[MongoSettings], str]  # which setting names the watched collection
    ops: tuple[str, ...]  # operation types watched; the rest never leave the server
    update_lookup: bool  # fullDocument: "updateLookup" (the whole document on updates)
    fields: tuple[str, ...]  # the $project: only what the handler reads (events stay small)
    id_field: str  # how log lines name the document's _id
    handler: Callable[[Handlers], EventHandler]


POSTS = StreamSpec(
    name="posts",
    collection=lambda m: m.posts,
    ops=("insert",),
    update_lookup=False,
    fields=POST_EVENT_FIELDS,
    id_field="post_id",
    handler=lambda h: h.posts,
)
PROFILES = StreamSpec(
    name="profiles",
    collection=lambda m: m.profiles,
    ops=("insert", "update", "replace", "delete"),  # deletes tombstone the caches
    update_lookup=True,
    fields=PROFILE_EVENT_FIELDS,
    id_field="user_id",
    handler=lambda h: h.profiles,
)

STREAMS: tuple[StreamSpec, ...] = (POSTS, PROFILES)
BY_NAME: dict[str, StreamSpec] = {s.name: s for s in STREAMS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
