"""PostCreatedHandler on the in-memory stand-ins: chunking, recipients, ids, replays, bad events."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest
from mongomock_motor import AsyncMongoMockClient

from enrichment.cache import LayeredCache
from enrichment.errors import InvalidEvent, PublishFailed, ServiceUnavailable
from enrichment.memory import MemoryLayer
from enrichment.snapshot import AuthorSnapshot
from handlers.events import ChangeEvent, NewPost
from handlers.ports import OutgoingMessage
from tests.harness import chunk_of, handle_events, post_handler
from worker.memory.db import MemoryDatabase
from worker.memory.publisher import MemoryPublisher
from worker.memory.stores import MemoryFollowerGraph, MemoryPostStore, MemoryProfileSource
from worker.mongo.stores import MongoFollowerGraph

CHUNK = 3


@dataclass
class Setup:
    db: MemoryDatabase = field(default_factory=MemoryDatabase)
    graph: MemoryFollowerGraph = field(default_factory=lambda: MemoryFollowerGraph(page_size=2))
    publisher: MemoryPublisher = field(default_factory=MemoryPublisher)

    def __post_init__(self) -> None:
        self.source = MemoryProfileSource(self.db)
        self.posts = MemoryPostStore(self.db)
        self.cache = LayeredCache(MemoryLayer(1_000, 60.0, 10.0), None, self.source)
        self.handler = post_handler(
            self.cache, self.posts, self.graph, self.publisher, chunk_size=CHUNK, max_text_bytes=1_000
        )

    def add_user(self, user_id: str, version: int = 1) -> None:
        self.db.insert(
            "profiles",
            {
                "_id": user_id,
                "username": user_id,
                "display_name": user_id.title(),
                "avatar_url": None,
                "version": version,
            },
        )

    def post(self, post_id: str, author_id: str, text: str = "hi") -> ChangeEvent:
        """Insert a post and return its insert event, as the posts change stream would."""
        self.db.insert("posts", {"_id": post_id, "author_id": author_id, "text": text})
        _, raw = self.db.log()[-1]
        return ChangeEvent.from_raw("posts", raw)


def raw_event(**doc: Any) -> ChangeEvent:
    return ChangeEvent.from_raw(
        "posts", {"_id": {"_data": "82FFFF"}, "operationType": "insert", "fullDocument": doc}
    )


def bodies(messages: list[OutgoingMessage]) -> list[dict[str, Any]]:
    return [orjson.loads(m.body) for m in messages]


@pytest.mark.parametrize("page", [1, 2, 3, 7])
@pytest.mark.parametrize(("followers", "chunks"), [(0, 0), (1, 1), (3, 1), (4, 2), (6, 2), (7, 3)])
async def test_followers_are_chunked_with_exactly_one_last_chunk(
    followers: int, chunks: int, page: int
) -> None:
    # Given an author with N followers read in pages of any size, and a chunk size of 3
    s = Setup(graph=MemoryFollowerGraph(page_size=page))
    s.add_user("alice")
    fans = [f"f{i:02d}" for i in range(followers)]
    s.graph.set_followers("alice", list(fans))
    ev = s.post("p1", "alice")
    # When the post is handled
    results = await handle_events(s.handler, [ev])
    # Then it succeeded with ceil(N / 3) messages, indexed 0..n-1, only the final one last
    assert results == [None]
    sent = bodies(s.publisher.messages)
    assert len(sent) == chunks
    assert [b["chunk"]["index"] for b in sent] == list(range(chunks))
    assert [b["chunk"]["last"] for b in sent] == [i == chunks - 1 for i in range(chunks)]
    # And every follower is a recipient exactly once, in order, in chunks of at most 3
    assert [r for b in sent for r in b["recipients"]] == fans
    assert all(1 <= len(b["recipients"]) <= CHUNK for b in sent)
    assert s.handler.stats.messages == chunks
    assert s.handler.stats.recipients == followers


@pytest.mark.parametrize("author", [None, AuthorSnapshot("alice", "alice", 'Alice \u00e9"', None, 3)])
@pytest.mark.parametrize(("index", "last"), [(0, True), (0, False), (12, True)])
def test_the_encoder_gives_the_bytes_of_the_whole_message_encoded_at_once(
    author: AuthorSnapshot | None, index: int, last: bool
) -> None:
    post = NewPost("p1", "alice", 'say "hi" \u2603\n', "2026-11-29T10:00:00Z")
    got = chunk_of(post, author, ["f1", 'f"2'], index, last)
    whole = {
        "schema": 2,
        "type": "post.created",
        "post": {"id": "p1", "author_id": "alice", "created_at": post.created_at, "text": post.text},
        "author": author.to_dict() if author is not None else None,
        "recipients": ["f1", 'f"2'],
        "chunk": {"index": index, "last": last},
        "range": {"index": 0, "count": 1},
    }
    assert got.body == orjson.dumps(whole)
    assert (got.message_id, got.correlation_id) == (f"post:p1:range:0:chunk:{index}", "p1")


async def test_message_ids_and_correlation_ids_are_deterministic() -> None:
    s = Setup()
    s.add_user("alice")
    s.graph.set_followers("alice", [f"f{i}" for i in range(5)])
    await handle_events(s.handler, [s.post("p42", "alice")])
    assert [m.message_id for m in s.publisher.messages] == [
        "post:p42:range:0:chunk:0",
        "post:p42:range:0:chunk:1",
    ]
    assert {m.correlation_id for m in s.publisher.messages} == {"p42"}
    assert {m.routing_key for m in s.publisher.messages} == {"post.created"}


async def test_the_message_carries_the_post_and_the_author_snapshot() -> None:
    s = Setup()
    s.add_user("alice", version=4)
    s.graph.set_followers("alice", ["bob"])
    await handle_events(s.handler, [s.post("p1", "alice", text="hello world")])
    (body,) = bodies(s.publisher.messages)
    assert body["schema"] == 2
    assert body["range"] == {"index": 0, "count": 1}
    assert body["type"] == "post.created"
    assert body["post"] == {"id": "p1", "author_id": "alice", "created_at": None, "text": "hello world"}
    assert body["author"] == {
        "user_id": "alice",
        "username": "alice",
        "display_name": "Alice",
        "avatar_url": None,
        "version": 4,
    }
    assert body["recipients"] == ["bob"]
    assert body["chunk"] == {"index": 0, "last": True}
    # And the snapshot was embedded in the stored post
    assert s.db.collection("posts")["p1"]["author_snapshot"]["version"] == 4


@pytest.mark.parametrize("page", [1, 2, 3, 1_000])
@pytest.mark.parametrize("others", [0, 2, 3, 5])
async def test_the_author_is_never_a_recipient_even_when_following_themself(others: int, page: int) -> None:
    # Given an author who follows themself, among `others` followers, read in pages of any size
    s = Setup(graph=MemoryFollowerGraph(page_size=page))
    s.add_user("m")
    fans = sorted(f"a{i}" if i % 2 else f"z{i}" for i in range(others))
    s.graph.set_followers("m", [*fans, "m"])  # sorted in: "m" lands between the a* and z* followers
    # When the author posts
    results = await handle_events(s.handler, [s.post("p1", "m")])
    # Then the author receives nothing, and no empty or extra chunk is sent for them
    assert results == [None]
    sent = bodies(s.publisher.messages)
    recipients = [r for b in sent for r in b["recipients"]]
    assert "m" not in recipients
    assert recipients == fans
    assert len(sent) == -(-others // CHUNK)
    assert all(b["recipients"] for b in sent)
    if sent:
        assert [b["chunk"]["last"] for b in sent][-1] is True
        assert sum(b["chunk"]["last"] for b in sent) == 1


EDGES = ["z", "b", "m", "b", "a", "m", "z", "b", "c", "c", "c", "m", "d"]  # repeats, self-edges


async def _mongo_graph(edges: list[str], page: int) -> Any:
    follows = AsyncMongoMockClient()["social"]["follows"]
    await follows.insert_many([{"followee_id": "m", "follower_id": f} for f in edges])
    return MongoFollowerGraph(follows, batch_size=page)


async def _memory_graph(edges: list[str], page: int) -> Any:
    graph = MemoryFollowerGraph(page_size=page)
    for f in edges:
        graph.add(f, "m")
    return graph


@pytest.mark.parametrize("make_graph", [_memory_graph, _mongo_graph], ids=["memory", "mongo"])
@pytest.mark.parametrize("page", [1, 2, 3, 5, 100])
async def test_each_recipient_once_and_never_the_author_whatever_the_follows_hold(
    make_graph: Any, page: int
) -> None:
    # Given follows holding repeated edges and a repeated self-edge of the author "m"
    s = Setup(graph=await make_graph(EDGES, page))
    s.add_user("m")
    # When the author posts
    results = await handle_events(s.handler, [s.post("p1", "m")])
    # Then every follower receives it exactly once, the author never, in full chunks
    assert results == [None]
    sent = bodies(s.publisher.messages)
    recipients = [r for b in sent for r in b["recipients"]]
    assert recipients == ["a", "b", "c", "d", "z"]
    assert [len(b["recipients"]) for b in sent] == [3, 2]
    assert [b["chunk"] for b in sent] == [{"index": 0, "last": False}, {"index": 1, "last": True}]
    assert s.handler.stats.recipients == 5


async def test_followers_that_are_only_the_author_and_repeats_of_them_send_nothing() -> None:
    s = Setup(graph=await _memory_graph(["m", "m", "m"], 1))
    s.add_user("m")
    assert await handle_events(s.handler, [s.post("p1", "m")]) == [None]
    assert s.publisher.messages == []


async def test_zero_followers_sends_nothing_but_the_post_is_handled() -> None:
    s = Setup()
    s.add_user("alice")
    results = await handle_events(s.handler, [s.post("p1", "alice")])
    assert results == [None]
    assert s.publisher.messages == []
    assert s.handler.stats.posts == 1


async def test_a_replay_produces_identical_messages() -> None:
    # Given a post handled once
    s = Setup()
    s.add_user("alice")
    s.graph.set_followers("alice", [f"f{i}" for i in range(8)])
    ev = s.post("p1", "alice")
    await handle_events(s.handler, [ev])
    first = list(s.publisher.messages)
    # When the same event is handled again (a replay after a crash)
    s.publisher.messages.clear()
    assert await handle_events(s.handler, [ev]) == [None]
    # Then the same ids and byte-identical bodies are sent, so consumers can de-duplicate
    assert len(first) == 3
    assert [(m.message_id, m.correlation_id, m.body) for m in s.publisher.messages] == [
        (m.message_id, m.correlation_id, m.body) for m in first
    ]


async def test_invalid_events_fail_alone_and_valid_ones_in_the_batch_succeed() -> None:
    # Given a batch mixing valid posts with invalid events
    s = Setup()
    s.add_user("alice")
    s.add_user("bob")
    s.graph.set_followers("alice", ["x"])
    s.graph.set_followers("bob", ["y"])
    batch = [
        s.post("p1", "alice"),
        raw_event(_id="bad1", text="no author"),
        s.post("p2", "bob"),
        raw_event(_id="bad2", author_id="alice", text=7),
        raw_event(_id="bad3", author_id="alice", text="x" * 1_001),
    ]
    # When the batch is handled
    results = await handle_events(s.handler, batch)
    # Then each invalid event gets an InvalidEvent at its own position and the valid ones succeed
    assert results[0] is None
    assert isinstance(results[1], InvalidEvent)
    assert results[2] is None
    assert isinstance(results[3], InvalidEvent)
    assert isinstance(results[4], InvalidEvent)
    assert sorted(m.correlation_id for m in s.publisher.messages) == ["p1", "p2"]
    assert s.handler.stats.posts == 2
    # And the whole valid batch cost one profile query
    assert s.source.queries == 1


async def test_a_missing_author_profile_still_fans_out_with_a_null_author() -> None:
    # Given a post whose author has no profile
    s = Setup()
    s.graph.set_followers("ghost", ["a", "b", "c", "d"])
    # When it is handled
    results = await handle_events(s.handler, [s.post("p1", "ghost")])
    # Then it is delivered to every follower with "author": null
    assert results == [None]
    sent = bodies(s.publisher.messages)
    assert len(sent) == 2
    assert all(b["author"] is None for b in sent)
    assert [r for b in sent for r in b["recipients"]] == ["a", "b", "c", "d"]
    assert s.handler.stats.author_missing == 1
    # And no snapshot was written into the post
    assert "author_snapshot" not in s.db.collection("posts")["p1"]


def test_chunk_size_must_be_positive() -> None:
    s = Setup()
    with pytest.raises(ValueError, match="chunk_size"):
        post_handler(s.cache, s.posts, s.graph, s.publisher, chunk_size=0)


class FailingPublisher(MemoryPublisher):
    """Confirms every message except the chunks listed in ``fail``, whose confirm fails."""

    def __init__(self, fail: set[str]) -> None:
        super().__init__()
        self.fail = fail

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        if message.message_id not in self.fail:
            return await super().send(message)
        self.messages.append(message)
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        future.set_exception(PublishFailed(f"{message.message_id} nacked"))
        return future


async def test_an_unconfirmed_chunk_fails_its_post_only() -> None:
    # Given a publisher that will not confirm chunk 1 of p1
    s = Setup(publisher=FailingPublisher({"post:p1:range:0:chunk:1"}))
    s.add_user("alice")
    s.add_user("bob")
    s.graph.set_followers("alice", [f"f{i:02d}" for i in range(30)])
    s.graph.set_followers("bob", ["x"])
    # When p1 and p2 are handled together
    results = await handle_events(s.handler, [s.post("p1", "alice"), s.post("p2", "bob")])
    # Then p1 fails with the publish error (to be retried whole) and p2 succeeds
    assert isinstance(results[0], PublishFailed)
    assert results[1] is None
    assert s.handler.stats.posts == 1
    # And p1 stopped fanning out soon after the failure instead of sending all 10 chunks
    p1_chunks = [m for m in s.publisher.messages if m.correlation_id == "p1"]
    assert len(p1_chunks) < 10
    assert not any(orjson.loads(m.body)["chunk"]["last"] for m in p1_chunks)


class DownSource:
    async def fetch_many(self, user_ids: object) -> dict[str, object]:
        raise ServiceUnavailable("profiles find timed out")


async def test_a_failed_author_lookup_fails_every_valid_post_of_the_batch() -> None:
    s = Setup()
    s.cache = LayeredCache(MemoryLayer(100, 60.0, 10.0), None, DownSource())  # type: ignore[arg-type]
    handler = post_handler(s.cache, s.posts, s.graph, s.publisher, chunk_size=CHUNK)
    s.graph.set_followers("alice", ["x"])
    results = await handle_events(handler, [s.post("p1", "alice"), raw_event(_id="bad"), s.post("p2", "bob")])
    assert isinstance(results[0], ServiceUnavailable)
    assert isinstance(results[1], InvalidEvent)
    assert isinstance(results[2], ServiceUnavailable)
    assert s.publisher.messages == []
