"""THE table of change streams: one row per stream, read by the wiring (which builds each
stream's feed and handler from its row), the demo, the pipelines' loggers, metrics and
``checkpoint show|reset``.

Adding a stream is one row here and one handler in ``handlers/`` (an ``EventHandler``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from enrichment.cache import LayeredCache
from enrichment.ports import InvalidationBus
from handlers.emitter import JobEmitter
from handlers.events import POST_EVENT_FIELDS, PROFILE_EVENT_FIELDS
from handlers.ports import PostStore, Publisher
from handlers.posts import PostCreatedHandler, PostStats
from handlers.profiles import ProfileChangedHandler
from worker.ports import EventHandler
from worker.settings import MongoSettings, Settings


@dataclass(frozen=True, slots=True)
class HandlerDeps:
    """What the wiring has built, for a stream's row to build its handler from."""

    settings: Settings
    cache: LayeredCache
    bus: InvalidationBus
    posts: PostStore
    publisher: Publisher  # messages to consumers (profile.updated)
    emitter: JobEmitter  # fan-out jobs (new posts)
    post_stats: PostStats  # shared with the in-process fan-out side, which counts chunks in it


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str  # the checkpoint's key, the metrics' and logs' ``stream`` label
    collection: Callable[[MongoSettings], str]  # which setting names the watched collection
    ops: tuple[str, ...]  # operation types watched; the rest never leave the server
    update_lookup: bool  # fullDocument: "updateLookup" (the whole document on updates)
    fields: tuple[str, ...]  # the $project: only what the handler reads (events stay small)
    id_field: str  # how log lines name the document's _id
    handler: Callable[[HandlerDeps], EventHandler]  # builds the stream's handler


POSTS = StreamSpec(
    name="posts",
    collection=lambda m: m.posts,
    ops=("insert",),
    update_lookup=False,
    fields=POST_EVENT_FIELDS,
    id_field="post_id",
    handler=lambda d: PostCreatedHandler(
        d.cache, d.posts, d.emitter, d.settings.pipeline.max_text_bytes, d.post_stats
    ),
)
PROFILES = StreamSpec(
    name="profiles",
    collection=lambda m: m.profiles,
    ops=("insert", "update", "replace", "delete"),  # deletes tombstone the caches
    update_lookup=True,
    fields=PROFILE_EVENT_FIELDS,
    id_field="user_id",
    handler=lambda d: ProfileChangedHandler(
        d.cache, d.bus, d.posts, d.publisher, d.settings.pipeline.rewrite_concurrency
    ),
)

STREAMS: tuple[StreamSpec, ...] = (POSTS, PROFILES)
BY_NAME: dict[str, StreamSpec] = {s.name: s for s in STREAMS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
