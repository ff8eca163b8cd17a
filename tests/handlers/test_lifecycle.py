"""Edits and deletes of posts (handlers/lifecycle.py, the posts handler): which events are edits,
deletes or nothing to followers, their ids, and what reaches whom, on the in-memory stand-ins with
events read through the in-memory feed (lookup and pre-images as the posts row asks for them)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from enrichment.cache import LayeredCache
from enrichment.errors import InvalidEvent
from enrichment.memory import MemoryLayer
from handlers.emitter import JobEmitter
from handlers.events import ChangeEvent
from handlers.lifecycle import (
    OWN_WRITE,
    AuthorUnknown,
    Ignored,
    PostDelete,
    PostEdit,
    PostRules,
    parse_post_change,
    token_edit_id,
)
from handlers.posts import PostCreatedHandler, PostStats
from tests.harness import handle_events
from worker.memory.db import MemoryDatabase
from worker.memory.feed import MemoryChangeFeed
from worker.memory.jobs import InlineJobQueue
from worker.memory.publisher import MemoryPublisher
from worker.memory.stores import MemoryFollowerGraph, MemoryPostStore, MemoryProfileSource
from worker.settings import load_settings
from worker.streams import POSTS, post_rules

FOLLOWERS = ["f1", "f2", "f3", "f4"]


@dataclass
class Posts:
    """The posts collection, its feed as the posts row configures it, and the handler."""

    lifecycle: dict[str, Any] = field(default_factory=dict)
    db: MemoryDatabase = field(default_factory=MemoryDatabase)
    graph: MemoryFollowerGraph = field(default_factory=lambda: MemoryFollowerGraph(page_size=2))
    publisher: MemoryPublisher = field(default_factory=MemoryPublisher)

    def __post_init__(self) -> None:
        cfg = load_settings(None, post_lifecycle=self.lifecycle)
        self.rules = post_rules(cfg)
        watch = POSTS.watch(cfg)
        self.feed = MemoryChangeFeed(
            self.db,
            "posts",
            "posts",
            frozenset(watch.ops),
            watch.update_lookup,
            0.01,
            watch.fields,
            watch.before_change,
        )
        if cfg.post_lifecycle.pre_images != "off":
            self.db.pre_image_collections.add("posts")
        self.graph.set_followers("alice", ["alice", *FOLLOWERS])
        stats = PostStats()
        jobs = InlineJobQueue(self.graph, self.publisher, 3, stats)
        cache = LayeredCache(MemoryLayer(100, 60.0, 10.0), None, MemoryProfileSource(self.db))
        self.handler = PostCreatedHandler(
            cache, MemoryPostStore(self.db), JobEmitter(self.graph, jobs, 10_000), 1_000, stats, self.rules
        )
        self._read = 0

    async def events(self) -> list[ChangeEvent]:
        """The events written since the last call, as the posts feed delivers them."""
        out: list[ChangeEvent] = []
        async with self.feed.open({"_data": f"82{self._read:016X}"}) as cursor:
            while (ev := await cursor.try_next()) is not None:
                out.append(ev)
        self._read = self.db.position
        return out

    def sent(self, kind: str) -> list[dict[str, Any]]:
        return [orjson.loads(m.body) for m in self.publisher.messages if m.routing_key == kind]

    def ids(self, kind: str) -> list[str]:
        return [m.message_id for m in self.publisher.messages if m.routing_key == kind]


def recipients(bodies: list[dict[str, Any]]) -> list[str]:
    return sorted(r for b in bodies for r in b["recipients"])


async def test_an_edit_of_the_text_reaches_exactly_the_followers_with_the_new_text() -> None:
    # Given a post of alice, created and fanned out
    p = Posts()
    p.db.insert("posts", {"_id": "p1", "author_id": "alice", "text": "draft"})
    await handle_events(p.handler, await p.events())
    # When its text is edited
    p.db.update("posts", "p1", {"text": "final"})
    results = await handle_events(p.handler, await p.events())
    # Then every follower, never the author, gets post.updated with the new text
    assert results == [None]
    updated = p.sent("post.updated")
    assert recipients(updated) == FOLLOWERS
    assert {b["post"]["text"] for b in updated} == {"final"}
    assert {b["post"]["fields"] == {} and b["edit"]["version"] is None for b in updated} == {True}
    # and its ids name the edit, never a creation's
    (edit_id,) = {b["edit"]["id"] for b in updated}
    assert edit_id.startswith("t") and len(edit_id) == 17
    assert p.ids("post.updated") == [f"post.updated:{edit_id}:p1:range:0:chunk:{n}" for n in (0, 1)]
    assert not set(p.ids("post.updated")) & set(p.ids("post.created"))
    assert p.handler.stats.edits == 1


async def test_edit_ids_are_the_same_on_a_replay_and_differ_between_edits() -> None:
    # Given two edits of one post
    p = Posts()
    p.db.insert("posts", {"_id": "p1", "author_id": "alice", "text": "a"})
    p.db.update("posts", "p1", {"text": "b"})
    p.db.update("posts", "p1", {"text": "c"})
    events = [e for e in await p.events() if e.op == "update"]
    # When they are handled, then handled again (a replay from an earlier checkpoint)
    await handle_events(p.handler, events)
    first = p.ids("post.updated")
    p.publisher.messages.clear()
    await handle_events(p.handler, events)
    # Then the replay repeats the same ids, and the two edits share none
    assert p.ids("post.updated") == first
    assert len(set(first)) == len(first) == 4
    assert token_edit_id(events[0]) != token_edit_id(events[1])


async def test_with_a_version_field_the_edit_id_is_the_version_of_the_fields_carried() -> None:
    p = Posts({"version_field": "rev", "visible_fields": ["title", "published"]})
    when = datetime(2026, 11, 30, 8, 0, tzinfo=UTC)
    p.db.insert("posts", {"_id": "p1", "author_id": "alice", "text": "a", "rev": 1, "title": "T"})
    p.db.update("posts", "p1", {"text": "b", "rev": 2, "published": when})
    await handle_events(p.handler, await p.events())
    updated = p.sent("post.updated")
    assert {b["edit"]["id"] for b in updated} == {"v2"}
    assert {b["edit"]["version"] for b in updated} == {2}
    assert updated[0]["post"]["fields"] == {"title": "T", "published": when.isoformat()}
    assert p.ids("post.updated")[0] == "post.updated:v2:p1:range:0:chunk:0"


async def test_edits_of_fields_followers_do_not_see_are_ignored_and_counted() -> None:
    # Given a post whose invisible field changes, and the worker's own snapshot write
    p = Posts({"visible_fields": ["title"]})
    p.db.insert("posts", {"_id": "p1", "author_id": "alice", "text": "a"})
    await handle_events(p.handler, await p.events())
    p.db.update("posts", "p1", {"likes": 3})
    p.db.update("posts", "p1", {"author_snapshot": {"version": 9}})
    # When they are handled
    results = await handle_events(p.handler, await p.events())
    # Then nothing is sent, each is done, and only the invisible edit counts as ignored
    assert results == [None, None]
    assert p.sent("post.updated") == []
    assert p.handler.stats.edits_ignored == 1
    assert p.handler.stats.edits == 0


async def test_a_hard_delete_with_a_pre_image_reaches_exactly_the_followers() -> None:
    p = Posts({"pre_images": "when-available"})
    p.db.insert("posts", {"_id": "p1", "author_id": "alice", "text": "a"})
    p.db.delete("posts", "p1")
    events = await p.events()
    assert events[1].raw["fullDocumentBeforeChange"] == {"_id": "p1", "author_id": "alice"}
    assert await handle_events(p.handler, events) == [None, None]
    deleted = p.sent("post.deleted")
    assert recipients(deleted) == FOLLOWERS
    assert {orjson.dumps(b["post"]) for b in deleted} == {b'{"id":"p1","author_id":"alice"}'}
    assert p.ids("post.deleted") == ["post.deleted:p1:range:0:chunk:0", "post.deleted:p1:range:0:chunk:1"]
    assert p.handler.stats.deletes == 1


async def test_a_hard_delete_without_a_pre_image_is_reported_with_the_reason_and_counted() -> None:
    # Given pre-images off and no soft-delete field
    p = Posts()
    p.db.insert("posts", {"_id": "p1", "author_id": "alice", "text": "a"})
    await handle_events(p.handler, await p.events())
    p.db.delete("posts", "p1")
    # When the delete is handled
    (error,) = await handle_events(p.handler, await p.events())
    # Then it fails as a poison event (the pipeline dead-letters it) saying why, and is counted
    assert isinstance(error, AuthorUnknown) and isinstance(error, InvalidEvent)
    assert "post p1" in str(error) and 'pre_images is "off"' in str(error)
    assert p.handler.stats.deletes_author_unknown == 1
    assert p.sent("post.deleted") == []


async def test_setting_the_soft_delete_field_is_a_delete_and_later_edits_are_ignored() -> None:
    p = Posts({"soft_delete_field": "deleted_at"})
    p.db.insert("posts", {"_id": "p1", "author_id": "alice", "text": "a"})
    p.db.update("posts", "p1", {"deleted_at": datetime(2026, 11, 30, tzinfo=UTC)})
    p.db.update("posts", "p1", {"text": "edited after the delete"})
    assert await handle_events(p.handler, await p.events()) == [None, None, None]
    assert recipients(p.sent("post.deleted")) == FOLLOWERS
    assert p.sent("post.updated") == []
    assert p.handler.stats.edits_ignored == 1


def event(op: str, token: str = "82AA", **raw: Any) -> ChangeEvent:
    return ChangeEvent.from_raw("posts", {"_id": {"_data": token}, "operationType": op, **raw})


RULES = PostRules(visible_fields=("media",), soft_delete_field="deleted_at")
DOC = {"_id": "p1", "author_id": "alice", "text": "t", "media": [{"url": "u"}]}


@pytest.mark.parametrize(
    ("ev", "expected"),
    [
        # a nested edit of a visible field is a dotted key: still an edit
        (event("update", documentKey={"_id": "p1"}, fullDocument=DOC,
               updateDescription={"updatedFields": {"media.0.url": "u"}, "removedFields": []}), PostEdit),
        (event("update", documentKey={"_id": "p1"}, fullDocument=DOC,
               updateDescription={"updatedFields": {}, "removedFields": ["media"]}), PostEdit),
        (event("replace", documentKey={"_id": "p1"}, fullDocument=DOC), PostEdit),
        (event("replace", documentKey={"_id": "p1"}, fullDocument={**DOC, "deleted_at": 1}), PostDelete),
        # un-deleting (the field set to null) is not a delete
        (event("update", documentKey={"_id": "p1"}, fullDocument=DOC,
               updateDescription={"updatedFields": {"deleted_at": None}}), Ignored),
        # an edit of a post deleted since the edit: its delete follows
        (event("update", documentKey={"_id": "p1"}, fullDocument=None,
               updateDescription={"updatedFields": {"text": "x"}}), Ignored),
        (event("delete", documentKey={"_id": "p1"}, fullDocumentBeforeChange=DOC), PostDelete),
    ],
)  # fmt: skip
def test_which_events_are_edits_deletes_or_nothing(ev: ChangeEvent, expected: type) -> None:
    assert isinstance(parse_post_change(ev, RULES, 1_000), expected)


def test_own_snapshot_writes_are_ignored_as_such() -> None:
    ev = event("update", documentKey={"_id": "p1"}, fullDocument=DOC,
               updateDescription={"updatedFields": {"author_snapshot.version": 2}})  # fmt: skip
    assert parse_post_change(ev, RULES, 1_000) == Ignored(OWN_WRITE)


@pytest.mark.parametrize(
    ("ev", "message"),
    [
        (event("update", documentKey={"_id": "p1"}, fullDocument={**DOC, "rev": "2"},
               updateDescription={"updatedFields": {"text": "x"}}), "rev must be a non-negative integer"),
        (event("update", documentKey={"_id": "p1"}, fullDocument={**DOC, "author_id": 5},
               updateDescription={"updatedFields": {"text": "x"}}), "author_id"),
        (event("update", documentKey={"_id": "p1"}, fullDocument={**DOC, "media": b"raw"},
               updateDescription={"updatedFields": {"media": b"raw"}}), "JSON cannot carry"),
        (event("update", documentKey={"_id": "p1"}, fullDocument=None,
               updateDescription={"updatedFields": {"deleted_at": 1}}), "soft-deleted but its author is unknown"),
        (event("update", documentKey={"_id": "p1"}, fullDocument=DOC), "no updateDescription"),
        (event("update", documentKey={"_id": "p1"}, fullDocument=DOC,
               updateDescription={"updatedFields": ["text"]}), "malformed updateDescription"),
        (event("delete", documentKey={}), "documentKey._id"),
    ],
)  # fmt: skip
def test_malformed_changes_raise_naming_the_problem(ev: ChangeEvent, message: str) -> None:
    rules = PostRules(visible_fields=("media",), version_field="rev", soft_delete_field="deleted_at")
    with pytest.raises(InvalidEvent, match=message):
        parse_post_change(ev, rules, 1_000)


def test_a_missing_pre_image_says_why_when_pre_images_are_on() -> None:
    ev = event("delete", documentKey={"_id": "p1"}, fullDocumentBeforeChange=None)
    with pytest.raises(AuthorUnknown, match="pre-image is missing"):
        parse_post_change(ev, PostRules(pre_images=True), 1_000)
