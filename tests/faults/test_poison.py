"""Poison posts in the real daemon's stream: dead-lettered with the reason, the stream moves on.

``fanout-worker run`` against WireMongo and the real Redis and RabbitMQ, as one process (role
``all``) and split (a ``tailer`` and a ``fanout`` process).
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from bson import json_util

from tests.faults.daemon import (
    DB,
    DEAD_LETTERS,
    DEPLOYMENTS,
    AggregateRecorder,
    Daemons,
    checkpoint,
    checkpoint_past,
    fanout_beside,
    insert_positions,
    wait_until,
    worker_env,
)
from tests.harness import Collector
from tests.support.wire_mongo import WireMongo

FOLLOWERS = {"a1": ["f1", "f2", "f3"], "a2": ["f3", "f4"]}
MAX_TEXT_BYTES = 1000

# post id → (document without _id, what the dead letter's error must say)
POISON: dict[Any, tuple[dict[str, Any], str]] = {
    "bad-no-author": ({"text": "who wrote this?"}, "author_id must be a non-empty string"),
    "bad-text-type": ({"author_id": "a1", "text": 12345}, "text must be a string"),
    "bad-huge-text": (
        {"author_id": "a2", "text": "x" * (MAX_TEXT_BYTES + 1)},
        f"larger than {MAX_TEXT_BYTES}",
    ),
    "bad-created-at": (
        {"author_id": "a1", "text": "hi", "created_at": 7},
        "created_at must be a date or string",
    ),
}
# A document _id can be an embedded document; the contract says such a post is invalid too.
COMPOUND_ID = {"shard": 1, "n": 2}


@pytest.mark.timeout(120)
@pytest.mark.parametrize("deployment", DEPLOYMENTS)
async def test_poison_posts_are_dead_lettered_and_the_stream_moves_past_them(
    deployment: str,
    wm: WireMongo,
    daemons: Daemons,
    collector: Collector,
    exchange: str,
    key_prefix: str,
    redis: aioredis.Redis,
) -> None:
    recorder = AggregateRecorder(wm)
    env = worker_env(wm, exchange, key_prefix, FANOUT_PIPELINE__MAX_TEXT_BYTES=str(MAX_TEXT_BYTES))
    env, fanout = await fanout_beside(daemons, env, deployment)
    daemon = daemons.spawn(env, "first")
    await daemon.log_line("leader now", 15)
    await wait_until(lambda: recorder.change_streams("posts"), 10, "the posts stream to open")

    social = wm.db(DB)
    good: dict[str, str] = {}
    inserted: dict[Any, dict[str, Any]] = {}
    bad_docs = [(post_id, doc) for post_id, (doc, _) in POISON.items()]
    bad_docs.append(("compound", {"_id": COMPOUND_ID, "author_id": "a2", "text": "compound id"}))
    for n, (post_id, doc) in enumerate(bad_docs):
        for k in range(2):  # good posts between (and around) the bad ones
            gid = f"good-{n}-{k}"
            social.insert("posts", {"_id": gid, "author_id": f"a{1 + k}", "text": f"fine {gid}"})
            good[gid] = f"a{1 + k}"
        full = {"_id": post_id, **doc} if post_id != "compound" else doc
        social.insert("posts", full)
        inserted[post_id] = full
    for k in range(2):
        gid = f"good-last-{k}"
        social.insert("posts", {"_id": gid, "author_id": f"a{1 + k}", "text": "fine"})
        good[gid] = f"a{1 + k}"

    def all_good_delivered() -> bool:
        got = collector.recipients_by_post()
        return all(got.get(p) == set(FOLLOWERS[a]) for p, a in good.items())

    await wait_until(all_good_delivered, 15, "every good post delivered")
    await wait_until(lambda: len(social.find(DEAD_LETTERS)) >= len(bad_docs), 10, "the dead letters")
    last = max(insert_positions(wm).values())
    await wait_until(
        lambda: checkpoint_past(wm, last),
        5,
        "the checkpoint to pass every post",
    )
    assert daemon.returncode is None
    assert await daemon.stopped() == 0

    # Only the good posts went out.
    delivered = set(collector.recipients_by_post())
    assert delivered == set(good)

    # One dead letter per bad post: stream, reason, token and the raw event in extended JSON.
    tokens = {
        json.dumps(ev["documentKey"]["_id"], sort_keys=True, default=str): ev["_id"]
        for ev in wm.change_events()
        if ev["operationType"] == "insert" and ev["ns"]["coll"] == "posts"
    }
    letters = social.find(DEAD_LETTERS)
    assert len(letters) == len(bad_docs), letters
    by_post: dict[str, dict[str, Any]] = {}
    for letter in letters:
        event = json_util.loads(letter["event"])
        key = json.dumps(event["documentKey"]["_id"], sort_keys=True, default=str)
        by_post[key] = {**letter, "parsed_event": event}
    for post_id, full in inserted.items():
        key = json.dumps(full["_id"], sort_keys=True, default=str)
        assert key in by_post, f"{post_id} was not dead-lettered"
        letter = by_post[key]
        assert letter["stream"] == "posts"
        reason = POISON[post_id][1] if post_id in POISON else "not a scalar"
        assert reason in letter["error"], letter["error"]
        assert "InvalidEvent" in letter["error"]
        assert json_util.loads(letter["token"]) == tokens[key]
        event = letter["parsed_event"]
        assert event["_id"] == tokens[key]
        assert event["operationType"] == "insert"
        assert event["ns"] == {"db": DB, "coll": "posts"}
        assert event["fullDocument"] == full
        assert letter["event_truncated"] is False
        assert isinstance(letter["at"], datetime)
    dead_lines = [r for r in daemon.errors() if "dead-lettering" in r["msg"]]
    assert len(dead_lines) == len(bad_docs)

    # The checkpoint is past all of them: a restart neither replays nor re-dead-letters anything.
    cp = checkpoint(wm)
    assert cp is not None
    assert cp["token"]["_data"] >= last
    aggregates = len(recorder.calls)
    again = daemons.spawn(env, "second")
    await wait_until(lambda: recorder.change_streams("posts", since=aggregates), 15, "the stream to reopen")
    assert recorder.change_streams("posts", since=aggregates)[0]["resumeAfter"] == cp["token"]
    social.insert("posts", {"_id": "after-restart", "author_id": "a1", "text": "still fine"})
    await wait_until(lambda: "after-restart" in collector.recipients_by_post(), 10, "the post after restart")
    assert await again.stopped() == 0
    if fanout is not None:
        assert await fanout.stopped() == 0
    assert len(social.find(DEAD_LETTERS)) == len(bad_docs)
    ids = [m.message_id for m in collector.of("post.created")]
    assert len(ids) == len(set(ids)), "nothing was replayed"
