"""THE table of change streams: one row per stream (how its feed watches its collection under the
settings, and how to build its handler), read by the wiring (which builds each stream's feed and
handler from its row), the demo, the pipelines' loggers, metrics and ``checkpoint show|reset``.

Adding a stream is one row here and one handler in ``handlers/`` (an ``EventHandler``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from enrichment.cache import LayeredCache
from enrichment.ports import InvalidationBus
from handlers.emitter import JobEmitter
from handlers.events import PROFILE_EVENT_FIELDS, post_event_fields
from handlers.lifecycle import SNAPSHOT_FIELD, PostRules, post_fields
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
class Watch:
    """How a stream's feed watches its collection, under the settings."""

    ops: tuple[str, ...]  # operation types watched; the rest never leave the server
    update_lookup: bool  # fullDocument: "updateLookup" (the whole document on updates)
    fields: tuple[str, ...]  # the $project: only what the handler reads (events stay small)
    before_change: str | None = None  # fullDocumentBeforeChange: None, "whenAvailable", "required"
    match: dict[str, Any] = field(default_factory=dict)  # more $match conditions, beside the ops


@dataclass(frozen=True, slots=True)
class StreamSpec:
    name: str  # the checkpoint's key, the metrics' and logs' ``stream`` label
    collection: Callable[[MongoSettings], str]  # which setting names the watched collection
    watch: Callable[[Settings], Watch]  # how its feed watches, under the settings
    id_field: str  # how log lines name the document's _id
    handler: Callable[[HandlerDeps], EventHandler]  # builds the stream's handler


def post_rules(settings: Settings) -> PostRules:
    lc = settings.post_lifecycle
    return PostRules(
        lc.edits, tuple(lc.visible_fields), lc.version_field, lc.soft_delete_field, lc.pre_images != "off"
    )


def _posts_watch(settings: Settings) -> Watch:
    lc = settings.post_lifecycle
    return Watch(
        ops=("insert", "update", "replace", "delete"),
        # An edit needs the post's author and all its visible fields, which only the lookup gives.
        update_lookup=True,
        fields=post_event_fields(post_fields(post_rules(settings)), changes=True),
        before_change=lc.before_change,
        # The worker's own snapshot writes (one per new post, a profile cascade's many) stay on the
        # server: they are never edits, and each would cost a lookup.
        match={f"updateDescription.updatedFields.{SNAPSHOT_FIELD}": {"$exists": False}},
    )


POSTS = StreamSpec(
    name="posts",
    collection=lambda m: m.posts,
    watch=_posts_watch,
    id_field="post_id",
    handler=lambda d: PostCreatedHandler(
        d.cache,
        d.posts,
        d.emitter,
        d.settings.pipeline.max_text_bytes,
        d.post_stats,
        post_rules(d.settings),
    ),
)
PROFILES = StreamSpec(
    name="profiles",
    collection=lambda m: m.profiles,
    # deletes tombstone the caches
    watch=lambda s: Watch(("insert", "update", "replace", "delete"), True, PROFILE_EVENT_FIELDS),
    id_field="user_id",
    handler=lambda d: ProfileChangedHandler(
        d.cache, d.bus, d.posts, d.publisher, d.settings.pipeline.rewrite_concurrency
    ),
)

STREAMS: tuple[StreamSpec, ...] = (POSTS, PROFILES)
BY_NAME: dict[str, StreamSpec] = {s.name: s for s in STREAMS}
NAMES: tuple[str, ...] = tuple(BY_NAME)
