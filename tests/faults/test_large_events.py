"""Change events over MongoDB's 16 MB limit, and streams that keep failing to reopen, at the wire.

WireMongo emulates the limit (10334 BSONObjectTooLarge), ``$changeStreamSplitLargeEvent`` and the
``$project``/``$set`` stages the worker sends; never a real MongoDB. The in-process tests run one
stream's pipeline over the production wiring (``build_runtime``: PyMongo async against WireMongo,
real Redis and RabbitMQ) so its counters can be read; the exit-code test runs the real daemon.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC
from types import SimpleNamespace
from typing import Any

import pytest
import redis.asyncio as aioredis

from enrichment.errors import EventTooLarge
from tests.faults import inprocess
from tests.faults.daemon import (
    DB,
    DEAD_LETTERS,
    AggregateRecorder,
    Daemons,
    checkpoint,
    checkpoint_past,
    insert_positions,
    wait_until,
    worker_env,
)
from tests.harness import Collector
from tests.support.wire_mongo import WireMongo
from worker.observe.health import HealthServer
from worker.observe.metrics import build_registry, change_stream_lag, render
from worker.observe.summary import _totals, summary_line
from worker.ports import Checkpoint
from worker.streams import POSTS, PROFILES
from worker.tailer.pipeline import StreamPipeline
from worker.wiring import Runtime

FOLLOWERS = {"a1": ["f1", "f2"]}
EXIT_STREAM_FATAL = 4


@dataclass
class Running:
    runtime: Runtime
    pipeline: StreamPipeline
    task: asyncio.Task[None]
    saved: list[Checkpoint]  # every checkpoint the pipeline saved, in order

    @property
    def worker(self) -> Any:
        """What the summary line, the metrics and /readyz read of a worker leading this one stream."""
        # Every field of worker.stats.WorkerView: a leader running this one pipeline.
        return SimpleNamespace(
            runtime=self.runtime,
            role="leader",
            epoch=0,
            pipelines=[self.pipeline],
            ready_checks={},
            stop=asyncio.Event(),
            heartbeat=time.monotonic(),
        )


@contextlib.asynccontextmanager
async def running(
    wm: WireMongo, stream: str, exchange: str, key_prefix: str, **mongo: Any
) -> AsyncIterator[Running]:
    """One stream's pipeline, built by the production wiring, until the block ends."""
    saved: list[Checkpoint] = []

    def record_saves(runtime: Runtime) -> None:
        save = runtime.checkpoints.save

        async def recording_save(cp: Checkpoint) -> None:
            await save(cp)
            saved.append(cp)

        runtime.checkpoints.save = recording_save  # type: ignore[method-assign]

    cfg = inprocess.settings(wm, exchange, key_prefix, **mongo)
    async with inprocess.pipeline_of(cfg, stream, record_saves) as (runtime, pipeline, _, task):
        yield Running(runtime, pipeline, task, saved)


def token_data(token: Any) -> str:
    return str(token["_data"])


# ------------------------------------------------------------------------------- fail: exit 4
@pytest.mark.timeout(60)
async def test_an_event_too_large_stops_the_worker_with_exit_4_and_one_line_never_reopening(
    wm: WireMongo,
    daemons: Daemons,
    collector: Collector,
    exchange: str,
    key_prefix: str,
    redis: aioredis.Redis,
) -> None:
    # Given a server that cannot split events (6.0.5), and a limit the test can reach cheaply
    wm.version, wm.max_event_bytes = "6.0.5", 4_000
    recorder = AggregateRecorder(wm)
    daemon = daemons.spawn(worker_env(wm, exchange, key_prefix))
    await daemon.log_line("leader now", 15)
    await wait_until(lambda: recorder.change_streams("posts"), 10, "the posts stream to open")
    assert daemon.find_log("cannot split change events over 16 MB") is not None
    wm.db(DB).insert("posts", {"_id": "ok", "author_id": "a1", "text": "fits"})
    await wait_until(lambda: checkpoint_past(wm, insert_positions(wm)["ok"]), 10, "the checkpoint past 'ok'")
    cp = checkpoint(wm)
    assert cp is not None

    # When a post arrives whose change event is over the limit even projected
    wm.db(DB).insert("posts", {"_id": "huge", "author_id": "a1", "text": "x" * 5_000})

    # Then the worker stops with exit 4 instead of reopening into the same event forever
    assert await daemon.exited(20) == EXIT_STREAM_FATAL
    assert len(recorder.change_streams("posts")) == 1, "the posts stream was reopened"
    # and says so in ONE line naming the stream, the cause and the checkpoint, with the ways out
    errors = daemon.errors()
    assert len(errors) == 1, daemon.log_text()
    line = str(errors[0]["msg"])
    assert "stream posts" in line and "16 MB" in line and "10334" in line
    stamp = cp["saved_at"].replace(tzinfo=UTC).strftime("%Y-%m-%dT%H:%M:%S")
    assert stamp in line, line
    assert "large_events" in line and "checkpoint reset" in line
    # and nothing moved past the event
    after = checkpoint(wm)
    assert after is not None and after["token"] == cp["token"]


# ------------------------------------------------------------------------------- split, skip, fail at 16 MB
BIG = "B" * (9 * 1024 * 1024)  # one display field: the update's diff and its looked-up document hold it twice


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("version", "policy"),
    [("7.0.0", "split"), ("6.0.5", "skip"), ("6.0.5", "split")],
    ids=["7.0-split", "skip", "6.0-split-falls-back-to-fail"],
)
async def test_a_profile_edit_over_16_mb_is_split_skipped_or_stops_the_stream(
    wm: WireMongo,
    collector: Collector,
    exchange: str,
    key_prefix: str,
    redis: aioredis.Redis,
    version: str,
    policy: str,
) -> None:
    """Real sizes: an 18 MB change event (9 MB in the diff, 9 MB in the looked-up profile)."""
    wm.version = version
    async with running(wm, PROFILES.name, exchange, key_prefix, large_events=policy) as run:
        p = run.pipeline
        wm.db(DB).update_one("profiles", {"_id": "a1"}, {"$set": {"display_name": BIG, "version": 2}})
        update_token = token_data(wm.change_events()[-1]["_id"])
        if (version, policy) == ("7.0.0", "split"):
            # Then the handler gets the whole event once: profile.updated goes out with the new name
            await wait_until(lambda: big_updates(collector), 20, "profile.updated with the new name")
            assert len(big_updates(collector)) == 1
            assert p.stats.split_events == 1 and p.stats.dead_lettered == 0
            # and no checkpoint ever stopped between its fragments (WireMongo's fragment tokens are the
            # event's token + the fragment number; the event's own token, as a post-batch token, and
            # later writes, checkpoints included, all resume after the whole event)
            await wait_until(
                lambda: run.saved and token_data(run.saved[-1].token) >= update_token, 5, "saved"
            )
            saved = [token_data(c.token) for c in run.saved if c.token]
            assert update_token + "0001" not in saved, saved
        elif policy == "skip":
            # Then it reaches the worker without its documents, is dead-lettered and counted
            await wait_until(lambda: p.stats.dead_lettered == 1, 20, "the dead letter")
            (dead,) = wm.db(DB).find(DEAD_LETTERS)
            assert "16 MB" in dead["error"] and "skip" in dead["error"]
            assert '"a1"' in dead["event"] and not dead["event_truncated"]  # documentKey: findable
            assert p.stats.oversize_skipped == 1
            assert big_updates(collector) == []
            metrics = render(build_registry(run.worker)).decode()
            assert 'fanout_stream_large_events_total{outcome="skipped",stream="profiles"} 1.0' in metrics
        else:
            # Then the stream stops: no reopen, the same event would fail it again
            with pytest.raises(EventTooLarge):
                await asyncio.wait_for(asyncio.shield(run.task), 20)
            assert p.stats.reopens == 0
            assert p.stats.by_type[("update", "handled")] == 0


def big_updates(collector: Collector) -> list[Any]:
    """The profile.updated messages that carry the 9 MB name (the seeded profiles announce theirs too)."""
    return [m for m in collector.of("profile.updated") if BIG in repr(m.body)]


# ------------------------------------------------------------------------------- reopening, visible
@pytest.mark.timeout(60)
async def test_a_stream_that_keeps_failing_to_reopen_shows_in_lag_summary_metrics_and_readyz(
    wm: WireMongo, collector: Collector, exchange: str, key_prefix: str, redis: aioredis.Redis
) -> None:
    async with running(wm, POSTS.name, exchange, key_prefix) as run:
        p, worker = run.pipeline, run.worker
        health = HealthServer(worker, "127.0.0.1", 0, 60.0)
        before = _totals(worker)
        # Given a stream that reads, then whose getMore fails (not resumable) and whose reopening
        # aggregate keeps failing
        wm.fail_next("getMore", 2)
        for _ in range(6):
            wm.fail_next("aggregate", 2)

        await wait_until(lambda: p.reopen_failures >= 2, 20, "two failures in a row")

        # Then its lag grows from its last read, instead of reading 0 with nothing in flight
        lag = change_stream_lag(p, time.time())
        assert lag is not None and lag > 0
        await asyncio.sleep(0.3)
        later = change_stream_lag(p, time.time())
        assert later is not None and later >= lag + 0.25
        # and the summary line names the state
        line = summary_line(worker, before, _totals(worker))
        m = re.search(r"lag posts ([\d.]+)s reopening \((\d+) failures, (\d+) s\)", line)
        assert m, line
        assert float(m[1]) > 0 and int(m[2]) >= 2
        # and the metrics
        metrics = render(build_registry(worker)).decode()
        assert 'fanout_stream_up{stream="posts"} 0.0' in metrics
        failures = re.search(r'fanout_stream_reopen_failures\{stream="posts"\} ([\d.]+)', metrics)
        assert failures and float(failures[1]) >= 2
        # and /readyz
        status, payload = await health.readiness()
        assert status == 503 and payload["streams"]["posts"].startswith("reopening (")

        # When the server answers again, the stream reads and everything says so
        await wait_until(lambda: p.reopen_failures == 0, 30, "the stream to read again")
        line = summary_line(worker, before, _totals(worker))
        assert "reopening" not in line and "lag posts 0.0s" in line
        assert 'fanout_stream_up{stream="posts"} 1.0' in render(build_registry(worker)).decode()
        status, payload = await health.readiness()
        assert status == 200 and "streams" not in payload
        # and it goes on delivering
        wm.db(DB).insert("posts", {"_id": "after", "author_id": "a1", "text": "x"})
        await wait_until(lambda: "after" in collector.recipients_by_post(), 10, "the post after")
