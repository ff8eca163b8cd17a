"""Large change events, below the wire: which servers split, the event fields, the in-memory twin's projection."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import pytest
from bson import Timestamp

from enrichment.errors import EventTooLarge, InvalidEvent
from handlers.events import (
    POST_EVENT_FIELDS,
    PROFILE_EVENT_FIELDS,
    ChangeEvent,
    Token,
    parse_new_post,
    parse_profile_change,
)
from worker.memory.db import MemoryDatabase
from worker.memory.feed import MemoryChangeFeed, project
from worker.memory.stores import MemoryCheckpointStore, MemoryDeadLetters
from worker.mongo.feed import splits_large_events
from worker.settings import PipelineSettings, Settings
from worker.streams import POSTS
from worker.tailer.pipeline import StreamPipeline


@pytest.mark.parametrize(
    ("version", "splits"),
    [
        ([7, 0, 0], True),
        ([8, 0, 4], True),
        ([6, 0, 9], True),
        ([6, 0, 12, 0], True),
        ([6, 0, 8], False),
        ([6, 1, 0], False),  # rapid releases 6.1–6.3 never had the stage
        ([6, 3, 2], False),
        ([5, 0, 20], False),
        ([7], True),
    ],
)
def test_which_servers_split_large_events(version: list[int], splits: bool) -> None:
    assert splits_large_events(version) is splits


def test_the_token_and_what_handlers_read_are_projected_in() -> None:
    posts = POSTS.watch(Settings(post_lifecycle={"visible_fields": ["title"], "version_field": "rev"}))
    for fields in (POST_EVENT_FIELDS, posts.fields, PROFILE_EVENT_FIELDS):
        assert "_id" in fields and "operationType" in fields and "clusterTime" in fields
    assert "updateDescription.updatedFields" in PROFILE_EVENT_FIELDS
    # inserts need no diff; edits need it whole (a nested edit is a dotted key) and deletes the
    # pre-image's author, never the whole pre-image
    assert not any(f.startswith("updateDescription") for f in POST_EVENT_FIELDS)
    assert {"updateDescription.updatedFields", "fullDocument.title", "fullDocument.rev"} <= set(posts.fields)
    assert [f for f in posts.fields if f.startswith("fullDocumentBeforeChange")] == [
        "fullDocumentBeforeChange._id",
        "fullDocumentBeforeChange.author_id",
    ]


def test_project_keeps_only_the_listed_paths() -> None:
    event = {
        "_id": {"_data": "01"},
        "operationType": "insert",
        "fullDocument": {"_id": "p1", "author_id": "a", "text": "t", "media": "x" * 1000},
        "wallTime": 1,
    }
    assert project(event, ("_id", "operationType", "fullDocument._id", "fullDocument.text", "nope.x")) == {
        "_id": {"_data": "01"},
        "operationType": "insert",
        "fullDocument": {"_id": "p1", "text": "t"},
    }


async def test_the_in_memory_feed_projects_like_the_mongodb_one() -> None:
    # A handler reading a field not declared would find it missing here too, in every in-memory test
    db = MemoryDatabase()
    feed = MemoryChangeFeed(
        db, "posts", "posts", frozenset({"insert"}), max_await_seconds=0.01, fields=POST_EVENT_FIELDS
    )
    async with feed.open(None) as cursor:
        db.insert("posts", {"_id": "p1", "author_id": "a", "text": "t", "media": ["big"]})
        event = await cursor.try_next()
    assert event is not None
    assert event.full_document == {"_id": "p1", "author_id": "a", "text": "t"}
    assert parse_new_post(event, 100).author_id == "a"


@pytest.mark.parametrize("stream", ["posts", "profiles"])
def test_an_event_marked_oversize_is_invalid_with_the_reason(stream: str) -> None:
    raw = {
        "_id": {"_data": "01"},
        "operationType": "insert" if stream == "posts" else "update",
        "clusterTime": Timestamp(1, 1),
        "documentKey": {"_id": "x"},
        "fanoutOversizeBytes": 17_000_000,
    }
    event = ChangeEvent.from_raw(stream, raw)
    assert event.oversize_bytes == 17_000_000
    parse = (
        (lambda: parse_new_post(event, 100)) if stream == "posts" else (lambda: parse_profile_change(event))
    )
    with pytest.raises(InvalidEvent, match=r"16 MB .*17000000 bytes"):
        parse()


class _TooLargeFeed:
    """A feed whose stream fails on an event over 16 MB every time it is read."""

    stream = "posts"

    def __init__(self) -> None:
        self.opens = 0

    @contextlib.asynccontextmanager
    async def open(self, resume_after: Token | None, start_at: datetime | None = None) -> AsyncIterator[Any]:
        self.opens += 1
        yield self

    @property
    def resume_token(self) -> Token | None:
        return None

    async def try_next(self) -> ChangeEvent | None:
        raise EventTooLarge("posts", 10334, "a change event is over MongoDB's 16 MB limit")


async def test_an_event_too_large_is_never_resumed_from_now_whatever_on_history_lost_says() -> None:
    # Given the policy that turns lost history into a recorded gap
    cfg = PipelineSettings(on_history_lost="resume-from-now")
    feed, checkpoints = _TooLargeFeed(), MemoryCheckpointStore()
    pipeline = StreamPipeline(feed, MemoryPublisherHandler(), checkpoints, MemoryDeadLetters(), cfg)

    # When the stream meets an event too large, the pipeline stops with it: no reopen, no gap
    with pytest.raises(EventTooLarge):
        await asyncio.wait_for(pipeline.run(asyncio.Event()), 5)
    assert feed.opens == 1
    assert checkpoints.recorded_gaps == []
    assert pipeline.stats.reopens == 0 and pipeline.stats.gaps == 0


class MemoryPublisherHandler:
    async def process(self, events: Any, report: Any) -> None:
        raise AssertionError("no event may reach the handler")
