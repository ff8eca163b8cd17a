"""MongoChangeFeed over the wire: the real ``AsyncMongoClient`` against a scripted MockupDB server.

What goes over the wire (the ``$changeStream`` stage, ``resumeAfter``, our ``$match``), how the
driver resumes after errors it can resume by itself (and from which token), and how the errors it
cannot resume come out of the adapter (StreamFatal / ServiceUnavailable).

The server (tests/worker/mongo/mockup_helpers.py) serves events from a per-collection log and honours
``resumeAfter``: a stream resumed from the wrong token would repeat or skip events, so the exact
sequences asserted below also prove the token the driver resumed from.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Mapping
from typing import Any

import pytest
from pymongo import AsyncMongoClient
from pymongo.errors import OperationFailure

from enrichment.errors import EventTooLarge, InvalidEvent, ServiceUnavailable, StreamFatal
from handlers.events import PROFILE_EVENT_FIELDS, ChangeEvent, parse_new_post
from tests.worker.mongo.mockup_helpers import HANGUP, ChangeStreamServer, Fault, ServerError
from worker.mongo.feed import LargeEvents, MongoChangeCursor, MongoChangeFeed
from worker.settings import Settings
from worker.streams import POSTS, PROFILES

pytestmark = pytest.mark.timeout(30)

Client = AsyncMongoClient[dict[str, Any]]

RESUMABLE_LABEL = "ResumableChangeStreamError"
NON_RESUMABLE_LABEL = "NonResumableChangeStreamError"


@pytest.fixture
def mongo() -> Iterator[ChangeStreamServer]:
    server = ChangeStreamServer(batch_limit=2)
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
async def client(mongo: ChangeStreamServer) -> AsyncIterator[Client]:
    c: Client = AsyncMongoClient(mongo.uri, replicaSet="rs0", serverSelectionTimeoutMS=5000)
    try:
        yield c
    finally:
        await c.close()


def posts_feed(client: Client, large_events: LargeEvents = "split") -> MongoChangeFeed:
    w = POSTS.watch(Settings())
    return MongoChangeFeed(
        client["social"]["posts"],
        "posts",
        w.ops,
        w.update_lookup,
        50,
        100,
        w.fields,
        large_events,
        w.before_change,
        w.match,
    )


def profiles_feed(client: Client, large_events: LargeEvents = "split") -> MongoChangeFeed:
    return MongoChangeFeed(
        client["social"]["profiles"],
        "profiles",
        PROFILES.watch(Settings()).ops,
        True,
        50,
        100,
        PROFILE_EVENT_FIELDS,
        large_events,
    )


POSTS_MATCH = {
    "$match": {
        "operationType": {"$in": ["insert", "update", "replace", "delete"]},
        # the worker's own snapshot writes stay on the server
        "updateDescription.updatedFields.author_snapshot": {"$exists": False},
    }
}
PROFILES_MATCH = {"$match": {"operationType": {"$in": ["insert", "update", "replace", "delete"]}}}
SPLIT = {"$changeStreamSplitLargeEvent": {}}


def key(event: ChangeEvent | None) -> Any:
    return None if event is None else event.raw["documentKey"]["_id"]


async def read(cursor: MongoChangeCursor, n: int) -> list[ChangeEvent]:
    """Exactly ``n`` events, each from one ``try_next``."""
    out: list[ChangeEvent] = []
    for _ in range(n):
        event = await cursor.try_next()
        assert event is not None, f"expected an event after {[key(e) for e in out]}"
        out.append(event)
    return out


async def drain(cursor: MongoChangeCursor, limit: int = 20) -> list[ChangeEvent]:
    """Every event up to the first idle poll (``try_next`` returning None)."""
    out: list[ChangeEvent] = []
    while (event := await cursor.try_next()) is not None:
        out.append(event)
        assert len(out) <= limit, "the stream never went idle"
    return out


async def poll(cursor: MongoChangeCursor, n: int) -> list[ChangeEvent | None]:
    """``n`` calls of ``try_next``, whatever they return."""
    return [await cursor.try_next() for _ in range(n)]


def change_stream_stage(aggregate: Mapping[str, Any]) -> Mapping[str, Any]:
    pipeline = aggregate["pipeline"]
    assert list(pipeline[0]) == ["$changeStream"], pipeline
    stage: Mapping[str, Any] = pipeline[0]["$changeStream"]
    return stage


# -- 1. what the first aggregate carries -----------------------------------------------------------


async def test_posts_feed_resumes_after_the_checkpoint_with_our_match_and_lookup(
    mongo: ChangeStreamServer, client: Client
) -> None:
    # Given p1 (already checkpointed) and two later inserts
    p1, p2, p3 = (mongo.insert("posts", f"p{i}", author_id="a", text=f"t{i}") for i in (1, 2, 3))

    # When the feed opens from p1's token and reads until idle
    async with posts_feed(client).open(resume_after=p1["_id"]) as cursor:
        events = await drain(cursor)

    # Then exactly the events after the checkpoint come back, as ChangeEvents carrying their token
    assert [key(e) for e in events] == ["p2", "p3"]
    assert [e.token for e in events] == [p2["_id"], p3["_id"]]
    assert {(e.stream, e.op) for e in events} == {("posts", "insert")}
    assert events[0].full_document == {"_id": "p2", "author_id": "a", "text": "t2"}
    # and one aggregate on social.posts resumed after the saved token, with updateLookup (edits
    # need the post's author) and no pre-images (off by default)
    (agg,) = mongo.named("aggregate")
    assert (agg["aggregate"], agg["$db"]) == ("posts", "social")
    stage = change_stream_stage(agg)
    assert stage["resumeAfter"] == p1["_id"]
    assert stage["fullDocument"] == "updateLookup"
    assert "fullDocumentBeforeChange" not in stage
    assert "startAfter" not in stage and "startAtOperationTime" not in stage
    # and our operationType filter follows the $changeStream stage, then the projection to the fields
    # the handlers read, then (the server is 7.0) the split stage, last
    posts_project = {
        "$project": {
            "_id": 1,
            "operationType": 1,
            "clusterTime": 1,
            "documentKey": 1,
            "ns": 1,
            "fullDocument._id": 1,
            "fullDocument.author_id": 1,
            "fullDocument.text": 1,
            "fullDocument.created_at": 1,
            "updateDescription.updatedFields": 1,
            "updateDescription.removedFields": 1,
            "fullDocumentBeforeChange._id": 1,
            "fullDocumentBeforeChange.author_id": 1,
        }
    }
    assert agg["pipeline"][1:] == [POSTS_MATCH, posts_project, SPLIT]
    # and batch size and await time reach the server
    assert agg["cursor"] == {"batchSize": 100}
    get_mores = mongo.named("getMore")
    assert get_mores and all(g["maxTimeMS"] == 50 and g["batchSize"] == 100 for g in get_mores)


async def test_profiles_feed_asks_for_update_lookup(mongo: ChangeStreamServer, client: Client) -> None:
    # Given two profile updates after the checkpointed one
    u1, _, u3 = (
        mongo.update("profiles", f"u{i}", {"display_name": f"U{i}"}, {"display_name": f"U{i}", "v": i})
        for i in (1, 2, 3)
    )

    async with profiles_feed(client).open(resume_after=u1["_id"]) as cursor:
        events = await drain(cursor)

    assert [key(e) for e in events] == ["u2", "u3"]
    assert events[-1].token == u3["_id"]
    assert events[-1].full_document == {"_id": "u3", "display_name": "U3", "v": 3}
    (agg,) = mongo.named("aggregate")
    assert agg["aggregate"] == "profiles"
    stage = change_stream_stage(agg)
    assert stage["resumeAfter"] == u1["_id"]
    assert stage["fullDocument"] == "updateLookup"
    project = agg["pipeline"][2]["$project"]
    assert agg["pipeline"][1:] == [PROFILES_MATCH, {"$project": project}, SPLIT]
    # the profile's display fields, its version and the update's diff; nothing else of the document
    assert {k for k in project if k.startswith("fullDocument.")} == {
        "fullDocument._id",
        "fullDocument.version",
        "fullDocument.username",
        "fullDocument.display_name",
        "fullDocument.avatar_url",
    }
    assert {"_id", "updateDescription.updatedFields", "updateDescription.removedFields"} <= set(project)


async def test_without_a_checkpoint_the_stream_starts_from_now(
    mongo: ChangeStreamServer, client: Client
) -> None:
    mongo.insert("posts", "old", author_id="a", text="before the stream opened")

    async with posts_feed(client).open(resume_after=None) as cursor:
        assert await cursor.try_next() is None
        mongo.insert("posts", "new", author_id="a", text="after")
        assert [key(e) for e in await drain(cursor)] == ["new"]

    stage = change_stream_stage(mongo.named("aggregate")[0])
    assert not {"resumeAfter", "startAfter", "startAtOperationTime"} & set(stage)


# -- 2 and 3. errors the driver resumes from by itself ---------------------------------------------


@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(HANGUP, id="connection-dropped"),
        pytest.param(ServerError(6, "host unreachable", (RESUMABLE_LABEL,)), id="code6-resumable-label"),
        pytest.param(ServerError(43, "cursor id not found"), id="cursor-not-found"),
    ],
)
async def test_resumable_getmore_failure_resumes_after_the_last_event_returned(
    mongo: ChangeStreamServer, client: Client, fault: Fault
) -> None:
    # Given a checkpoint at p1 and five later inserts, served two per batch
    p1, _, p3, *_ = (mongo.insert("posts", f"p{i}", author_id="a", text="x") for i in range(1, 7))

    async with posts_feed(client).open(resume_after=p1["_id"]) as cursor:
        # When the first batch has been read
        first = await read(cursor, 2)
        # and the getMore for the next one fails
        mongo.inject("getMore", fault)
        rest = await drain(cursor)
        after = cursor.resume_token

    # Then the failure was transparent: every event exactly once, in order
    assert [key(e) for e in first + rest] == ["p2", "p3", "p4", "p5", "p6"]
    assert mongo.pending_faults() == 0  # the fault did hit a getMore
    # and the driver re-ran aggregate with resumeAfter = the token of the last event returned
    initial, resumed = mongo.named("aggregate")
    assert change_stream_stage(initial)["resumeAfter"] == p1["_id"]
    stage = change_stream_stage(resumed)
    assert stage["resumeAfter"] == p3["_id"] == first[-1].token
    assert "startAtOperationTime" not in stage and "startAfter" not in stage
    assert resumed["pipeline"][1:] == initial["pipeline"][1:]
    # and the resume token kept moving afterwards
    assert after == mongo.post_batch_tokens[-1]


# -- 4 and 5. the stream cannot continue: StreamFatal ----------------------------------------------


@pytest.mark.parametrize("code", [286, 280])
async def test_fatal_getmore_error_surfaces_as_stream_fatal(
    mongo: ChangeStreamServer, client: Client, code: int
) -> None:
    p1 = mongo.insert("posts", "p1", author_id="a", text="x")
    mongo.insert("posts", "p2", author_id="a", text="x")

    async with posts_feed(client).open(resume_after=p1["_id"]) as cursor:
        assert [key(e) for e in await read(cursor, 1)] == ["p2"]
        mongo.inject("getMore", ServerError(code, "cannot continue", (NON_RESUMABLE_LABEL,)))
        with pytest.raises(StreamFatal) as info:
            await cursor.try_next()

    assert info.value.code == code
    assert info.value.stream == "posts"
    assert f"code {code}" in info.value.reason
    assert isinstance(info.value.__cause__, OperationFailure)
    assert info.value.__cause__.code == code
    assert len(mongo.named("aggregate")) == 1  # the driver did not try to resume


@pytest.mark.parametrize("code", [286, 280])
async def test_fatal_aggregate_error_surfaces_from_open_as_stream_fatal(
    mongo: ChangeStreamServer, client: Client, code: int
) -> None:
    u1 = mongo.update("profiles", "u1", {"display_name": "U"}, {"display_name": "U"})
    mongo.inject("aggregate", ServerError(code, "cannot continue", (NON_RESUMABLE_LABEL,)))

    with pytest.raises(StreamFatal) as info:
        async with profiles_feed(client).open(resume_after=u1["_id"]):
            pytest.fail("open() must not yield a cursor")

    assert (info.value.code, info.value.stream) == (code, "profiles")
    assert len(mongo.named("aggregate")) == 1
    assert mongo.named("getMore") == []


async def test_checkpoint_no_longer_in_history_fails_open_with_286(
    mongo: ChangeStreamServer, client: Client
) -> None:
    # A token the server does not know (it fell off the oplog) is answered with 286
    gone = {"_data": "8264000000000000012B0400"}

    with pytest.raises(StreamFatal) as info:
        async with posts_feed(client).open(resume_after=gone):
            pytest.fail("open() must not yield a cursor")

    assert (info.value.code, info.value.stream) == (286, "posts")
    assert change_stream_stage(mongo.named("aggregate")[0])["resumeAfter"] == gone


async def test_history_lost_while_the_driver_resumes_surfaces_from_try_next(
    mongo: ChangeStreamServer, client: Client
) -> None:
    p1 = mongo.insert("posts", "p1", author_id="a", text="x")
    p2 = mongo.insert("posts", "p2", author_id="a", text="x")

    async with posts_feed(client).open(resume_after=p1["_id"]) as cursor:
        assert [key(e) for e in await read(cursor, 1)] == ["p2"]
        # The connection drops, and the resume attempt finds the history gone
        mongo.inject("getMore", HANGUP)
        mongo.inject("aggregate", ServerError(286, "history lost", (NON_RESUMABLE_LABEL,)))
        with pytest.raises(StreamFatal) as info:
            await cursor.try_next()

    assert (info.value.code, info.value.stream) == (286, "posts")
    assert change_stream_stage(mongo.named("aggregate")[1])["resumeAfter"] == p2["_id"]
    assert mongo.pending_faults() == 0


async def test_invalidate_event_surfaces_as_stream_fatal(mongo: ChangeStreamServer, client: Client) -> None:
    # Given an insert, then the collection's drop, whose invalidate event reaches the cursor
    p1 = mongo.insert("posts", "p1", author_id="a", text="x")
    mongo.insert("posts", "p2", author_id="a", text="x")
    mongo.drop("posts", deliver_invalidate=True)

    async with posts_feed(client).open(resume_after=p1["_id"]) as cursor:
        assert [key(e) for e in await read(cursor, 1)] == ["p2"]
        with pytest.raises(StreamFatal) as info:
            await cursor.try_next()

    assert info.value.code is None
    assert info.value.stream == "posts"
    assert "invalidate" in info.value.reason


async def test_collection_drop_ends_the_stream_even_when_our_match_filters_the_invalidate(
    mongo: ChangeStreamServer, client: Client
) -> None:
    # Given an insert, then the collection's drop. MongoDB applies the user's $match to the
    # invalidate event as well (jstests/change_streams/start_after_invalidation_exception.js):
    # a stream filtered to operationType "insert" does not see it, but its cursor ends (id 0).
    p1 = mongo.insert("posts", "p1", author_id="a", text="x")
    mongo.insert("posts", "p2", author_id="a", text="x")
    mongo.drop("posts", deliver_invalidate=False)

    async with posts_feed(client).open(resume_after=p1["_id"]) as cursor:
        (agg,) = mongo.named("aggregate")
        assert "invalidate" not in agg["pipeline"][1]["$match"]["operationType"]["$in"]
        assert [key(e) for e in await read(cursor, 1)] == ["p2"]
        # Then the end of the stream must not look like an idle stream
        with pytest.raises(StreamFatal) as info:
            await poll(cursor, 3)

    assert info.value.stream == "posts"


# -- 6. idle polls: the post-batch resume token -----------------------------------------------------


async def test_empty_batch_moves_the_resume_token_to_the_post_batch_token(
    mongo: ChangeStreamServer, client: Client
) -> None:
    p1 = mongo.insert("posts", "p1", author_id="a", text="x")
    p2 = mongo.insert("posts", "p2", author_id="a", text="x")

    async with posts_feed(client).open(resume_after=p1["_id"]) as cursor:
        assert [key(e) for e in await read(cursor, 1)] == ["p2"]
        assert cursor.resume_token == p2["_id"]

        # When a getMore comes back empty, the resume token is its postBatchResumeToken
        assert await cursor.try_next() is None
        idle1 = mongo.post_batch_tokens[-1]
        assert idle1 != p2["_id"]
        assert cursor.resume_token == idle1
        # and it keeps moving with every idle poll
        assert await cursor.try_next() is None
        idle2 = mongo.post_batch_tokens[-1]
        assert idle2 != idle1
        assert cursor.resume_token == idle2

        # And after a dropped connection the driver resumes from that idle token, losing nothing
        mongo.insert("posts", "p3", author_id="a", text="x")
        mongo.inject("getMore", HANGUP)
        assert [key(e) for e in await drain(cursor)] == ["p3"]

    assert change_stream_stage(mongo.named("aggregate")[1])["resumeAfter"] == idle2


# -- 7. other errors: ServiceUnavailable, without the URI ------------------------------------------


@pytest.mark.parametrize(
    ("command", "code"),
    [
        pytest.param("getMore", 2, id="getMore-BadValue"),
        pytest.param("getMore", 6, id="getMore-code6-without-resumable-label"),
        pytest.param("aggregate", 2, id="aggregate-BadValue"),
    ],
)
async def test_other_server_errors_surface_as_service_unavailable_without_the_uri(
    mongo: ChangeStreamServer, client: Client, command: str, code: int
) -> None:
    p1 = mongo.insert("posts", "p1", author_id="a", text="x")
    mongo.insert("posts", "p2", author_id="a", text="x")
    # The server's message even quotes the address: none of it may reach ours
    fault = ServerError(code, f"failed talking to {mongo.uri}")

    if command == "aggregate":
        mongo.inject("aggregate", fault)

    async def open_read_and_poll() -> None:
        async with posts_feed(client).open(resume_after=p1["_id"]) as cursor:
            assert [key(e) for e in await read(cursor, 1)] == ["p2"]
            mongo.inject("getMore", fault)
            await cursor.try_next()

    with pytest.raises(ServiceUnavailable) as info:
        await open_read_and_poll()

    message = str(info.value)
    assert f"code {code}" in message
    assert mongo.uri not in message
    assert mongo.server.address_string not in message
    assert "failed talking" not in message
    assert isinstance(info.value.__cause__, OperationFailure)
    assert info.value.__cause__.code == code
    assert len(mongo.named("aggregate")) == 1  # not resumed by the driver
    assert mongo.pending_faults() == 0


# -- 8. events over 16 MB: the split stage, fragments, BSONObjectTooLarge ----------------------------


@pytest.mark.parametrize(
    ("version", "policy", "tail"),
    [
        pytest.param("7.0.2", "split", [SPLIT], id="7.0-splits"),
        pytest.param("6.0.9", "split", [SPLIT], id="6.0.9-splits"),
        pytest.param("6.0.8", "split", [], id="6.0.8-cannot"),
        pytest.param("6.3.1", "split", [], id="6.3-rapid-release-cannot"),
        pytest.param("5.0.14", "split", [], id="5.0-cannot"),
        pytest.param("7.0.2", "fail", [], id="fail-never-splits"),
        pytest.param("7.0.2", "skip", ["skip"], id="skip-marks-oversize-events"),
    ],
)
async def test_the_split_stage_is_added_last_only_where_the_server_has_it(
    mongo: ChangeStreamServer, client: Client, version: str, policy: LargeEvents, tail: list[Any]
) -> None:
    mongo.version = version
    async with posts_feed(client, policy).open(resume_after=None):
        pass
    (agg,) = mongo.named("aggregate")
    stages = agg["pipeline"][1:]
    assert stages[0] == POSTS_MATCH and list(stages[1]) == ["$project"]
    if tail == ["skip"]:
        (skip,) = stages[2:]
        assert list(skip["$set"]) == ["fanoutOversizeBytes", "fullDocument", "updateDescription"]
        # each document is measured, never $$ROOT (measuring an oversize event fails like sending it)
        assert "$$ROOT" not in repr(skip) and "$bsonSize" in repr(skip)
    else:
        assert stages[2:] == tail
    # the version is read once per open, and only when it matters
    assert len(mongo.named("buildInfo")) == (1 if policy == "split" else 0)


async def test_fragments_are_reassembled_into_one_event_checkpointed_at_the_last_fragment(
    mongo: ChangeStreamServer, client: Client
) -> None:
    # Given a checkpoint at u1, then an update split in three fragments, then another update
    u1 = mongo.update("profiles", "u1", {"display_name": "A"}, {"display_name": "A", "version": 1})
    full = {"display_name": "B" * 100, "username": "bee", "version": 2}
    fragments = mongo.split_update("profiles", "u2", {"display_name": "B" * 100}, full, of=3)
    mongo.update("profiles", "u3", {"display_name": "C"}, {"display_name": "C", "version": 3})

    async with profiles_feed(client).open(resume_after=u1["_id"]) as cursor:
        # (two per batch: the fragments span two batches; the connection drops between them)
        mongo.inject("getMore", HANGUP)
        events = await drain(cursor)

    # Then the handler sees one whole event, without splitEvent, fields of every fragment merged
    assert [key(e) for e in events] == ["u2", "u3"]
    whole = events[0]
    assert whole.fragments == 3
    assert "splitEvent" not in whole.raw
    assert whole.op == "update"
    assert whole.full_document == {"_id": "u2", **full}
    assert whole.raw["updateDescription"]["updatedFields"] == {"display_name": "B" * 100}
    # and its token, the checkpoint position, is the last fragment's
    assert whole.token == fragments[-1]["_id"] == whole.raw["_id"]
    # and after the dropped connection the driver resumed from the fragment it had last returned
    assert change_stream_stage(mongo.named("aggregate")[1])["resumeAfter"] == fragments[1]["_id"]
    assert mongo.named("aggregate")[1]["pipeline"][-1] == SPLIT


async def test_while_an_event_is_incomplete_the_resume_token_stays_before_its_first_fragment(
    mongo: ChangeStreamServer, client: Client
) -> None:
    u1 = mongo.update("profiles", "u1", {"display_name": "A"}, {"display_name": "A", "version": 1})
    fragments = mongo.split_update("profiles", "u2", {"username": "b"}, {"username": "b", "version": 2}, of=2)
    with mongo._lock:  # hold the last fragment back, as if it had not been sent yet
        held = mongo._logs["profiles"].pop()

    async with profiles_feed(client).open(resume_after=u1["_id"]) as cursor:
        # When only the first fragment has come
        assert await cursor.try_next() is None
        assert fragments[0]["_id"] in mongo.post_batch_tokens  # the server sent it
        assert mongo.post_batch_tokens[-1] not in (u1["_id"], fragments[0]["_id"])  # and moved past it
        # Then the cursor's resume token is still the one before the event, never past a fragment
        assert cursor.resume_token == u1["_id"]
        # and once the last fragment comes, the whole event and its last token
        with mongo._lock:
            mongo._logs["profiles"].append(held)
        (event,) = await drain(cursor)
        assert event.token == fragments[1]["_id"]


async def test_a_fragment_out_of_order_reopens_before_the_event(
    mongo: ChangeStreamServer, client: Client
) -> None:
    u1 = mongo.update("profiles", "u1", {"display_name": "A"}, {"display_name": "A", "version": 1})
    mongo.split_update("profiles", "u2", {"username": "b"}, {"username": "b", "version": 2}, of=2)
    with mongo._lock:  # lose the first fragment
        del mongo._logs["profiles"][1]

    async with profiles_feed(client).open(resume_after=u1["_id"]) as cursor:
        with pytest.raises(ServiceUnavailable, match="out of order"):
            await cursor.try_next()
        assert cursor.resume_token is not None


@pytest.mark.parametrize("command", ["getMore", "aggregate"])
async def test_bson_object_too_large_is_event_too_large_and_never_retried(
    mongo: ChangeStreamServer, client: Client, command: str
) -> None:
    # A server without the split stage fails the stream on the event over 16 MB
    mongo.version = "6.0.5"
    p1 = mongo.insert("posts", "p1", author_id="a", text="x")
    too_large = ServerError(10334, "BSONObj size: 16804398 (0x1006A2E) is invalid. Size must be ...")

    async def open_and_read() -> None:
        if command == "aggregate":
            mongo.inject("aggregate", too_large)
        async with posts_feed(client).open(resume_after=p1["_id"]) as cursor:
            mongo.inject("getMore", too_large)
            await cursor.try_next()

    with pytest.raises(EventTooLarge) as info:
        await open_and_read()

    assert isinstance(info.value, StreamFatal)  # exit 4, like history lost
    assert (info.value.stream, info.value.code) == ("posts", 10334)
    assert "16 MB" in info.value.reason
    assert len(mongo.named("aggregate")) == 1  # neither the driver nor the adapter tried again


async def test_an_event_marked_oversize_reaches_the_handler_as_an_invalid_event(
    mongo: ChangeStreamServer, client: Client
) -> None:
    # Under "skip" the server's last stage leaves the documents out and marks the event with their size
    p1 = mongo.insert("posts", "p1", author_id="a", text="x")
    mongo.insert("posts", "p2", author_id="a", text="x")
    with mongo._lock:
        event = mongo._logs["posts"][-1].event
        assert event is not None
        del event["fullDocument"]
        event["fanoutOversizeBytes"] = 17_000_000

    async with posts_feed(client, "skip").open(resume_after=p1["_id"]) as cursor:
        (got,) = await drain(cursor)

    assert got.oversize_bytes == 17_000_000
    with pytest.raises(InvalidEvent, match="16 MB"):
        parse_new_post(got, 1000)
