"""MongoDB change-stream errors, injected at the wire by WireMongo.

(a)/(b) run the posts pipeline in process, built by the production wiring (``build_runtime``: real
PyMongo async client against WireMongo, real Redis and RabbitMQ), so the pipeline's counters can
be read. (c)-(e) run the real ``fanout-worker run`` process, for its exit code and its log.
"""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import pytest
import redis.asyncio as aioredis
from bson import ObjectId
from loguru import logger

from tests.faults import inprocess
from tests.faults.daemon import (
    CHECKPOINTS,
    DB,
    GAPS,
    AggregateRecorder,
    Daemon,
    Daemons,
    checkpoint,
    checkpoint_past,
    insert_positions,
    wait_until,
    worker_env,
)
from tests.harness import Collector
from tests.support.wire_mongo import WireMongo
from worker.streams import POSTS
from worker.tailer.pipeline import StreamPipeline
from worker.wiring import Runtime

FOLLOWERS = {"a1": ["f1", "f2", "f3"], "a2": ["f2", "f4"]}
EXIT_STREAM_FATAL = 4


def write_posts(wm: WireMongo, prefix: str, n: int) -> list[str]:
    ids = [f"{prefix}{i}" for i in range(n)]
    for i, post_id in enumerate(ids):
        wm.db(DB).insert("posts", {"_id": post_id, "author_id": f"a{1 + i % 2}", "text": post_id})
    return ids


def expected(post_ids: list[str]) -> dict[str, set[str]]:
    return {p: set(FOLLOWERS[f"a{1 + i % 2}"]) for i, p in enumerate(post_ids)}


async def delivered(collector: Collector, posts: dict[str, set[str]], timeout: float = 10) -> None:
    def done() -> bool:
        got = collector.recipients_by_post()
        return all(got.get(p) == r for p, r in posts.items())

    await wait_until(done, timeout, f"posts {sorted(posts)} delivered")


def duplicates(collector: Collector) -> list[str]:
    ids = [m.message_id for m in collector.of("post.created")]
    return sorted({i for i in ids if ids.count(i) > 1})


# ------------------------------------------------------------------------------- in process
@dataclass
class Running:
    runtime: Runtime
    pipeline: StreamPipeline
    stop: asyncio.Event
    task: asyncio.Task[None]
    logs: list[tuple[float, str, str]]  # (time.monotonic(), level, message), WARNING and up


@pytest.fixture
async def posts_pipeline(
    wm: WireMongo, exchange: str, key_prefix: str, collector: Collector, redis: aioredis.Redis
) -> AsyncIterator[Running]:
    """Only the posts stream, so that ``fail_next("getMore")`` can only hit its cursor."""
    logs: list[tuple[float, str, str]] = []
    sink = logger.add(
        lambda m: logs.append((time.monotonic(), m.record["level"].name, m.record["message"])),
        level="WARNING",
    )
    try:
        cfg = inprocess.settings(wm, exchange, key_prefix)
        async with inprocess.pipeline_of(cfg, POSTS.name) as (runtime, pipeline, stop, task):
            yield Running(runtime, pipeline, stop, task, logs)
    finally:
        logger.remove(sink)


def _delay(message: str) -> float:
    m = re.search(r"reopening in ([\d.]+)s", message)
    assert m, message
    return float(m[1])


@pytest.mark.timeout(120)
async def test_non_resumable_getmore_error_reopens_with_backoff_from_where_it_was(
    wm: WireMongo, posts_pipeline: Running, collector: Collector
) -> None:
    """HostUnreachable (6) without the ResumableChangeStreamError label: the driver does not resume
    it, the pipeline reopens after the last token it read; a second failure (on the reopening
    aggregate) waits longer; nothing is lost or duplicated.

    (91 ShutdownInProgress would not do: PyMongo raises NotPrimaryError for it, a ConnectionFailure,
    which the driver resumes by itself, labels or not.)
    """
    recorder = AggregateRecorder(wm)
    pipeline = posts_pipeline.pipeline
    before = write_posts(wm, "b", 4)
    await delivered(collector, expected(before))

    # The next getMore fails; then the reopening aggregate fails twice (6 is a retryable-read code:
    # the driver retries the aggregate once by itself, so two are needed to reach the pipeline).
    wm.fail_next("getMore", 6)
    wm.fail_next("aggregate", 6)
    wm.fail_next("aggregate", 6)
    await wait_until(lambda: pipeline.stats.reopens >= 1, 5, "a reopen")
    during = write_posts(wm, "d", 4)  # written while the stream is closed
    await wait_until(lambda: recorder.change_streams("posts"), 10, "the stream to be reopened")
    after = write_posts(wm, "z", 4)
    await delivered(collector, expected(before + during + after))

    assert pipeline.stats.reopens == 2
    assert not posts_pipeline.task.done()
    assert duplicates(collector) == []
    # Reopened after the last event read before the failure, before the first one written during it.
    positions = insert_positions(wm)
    resumed = recorder.change_streams("posts")[0]["resumeAfter"]["_data"]
    assert positions[before[-1]] <= resumed < positions[during[0]]
    # Backoff: two warnings, the second delay longer, and the reopen waited for the delays.
    warnings = [(t, msg) for t, level, msg in posts_pipeline.logs if "reopening in" in msg]
    assert len(warnings) == 2, warnings
    delays = [_delay(msg) for _, msg in warnings]
    # Backoff(0.2 s, x2, + up to 0.2 s jitter): the first in [0.2, 0.4], the second in [0.4, 0.6].
    assert 0.2 <= delays[0] <= delays[1]
    assert delays[1] >= 0.4
    reopened_at = recorder.change_stream_calls("posts")[0][0]
    assert reopened_at - warnings[1][0] >= delays[1] - 0.06
    assert all(stage.get("resumeAfter") for stage in recorder.change_streams("posts"))


@pytest.mark.timeout(120)
@pytest.mark.parametrize(
    "fault",
    [
        pytest.param(
            lambda wm: wm.fail_next("getMore", 6, ["ResumableChangeStreamError"]), id="code-6-label"
        ),
        pytest.param(lambda wm: wm.hangup_next("getMore"), id="hang-up"),
    ],
)
async def test_resumable_error_is_absorbed_by_the_driver(
    wm: WireMongo, posts_pipeline: Running, collector: Collector, fault: Any
) -> None:
    recorder = AggregateRecorder(wm)
    pipeline = posts_pipeline.pipeline
    before = write_posts(wm, "b", 4)
    await delivered(collector, expected(before))
    aggregates = wm.command_count("aggregate")
    fault(wm)
    # The driver resumes with one aggregate of its own, with resumeAfter.
    await wait_until(lambda: recorder.change_streams("posts"), 10, "the driver's resume")
    after = write_posts(wm, "z", 4)
    await delivered(collector, expected(before + after))

    assert pipeline.stats.reopens == 0
    assert wm.command_count("aggregate") == aggregates + 1
    resumed = recorder.change_streams("posts")[0]["resumeAfter"]["_data"]
    positions = insert_positions(wm)
    assert positions[before[-1]] <= resumed < positions[after[0]]
    assert duplicates(collector) == []
    assert not [msg for _, _, msg in posts_pipeline.logs if "reopening" in msg]


# ------------------------------------------------------------------------------- subprocess
async def run_until_checkpointed(
    daemons: Daemons, wm: WireMongo, env: dict[str, str], collector: Collector
) -> dict[str, Any]:
    """Run a daemon, handle a few posts, stop it gracefully; return the saved posts checkpoint."""
    recorder = AggregateRecorder(wm)
    first = daemons.spawn(env, "first")
    await first.log_line("leader now", 15)
    await wait_until(lambda: recorder.change_streams("posts"), 10, "the posts stream to open")
    posts = write_posts(wm, "r", 3)
    await delivered(collector, expected(posts))
    last = insert_positions(wm)[posts[-1]]
    await wait_until(
        lambda: checkpoint_past(wm, last),
        5,
        "the checkpoint to pass the posts",
    )
    assert await first.stopped() == 0
    cp = checkpoint(wm)
    assert cp is not None
    assert cp["event_time"] is not None
    return cp


def lose_history(wm: WireMongo, cp: dict[str, Any]) -> dict[str, Any]:
    """Point the posts checkpoint at a position the server no longer has: it answers 286."""
    data = cp["token"]["_data"]
    stale = {"_data": data[:10] + "F" * (len(data) - 10)}
    wm.db(DB).update_one(CHECKPOINTS, {"_id": "posts"}, {"$set": {"token": stale}})
    return stale


def one_error(daemon: Daemon) -> str:
    errors = daemon.errors()
    assert len(errors) == 1, f"expected ONE ERROR line, got:\n{daemon.log_text()}"
    msg = errors[0]["msg"]
    assert isinstance(msg, str)
    return msg


def says_what_to_do(line: str) -> bool:
    """The operator's way out: reset the checkpoint, or switch the policy."""
    return any(w in line for w in ("checkpoint reset", "reset the checkpoint", "resume-from-now"))


def mentions_time(line: str, *times: datetime | None) -> bool:
    stamps = {
        t.astimezone(UTC).strftime(fmt)
        for t in times
        if t is not None
        for fmt in ("%Y-%m-%dT%H:%M:%S", "%Y-%m-%d %H:%M:%S")
    }
    return any(s in line for s in stamps)


@pytest.mark.timeout(120)
@pytest.mark.parametrize("how", ["stale-token", "fail-next-aggregate"])
async def test_history_lost_with_policy_fail_exits_4_with_one_clear_error(
    wm: WireMongo,
    daemons: Daemons,
    collector: Collector,
    exchange: str,
    key_prefix: str,
    redis: aioredis.Redis,
    how: str,
) -> None:
    """286 on the resuming aggregate: exit 4 and ONE ERROR line (stream, checkpoint time, what to do).

    "stale-token": the posts checkpoint points past what the server has, so WireMongo answers 286
    to the posts stream. "fail-next-aggregate": ``fail_next("aggregate", 286)`` hits whichever of
    the two streams opens first; the line must name that one.
    """
    env = worker_env(wm, exchange, key_prefix)
    await run_until_checkpointed(daemons, wm, env, collector)
    if how == "stale-token":
        cp = checkpoint(wm)
        assert cp is not None
        lose_history(wm, cp)
    else:
        wm.fail_next("aggregate", 286)
    saved = {doc["_id"]: doc for doc in wm.db(DB).find(CHECKPOINTS)}

    second = daemons.spawn(env, "second")
    assert await second.exited(20) == EXIT_STREAM_FATAL
    line = one_error(second)
    m = re.search(r"stream (posts|profiles)\b", line)
    assert m, line
    stream = m[1]
    if how == "stale-token":
        assert stream == "posts"
    assert "286" in line or "history lost" in line
    assert says_what_to_do(line), line
    # Nothing moved: the failed stream's checkpoint still points where it was (the other stream may
    # have saved a newer idle token on its way out), and no gap was invented.
    # (The new leader claims it with its own epoch at the start of its term; nothing else changes.)
    after = checkpoint(wm, stream)
    assert after is not None
    assert {k: v for k, v in after.items() if k != "epoch"} == {
        k: v for k, v in saved[stream].items() if k != "epoch"
    }
    assert after["epoch"] > saved[stream]["epoch"]
    assert wm.db(DB).find(GAPS) == []
    # The operator needs to know from when events are missing: the checkpoint's time.
    cp = saved[stream]
    times = [cp[k].replace(tzinfo=UTC) for k in ("event_time", "saved_at") if cp.get(k) is not None]
    assert mentions_time(line, *times), f"the ERROR line does not name the checkpoint time ({times}): {line}"


@pytest.mark.timeout(120)
async def test_history_lost_with_resume_from_now_records_the_gap_and_goes_on(
    wm: WireMongo,
    daemons: Daemons,
    collector: Collector,
    exchange: str,
    key_prefix: str,
    redis: aioredis.Redis,
) -> None:
    env = worker_env(wm, exchange, key_prefix)
    cp = await run_until_checkpointed(daemons, wm, env, collector)
    stale = lose_history(wm, cp)
    skipped = write_posts(wm, "s", 2)  # written while no worker runs: lost with the history

    recorder = AggregateRecorder(wm)
    started = datetime.now(UTC)
    second = daemons.spawn(env | {"FANOUT_PIPELINE__ON_HISTORY_LOST": "resume-from-now"}, "second")
    await second.log_line("resuming from now", 15)
    await wait_until(
        lambda: any("resumeAfter" not in s for s in recorder.change_streams("posts")),
        10,
        "the posts stream to reopen from now",
    )
    assert second.returncode is None, "the worker must keep running"
    line = one_error(second)
    assert "stream posts" in line
    assert "gap is recorded" in line

    gaps = wm.db(DB).find(GAPS)
    assert len(gaps) == 1, gaps
    gap = gaps[0]
    assert gap["stream"] == "posts"
    assert "286" in gap["reason"] or "history lost" in gap["reason"]
    assert gap["start"].replace(tzinfo=UTC) == cp["event_time"].replace(tzinfo=UTC)
    assert started.replace(microsecond=0) <= gap["end"].replace(tzinfo=UTC) <= datetime.now(UTC)

    fresh = write_posts(wm, "n", 4)
    await delivered(collector, expected(fresh))
    assert await second.stopped() == 0
    got = collector.recipients_by_post()
    assert not set(skipped) & set(got), "posts before the gap's end were not expected to be replayed"
    after = checkpoint(wm)
    assert after is not None
    assert after["token"] != stale
    assert after["token"]["_data"] >= insert_positions(wm)[fresh[-1]]


@pytest.mark.timeout(120)
@pytest.mark.parametrize("policy", ["fail", "resume-from-now"])
async def test_invalidate_follows_the_history_lost_policy(
    wm: WireMongo,
    daemons: Daemons,
    collector: Collector,
    exchange: str,
    key_prefix: str,
    redis: aioredis.Redis,
    policy: str,
) -> None:
    recorder = AggregateRecorder(wm)
    env = worker_env(wm, exchange, key_prefix, FANOUT_PIPELINE__ON_HISTORY_LOST=policy)
    daemon = daemons.spawn(env)
    await daemon.log_line("leader now", 15)
    await wait_until(lambda: recorder.change_streams("posts"), 10, "the posts stream to open")
    posts = write_posts(wm, "r", 2)
    await delivered(collector, expected(posts))
    last = insert_positions(wm)[posts[-1]]
    await wait_until(
        lambda: checkpoint_past(wm, last),
        5,
        "the checkpoint to pass the posts",
    )
    cp = checkpoint(wm)
    assert cp is not None
    opened = len(recorder.calls)

    wm.invalidate(DB, "posts")
    if policy == "fail":
        assert await daemon.exited(20) == EXIT_STREAM_FATAL
        line = one_error(daemon)
        assert "stream posts" in line
        assert "invalidate" in line or "dropped" in line
        assert says_what_to_do(line), line
        assert mentions_time(line, cp["event_time"].replace(tzinfo=UTC), cp["saved_at"].replace(tzinfo=UTC))
        assert wm.db(DB).find(GAPS) == []
        return

    await daemon.log_line("resuming from now", 10)
    await wait_until(
        lambda: any("resumeAfter" not in s for s in recorder.change_streams("posts", since=opened)),
        10,
        "the posts stream to reopen from now",
    )
    assert daemon.returncode is None
    line = one_error(daemon)
    assert "stream posts" in line
    assert "gap is recorded" in line
    gaps = wm.db(DB).find(GAPS)
    assert [g["stream"] for g in gaps] == ["posts"]
    assert "invalidate" in gaps[0]["reason"]
    fresh = write_posts(wm, "n", 3)
    await delivered(collector, expected(posts + fresh))
    assert await daemon.stopped() == 0


# ------------------------------------------------------------------------------- documents
@pytest.mark.timeout(60)
async def test_posts_whose_ids_print_alike_are_two_posts_on_the_wire(
    wm: WireMongo, posts_pipeline: Running, collector: Collector
) -> None:
    """Through PyMongo and the wire stand-in: an int ``_id`` 777 and a string ``"777"`` (and an
    ObjectId beside the string of its hex) are four posts, with four distinct sets of message ids."""
    # Given posts whose _ids print alike, by an author followed twice by f1 and by himself
    oid = ObjectId()
    social = wm.db(DB)
    for follower in ("f1", "f1", "a2"):  # a repeated edge and a self-edge
        social.insert("follows", {"follower_id": follower, "followee_id": "a2"})
    for post_id in (777, "777", oid, str(oid)):
        social.insert("posts", {"_id": post_id, "author_id": "a2", "text": f"post {post_id!r}"})
    # When they are handled
    texts = ["~int:777", "777", str(oid), f"~str:{oid}"]
    await delivered(collector, {text: {"f1", *FOLLOWERS["a2"]} for text in texts})
    # Then each has its own id text in post.id and in its message ids
    by_post = {m.body["post"]["id"]: m.message_id for m in collector.of("post.created")}
    assert set(by_post) == set(texts)
    assert len(set(by_post.values())) == 4
    # and no chunk names a recipient twice or the author, whatever the follows hold
    for m in collector.of("post.created"):
        recipients = m.body["recipients"]
        assert len(recipients) == len(set(recipients)) and "a2" not in recipients
