"""A post's whole life at the wire: edits and deletes reach exactly the author's followers with
deterministic ids, in role ``all`` (the pipeline in this process over the production wiring) and in
split roles (``fanout-worker run`` subprocesses), and a replay from an earlier checkpoint repeats
the same ids. A delete whose author cannot be known is dead-lettered with the reason; pre-images
``required`` on a collection without them stops start-up with exit 2.

PyMongo against WireMongo (the MongoDB wire stand-in, pre-images emulated), real Redis and RabbitMQ.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from tests.faults import inprocess
from tests.faults.daemon import (
    CHECKPOINTS,
    CONFIG,
    DB,
    DEAD_LETTERS,
    ROOT,
    Daemons,
    checkpoint,
    wait_until,
    worker_env,
)
from tests.harness import Collector, Received
from tests.support.wire_mongo import WireMongo
from worker.lifecycle_settings import PostLifecycleSettings
from worker.settings import Settings

FOLLOWERS = {
    "alice": [f"a-{i:02d}" for i in range(7)],
    "bob": [f"b-{i:02d}" for i in range(3)],
}
LIFECYCLE = {"pre_images": "required", "soft_delete_field": "deleted_at", "visible_fields": ["title"]}
BIN = Path(sys.executable).with_name("fanout-worker")


def with_lifecycle(cfg: Settings, **lifecycle: Any) -> Settings:
    return cfg.model_copy(update={"post_lifecycle": PostLifecycleSettings(**lifecycle)})


def life_of_posts(wm: WireMongo) -> None:
    """Two posts of alice and one of bob; p1 edited, p2 soft-deleted, p3 deleted outright."""
    social = wm.db(DB)
    social.insert("posts", {"_id": "p1", "author_id": "alice", "text": "first", "title": "T"})
    social.insert("posts", {"_id": "p2", "author_id": "alice", "text": "second"})
    social.insert("posts", {"_id": "p3", "author_id": "bob", "text": "third"})
    social.update_one("posts", {"_id": "p1"}, {"$set": {"text": "first, edited"}})
    social.update_one("posts", {"_id": "p2"}, {"$set": {"deleted_at": "2026-11-30T08:00:00Z"}})
    social.delete_one("posts", {"_id": "p3"})


def delivered(collector: Collector, kind: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    for m in collector.of(kind):
        out.setdefault(m.body["post"]["id"], set()).update(m.body["recipients"])
    return out


EXPECTED = {
    "post.updated": {"p1": set(FOLLOWERS["alice"])},
    "post.deleted": {"p2": set(FOLLOWERS["alice"]), "p3": set(FOLLOWERS["bob"])},
}


def all_delivered(collector: Collector) -> bool:
    return all(delivered(collector, kind) == posts for kind, posts in EXPECTED.items())


SCHEMAS = {
    kind: Draft202012Validator(json.loads((ROOT / "schemas" / f"{kind}.v1.json").read_text()))
    for kind in EXPECTED
}


def assert_life_delivered(collector: Collector) -> None:
    # exactly the author's followers, never anyone else's
    assert all_delivered(collector)
    # in bodies their schemas describe
    for kind, schema in SCHEMAS.items():
        assert [e.message for m in collector.of(kind) for e in schema.iter_errors(m.body)] == []
    (edit,) = collector.of("post.updated")
    assert edit.body["post"] == {
        "id": "p1",
        "author_id": "alice",
        "text": "first, edited",
        "fields": {"title": "T"},
    }
    edit_id = edit.body["edit"]["id"]
    assert edit_id.startswith("t") and edit.message_id == f"post.updated:{edit_id}:p1:range:0:chunk:0"
    assert {m.message_id for m in collector.of("post.deleted")} == {
        "post.deleted:p2:range:0:chunk:0",
        "post.deleted:p3:range:0:chunk:0",
    }


def by_id(messages: list[Received]) -> dict[str, list[Received]]:
    out: dict[str, list[Received]] = {}
    for m in messages:
        out.setdefault(m.message_id, []).append(m)
    return out


def assert_replayed_identically(collector: Collector) -> None:
    for kind in EXPECTED:
        seen = by_id(collector.of(kind))
        assert seen and all(len(copies) == 2 for copies in seen.values()), kind
        assert all(copies[0].body == copies[1].body for copies in seen.values())


@pytest.mark.timeout(90)
async def test_role_all_edits_and_deletes_reach_the_followers_and_a_replay_repeats_the_ids(
    wm: WireMongo, collector: Collector, exchange: str, key_prefix: str
) -> None:
    # Given posts recording pre-images, soft deletes on, and the worker (role all) in this process
    wm.create_collection(DB, "posts", pre_images=True)
    cfg = with_lifecycle(inprocess.settings(wm, exchange, key_prefix), **LIFECYCLE)
    async with inprocess.pipeline_of(cfg, "posts"):
        await wait_until(lambda: checkpoint(wm) is not None, 10, "the first checkpoint")
        before = checkpoint(wm)
        # When posts are created, edited, soft-deleted and deleted
        life_of_posts(wm)
        # Then each edit and delete reaches exactly its author's followers, with deterministic ids
        await wait_until(lambda: all_delivered(collector), 30, "every edit and delete delivered")
    assert_life_delivered(collector)
    # When the worker crashed before its checkpoint passed them: the stream runs again from before
    assert before is not None
    wm.db(DB).replace_one(CHECKPOINTS, {"_id": "posts"}, before)
    async with inprocess.pipeline_of(cfg, "posts"):
        await wait_until(
            lambda: len(collector.of("post.deleted")) >= 4 and len(collector.of("post.updated")) >= 2,
            30,
            "the replay",
        )
    # Then the replay repeats the same ids with the same bodies
    assert_replayed_identically(collector)


@pytest.mark.timeout(60)
async def test_a_delete_whose_author_cannot_be_known_is_dead_lettered_with_the_reason(
    wm: WireMongo, collector: Collector, exchange: str, key_prefix: str
) -> None:
    # Given pre-images off and no soft-delete field (the defaults)
    cfg = inprocess.settings(wm, exchange, key_prefix)
    async with inprocess.pipeline_of(cfg, "posts") as (runtime, _, _, _):
        # When a post is created, then deleted outright, then another is created
        social = wm.db(DB)
        social.insert("posts", {"_id": "p9", "author_id": "alice", "text": "soon gone"})
        social.delete_one("posts", {"_id": "p9"})
        social.insert("posts", {"_id": "p10", "author_id": "bob", "text": "after"})
        await wait_until(lambda: "p10" in delivered(collector, "post.created"), 30, "the post after it")
        await wait_until(lambda: social.find(DEAD_LETTERS), 10, "the dead letter")
        stats = runtime.posts.stats
    # Then the delete is in the dead letters saying why, counted, and sent to no one
    (letter,) = social.find(DEAD_LETTERS)
    assert letter["stream"] == "posts"
    assert "post p9 was deleted but its author is unknown" in letter["error"]
    assert 'pre_images is "off"' in letter["error"]
    assert stats.deletes_author_unknown == 1
    assert collector.of("post.deleted") == []


@pytest.mark.timeout(150)
async def test_split_roles_edits_and_deletes_reach_the_followers_and_a_new_tailer_replays_the_ids(
    wm: WireMongo, daemons: Daemons, collector: Collector, exchange: str, key_prefix: str
) -> None:
    # Given posts recording pre-images, a tailer and a fan-out worker as separate processes
    wm.create_collection(DB, "posts", pre_images=True)
    env = worker_env(
        wm,
        exchange,
        key_prefix,
        FANOUT_POST_LIFECYCLE__PRE_IMAGES="required",
        FANOUT_POST_LIFECYCLE__SOFT_DELETE_FIELD="deleted_at",
        FANOUT_POST_LIFECYCLE__VISIBLE_FIELDS='["title"]',
    )
    tailer = daemons.spawn({**env, "FANOUT_FANOUT__ROLE": "tailer"}, name="tailer")
    await tailer.log_line("stream posts starting", 20)
    fanout = daemons.spawn({**env, "FANOUT_FANOUT__ROLE": "fanout"}, name="fan-out")
    await fanout.log_line("running", 20)
    await wait_until(lambda: checkpoint(wm) is not None, 15, "the first checkpoint")
    before = checkpoint(wm)
    # When posts are created, edited, soft-deleted and deleted
    life_of_posts(wm)
    # Then each reaches exactly its author's followers, with deterministic ids
    await wait_until(lambda: all_delivered(collector), 45, "every edit and delete delivered")
    assert_life_delivered(collector)
    # When the tailer is killed and a new one starts from the checkpoint before those events
    tailer.kill()
    assert before is not None
    wm.db(DB).replace_one(CHECKPOINTS, {"_id": "posts"}, before)
    second = daemons.spawn({**env, "FANOUT_FANOUT__ROLE": "tailer"}, name="tailer 2")
    await wait_until(
        lambda: len(collector.of("post.deleted")) >= 4 and len(collector.of("post.updated")) >= 2,
        45,
        "the replay",
    )
    # Then the replay repeats the same ids with the same bodies, and nothing more
    assert_replayed_identically(collector)
    assert Counter(m.routing_key for m in collector.messages)["post.updated"] == 2
    for process in (second, fanout):
        process.terminate()
        assert await process.exited(20) == 0


def test_required_pre_images_on_a_collection_without_them_stops_start_up_with_exit_2(
    wm: WireMongo, exchange: str, key_prefix: str
) -> None:
    # Given a posts collection that records no pre-images, and pre-images required
    wm.create_collection(DB, "posts")
    env = worker_env(
        wm,
        exchange,
        key_prefix,
        FANOUT_POST_LIFECYCLE__PRE_IMAGES="required",
        FANOUT_LOG__FORMAT="text",
        FANOUT_LOG__LEVEL="WARNING",
    )
    # When the worker starts
    result = subprocess.run(
        [str(BIN), "run", "--config", str(CONFIG)], env=env, capture_output=True, text=True, timeout=60
    )
    # Then it stops at once with exit 2 and one line naming the collection and the setting
    assert result.returncode == 2, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    assert "social.posts" in lines[0] and "post_lifecycle.pre_images" in lines[0]
