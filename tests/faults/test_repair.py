"""The repair commands as an operator runs them: ``fanout-worker backfill`` and ``dead-letters``
processes against WireMongo (the wire-protocol MongoDB stand-in), real Redis and RabbitMQ, beside a
real ``fanout-worker run`` daemon whose fan-out workers consume the backfill lane."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
from collections import defaultdict
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import redis.asyncio as aioredis

from handlers.contract import chunk_message_id
from tests.faults.daemon import (
    CONFIG,
    DB,
    DEAD_LETTERS,
    EXECUTABLE,
    GAPS,
    AggregateRecorder,
    Daemons,
    wait_until,
    worker_env,
)
from tests.faults.test_mongo_errors import delivered, lose_history, run_until_checkpointed
from tests.harness import Collector
from tests.support.wire_mongo import WireMongo

FOLLOWERS = {"a1": ["f1", "f2", "f3"], "a2": ["f2", "f4"]}
BACKFILLS = "fanout_backfills"


def now() -> datetime:
    t = datetime.now(UTC)
    return t.replace(microsecond=t.microsecond - t.microsecond % 1000)  # BSON dates hold milliseconds


def write_posts(wm: WireMongo, prefix: str, n: int, at: datetime | None = None) -> list[str]:
    """Posts with a ``created_at`` (a backfill's time windows read it), a millisecond apart."""
    start = at or now()
    ids = [f"{prefix}{i:03d}" for i in range(n)]
    for i, post_id in enumerate(ids):
        doc = {
            "_id": post_id,
            "author_id": f"a{1 + i % 2}",
            "text": post_id,
            "created_at": start + timedelta(milliseconds=i),
        }
        wm.db(DB).insert("posts", doc)
    return ids


def expected(post_ids: list[str]) -> dict[str, set[str]]:
    return {p: set(FOLLOWERS[f"a{1 + i % 2}"]) for i, p in enumerate(post_ids)}


def live_ids(post_ids: list[str]) -> set[str]:
    """The ids live handling gives these posts: one range, one chunk each (a few followers)."""
    return {chunk_message_id(p, 0, 0) for p in post_ids}


def bodies_by_id(collector: Collector) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for m in collector.of("post.created"):
        out[m.message_id].append(m.body)
    return out


class Cli:
    """One ``fanout-worker`` command process, in its own process group."""

    def __init__(self, env: dict[str, str], *args: str) -> None:
        self.proc = subprocess.Popen(
            [str(EXECUTABLE), *args, "--config", str(CONFIG)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )

    async def result(self, timeout: float = 60) -> tuple[int, str, str]:
        out, err = await asyncio.to_thread(self.proc.communicate, None, timeout)
        return self.proc.returncode, out, err

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.communicate(timeout=10)


async def cli(env: dict[str, str], *args: str) -> tuple[int, str, str]:
    return await Cli(env, *args).result()


@pytest.mark.timeout(120)
async def test_a_gap_recorded_by_resume_from_now_is_backfilled_with_live_ids(
    wm: WireMongo,
    daemons: Daemons,
    collector: Collector,
    exchange: str,
    key_prefix: str,
    redis: aioredis.Redis,
) -> None:
    # Given a worker that lost the history and resumed from now, recording the gap
    env = worker_env(wm, exchange, key_prefix)
    cp = await run_until_checkpointed(daemons, wm, env, collector)
    lose_history(wm, cp)
    skipped = write_posts(wm, "s", 5)  # while no worker runs: lost with the history
    recorder = AggregateRecorder(wm)
    second = daemons.spawn(env | {"FANOUT_PIPELINE__ON_HISTORY_LOST": "resume-from-now"}, "second")
    await second.log_line("resuming from now", 15)
    await wait_until(
        lambda: any("resumeAfter" not in s for s in recorder.change_streams("posts")), 10, "posts from now"
    )
    fresh = write_posts(wm, "n", 2)
    await delivered(collector, expected(fresh))
    [gap] = wm.db(DB).find(GAPS)
    assert not set(skipped) & set(collector.recipients_by_post())
    before = len(collector.of("post.created"))

    # When the operator lists, then backfills, the gaps
    code, out, _ = await cli(env, "backfill", "--all-gaps", "--dry-run")
    assert code == 0
    assert f"gap {gap['_id']}" in out and "5 post(s)" in out
    assert len(collector.of("post.created")) == before  # a dry run publishes nothing
    code, out, err = await cli(env, "backfill", "--all-gaps")
    assert code == 0, err

    # Then the consumer receives exactly the gap's posts, once each, under the ids live handling gives
    await delivered(collector, expected(skipped))
    backfilled = collector.of("post.created")[before:]
    assert sorted(m.message_id for m in backfilled) == sorted(live_ids(skipped))
    assert {m.correlation_id for m in backfilled} == set(skipped)
    # The backfilled chunks carry the author snapshot, as live chunks do, and the post got its snapshot
    assert all(m.body["author"]["user_id"] == m.body["post"]["author_id"] for m in backfilled)
    assert all(p.get("author_snapshot") for p in wm.db(DB).find("posts", {"_id": {"$in": skipped}}))
    # And the gap is marked done, with counts
    [done] = wm.db(DB).find(GAPS)
    assert done["backfilled_at"] is not None
    assert done["backfill"]["posts"] == 5 and done["backfill"]["jobs"] == 5
    code, out, _ = await cli(env, "backfill", "--all-gaps")
    assert code == 0 and "no gap to backfill" in out

    # And a window over posts live handling delivered gives them again, byte for byte, id for id
    live = {m.message_id: m.body for m in collector.of("post.created") if m.correlation_id in fresh}
    created = [p["created_at"] for p in wm.db(DB).find("posts", {"_id": {"$in": fresh}})]
    code, _, err = await cli(
        env, "backfill", "--from", min(created).isoformat(), "--to", max(created).isoformat()
    )
    assert code == 0, err
    await wait_until(
        lambda: all(len(bodies_by_id(collector)[i]) == 2 for i in live_ids(fresh)), 15, "the posts resent"
    )
    again = bodies_by_id(collector)
    assert set(live) == live_ids(fresh)
    assert all(again[i] == [body, body] for i, body in live.items())
    assert await second.stopped() == 0


@pytest.mark.timeout(150)
async def test_a_backfill_killed_halfway_and_restarted_loses_nothing(
    wm: WireMongo,
    daemons: Daemons,
    collector: Collector,
    exchange: str,
    key_prefix: str,
    redis: aioredis.Redis,
) -> None:
    # Given posts written before the first deployment, and a worker started over them (from now)
    posts = write_posts(wm, "old", 24, now() - timedelta(hours=1))
    env = worker_env(
        wm,
        exchange,
        key_prefix,
        FANOUT_PIPELINE__FIRST_START_LOOKBACK_SECONDS="0",
        FANOUT_BACKFILL__BATCH_SIZE="2",
    )
    daemon = daemons.spawn(env)
    await daemon.log_line("leader now", 15)
    window = ["--from", (now() - timedelta(days=1)).isoformat(), "--to", now().isoformat()]

    # When a slow backfill of the window is SIGKILLed once some batches are confirmed
    backfill = Cli(env, "backfill", *window, "--rate", "5")
    await wait_until(
        lambda: any(d.get("counts", {}).get("posts", 0) >= 6 for d in wm.db(DB).find(BACKFILLS)),
        60,
        "a few batches backfilled",
    )
    backfill.kill()
    [run] = wm.db(DB).find(BACKFILLS)
    assert not run["done"]
    # And run again to the end
    code, out, err = await cli(env, "backfill", *window, "--rate", "50")
    assert code == 0, err
    assert "done" in out

    # Then every post was delivered; the only duplicates are replays under the same id, same bytes
    await delivered(collector, expected(posts))
    got = bodies_by_id(collector)
    assert set(got) == live_ids(posts)
    assert all(all(b == bodies[0] for b in bodies) for bodies in got.values())
    [run] = wm.db(DB).find(BACKFILLS)
    assert run["done"] and run["counts"]["posts"] == 24
    assert await daemon.stopped() == 0


@pytest.mark.timeout(60)
async def test_snapshots_bring_posts_to_the_current_version_and_never_lower_one(
    wm: WireMongo, exchange: str, key_prefix: str
) -> None:
    # Given a1 at version 3, and posts with no snapshot, an older one, and a newer one
    social = wm.db(DB)
    social.update_one("profiles", {"_id": "a1"}, {"$set": {"version": 3, "display_name": "Ada"}})
    for post_id in ("none", "old", "newer"):
        social.insert("posts", {"_id": post_id, "author_id": "a1", "text": post_id})
    social.update_one("posts", {"_id": "old"}, {"$set": {"author_snapshot": {"user_id": "a1", "version": 2}}})
    newer = {"user_id": "a1", "version": 7, "display_name": "Future"}
    social.update_one("posts", {"_id": "newer"}, {"$set": {"author_snapshot": newer}})
    env = worker_env(wm, exchange, key_prefix)

    # When the snapshots are repaired
    code, out, err = await cli(env, "backfill", "--snapshots")

    # Then the stale posts hold the current snapshot, and the newer one was not lowered
    assert code == 0, err
    posts = {p["_id"]: p for p in social.find("posts")}
    assert posts["none"]["author_snapshot"]["version"] == 3
    assert posts["old"]["author_snapshot"]["display_name"] == "Ada"
    assert posts["newer"]["author_snapshot"] == newer
    assert "posts_rewritten 2" in out


@pytest.mark.timeout(120)
async def test_a_dead_letter_replayed_after_its_cause_is_fixed_is_delivered_under_its_ids(
    wm: WireMongo,
    daemons: Daemons,
    collector: Collector,
    exchange: str,
    key_prefix: str,
    redis: aioredis.Redis,
) -> None:
    # Given a post dead-lettered for a limit set too low
    strict = worker_env(wm, exchange, key_prefix, FANOUT_PIPELINE__MAX_TEXT_BYTES="4")
    daemon = daemons.spawn(strict)
    await daemon.log_line("stream posts starting from now", 15)
    write_posts(wm, "long", 1)
    await wait_until(lambda: wm.db(DB).find(DEAD_LETTERS), 15, "the post dead-lettered")
    [dead] = wm.db(DB).find(DEAD_LETTERS)
    assert "larger than 4 bytes" in dead["error"]

    # When purged without --yes from a script, it refuses and keeps them
    code, _, err = await cli(strict, "dead-letters", "purge")
    assert code == 2 and "--yes" in err and len(err.strip().splitlines()) == 1
    assert len(wm.db(DB).find(DEAD_LETTERS)) == 1
    code, out, _ = await cli(strict, "dead-letters", "list", "--reason", "LARGER THAN")
    assert code == 0 and str(dead["_id"]) in out and "pending" in out

    # When the cause is fixed (the limit raised) and the dead letter replayed
    fixed = worker_env(wm, exchange, key_prefix)
    code, out, err = await cli(fixed, "dead-letters", "replay", "--stream", "posts")
    assert code == 0, err + out

    # Then it is delivered under its deterministic ids, and marked replayed
    await delivered(collector, expected(["long000"]))
    assert [m.message_id for m in collector.of("post.created") if m.correlation_id == "long000"] == [
        chunk_message_id("long000", 0, 0)
    ]
    [replayed] = wm.db(DB).find(DEAD_LETTERS)
    assert replayed["replayed_at"] is not None and replayed["replays"] == 1
    code, out, _ = await cli(fixed, "dead-letters", "replay", "--stream", "posts")
    assert code == 0 and "replayed 0" in out  # by filter, only what was not replayed yet

    # And purge --yes deletes it
    code, out, _ = await cli(fixed, "dead-letters", "purge", "--yes")
    assert code == 0 and "purged 1" in out
    assert wm.db(DB).find(DEAD_LETTERS) == []
    assert await daemon.stopped() == 0
