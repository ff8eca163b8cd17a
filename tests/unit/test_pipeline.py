"""The dispatcher's promises, on the in-memory stand-ins: checkpoints, idle tokens, dead letters."""

from __future__ import annotations

import asyncio

from handlers.ports import OutgoingMessage
from tests.harness import World, settings, start, wait_for
from worker.adapters.memory_db import token_seq
from worker.publisher import MemoryPublisher


class GatedPublisher(MemoryPublisher):
    """Confirms everything at once, except messages of posts listed in ``held``."""

    def __init__(self) -> None:
        super().__init__()
        self.held: dict[str, asyncio.Future[None]] = {}
        self.hold: set[str] = set()

    async def send(self, message: OutgoingMessage) -> asyncio.Future[None]:
        if message.correlation_id in self.hold:
            self.messages.append(message)
            future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            self.held[message.correlation_id] = future
            return future
        return await super().send(message)


def _world(users: int = 3) -> World:
    world = World()
    for i in range(users):
        world.add_user(f"u{i}")
        world.graph.set_followers(f"u{i}", [f"f{i}a", f"f{i}b"])
    return world


async def test_checkpoint_never_passes_an_unconfirmed_event() -> None:
    # Given a post whose fan-out is not confirmed, followed by posts that are
    world = _world()
    publisher = GatedPublisher()
    publisher.hold = {"p1"}
    worker, task = await start(world.runtime(settings(), None, publisher))
    posts = next(p for p in worker.pipelines if p.stream == "posts")
    for i in range(6):
        world.post(f"p{i}", f"u{i % 3}")
    await wait_for(lambda: posts.stats.handled == 5, what="the five confirmed posts")
    await asyncio.sleep(0.2)  # several checkpoint intervals

    # Then the checkpoint stops right before p1, although p2..p5 are done
    seq = {
        ev["documentKey"]["_id"]: pos
        for pos, ev in world.db.log()
        if ev["ns"]["coll"] == "posts" and ev["operationType"] == "insert"
    }
    assert token_seq(world.checkpoints.saved["posts"].token) == seq["p0"]

    # When p1 is finally confirmed
    publisher.held["p1"].set_result(None)
    await wait_for(lambda: posts.stats.handled == 6, what="p1")
    await wait_for(lambda: token_seq(world.checkpoints.saved["posts"].token) >= seq["p5"], what="checkpoint")
    worker.stop.set()
    await task


async def test_idle_stream_saves_the_post_batch_token() -> None:
    # Given a worker whose profiles stream sees no profile writes at all
    world = _world()
    worker, task = await start(world.runtime(settings(), None, MemoryPublisher()))
    # When only posts are written (the log moves on, the profiles stream stays idle)
    for i in range(3):
        world.post(f"p{i}", "u0")
    await wait_for(lambda: "profiles" in world.checkpoints.saved, what="an idle checkpoint")
    await wait_for(
        lambda: token_seq(world.checkpoints.saved["profiles"].token) == world.db.position,
        what="the idle token to reach the end of the log",
    )
    worker.stop.set()
    await task
    # Then the quiet stream's checkpoint is as recent as the log, with no event handled
    assert next(p for p in worker.pipelines if p.stream == "profiles").stats.handled == 0


async def test_malformed_event_is_dead_lettered_and_the_stream_moves_on() -> None:
    world = _world()
    publisher = MemoryPublisher()
    worker, task = await start(world.runtime(settings(), None, publisher))
    world.post("good1", "u0")
    world.db.insert("posts", {"_id": "bad", "text": 42})  # no author_id, wrong type
    world.db.insert("posts", {"_id": "huge", "author_id": "u0", "text": "x" * 300_000})
    world.post("good2", "u1")
    posts = next(p for p in worker.pipelines if p.stream == "posts")
    await wait_for(lambda: posts.stats.handled == 2 and posts.stats.dead_lettered == 2, what="all four")
    worker.stop.set()
    await task

    dead = {d["event"]["documentKey"]["_id"]: d for d in world.dead.items}
    assert set(dead) == {"bad", "huge"}
    assert "author_id" in dead["bad"]["error"]
    assert "larger than" in dead["huge"]["error"]
    assert dead["bad"]["stream"] == "posts" and dead["bad"]["token"] == dead["bad"]["event"]["_id"]
    assert {m.correlation_id for m in publisher.messages} == {"good1", "good2"}
    last = max(pos for pos, ev in world.db.log() if ev["operationType"] == "insert")
    assert token_seq(world.checkpoints.saved["posts"].token) >= last


async def test_transient_failures_are_retried_then_dead_lettered() -> None:
    world = _world()
    calls = {"n": 0}

    class FlakyStore(type(world.posts)):  # type: ignore[misc]
        async def set_snapshots(self, items):  # type: ignore[no-untyped-def]
            calls["n"] += 1
            if calls["n"] <= 2 or calls["n"] < 0:
                raise ConnectionError("flaky")
            return await super().set_snapshots(items)

    world.posts = FlakyStore(world.db)
    cfg = settings(max_attempts=3, retry_max_seconds=0.05)
    worker, task = await start(world.runtime(cfg, None, MemoryPublisher()))
    posts = next(p for p in worker.pipelines if p.stream == "posts")
    world.post("p0", "u0")
    await wait_for(lambda: posts.stats.handled == 1, what="p0 after two failures")
    assert posts.stats.retries == 2 and world.dead.items == []

    calls["n"] = -100  # now it fails on every attempt
    world.post("p1", "u1")
    await wait_for(lambda: posts.stats.dead_lettered == 1, what="p1 given up")
    worker.stop.set()
    await task
    assert "gave up after 3 attempts" in world.dead.items[0]["error"]


async def test_a_checkpoint_reset_to_a_time_starts_the_stream_there() -> None:
    # Given posts written before and after a moment, and a checkpoint reset to that moment
    from datetime import UTC, datetime

    from worker.ports import Checkpoint

    world = _world()
    world.post("early", "u0")
    await asyncio.sleep(0.01)
    moment = datetime.now(UTC)
    world.post("late1", "u1")
    world.post("late2", "u2")
    await world.checkpoints.save(Checkpoint("posts", None, None, moment, 0, start_at=moment))
    publisher = MemoryPublisher()

    # When a worker starts
    worker, task = await start(world.runtime(settings(), None, publisher))
    posts = next(p for p in worker.pipelines if p.stream == "posts")
    await wait_for(lambda: posts.stats.handled == 2, what="the two later posts")
    worker.stop.set()
    await task

    # Then it replayed from the moment on, and the next checkpoint is a real token again
    assert {m.correlation_id for m in publisher.messages} == {"late1", "late2"}
    assert world.checkpoints.saved["posts"].token is not None


async def test_a_crash_before_the_first_token_is_saved_still_replays() -> None:
    # Given a first-ever start whose checkpoints would not be saved for a long while
    from worker.adapters.memory_stores import MemoryCheckpointStore

    class Frozen(MemoryCheckpointStore):
        frozen = False

        async def save(self, checkpoint):  # type: ignore[no-untyped-def]
            if not self.frozen:
                await super().save(checkpoint)

    world = _world()
    world.checkpoints = Frozen()
    first = MemoryPublisher()
    _worker, task = await start(world.runtime(settings(checkpoint_interval_seconds=60), None, first))
    assert world.checkpoints.saved["posts"].start_at is not None  # recorded before opening

    # When posts are handled and the worker dies before saving any token
    world.checkpoints.frozen = True
    world.post("p0", "u0")
    world.post("p1", "u1")
    await wait_for(lambda: len(first.messages) == 2, what="the first worker's fan-out")
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)

    # Then the next worker replays them from the recorded start instead of starting from a new "now"
    world.checkpoints.frozen = False
    second = MemoryPublisher()
    worker2, task2 = await start(world.runtime(settings(), None, second))
    await wait_for(lambda: {m.correlation_id for m in second.messages} == {"p0", "p1"}, what="replay")
    worker2.stop.set()
    await task2


async def test_a_dependency_outage_is_waited_out_not_dead_lettered() -> None:
    # Given a profile source that is unreachable for longer than max_attempts retries take
    from enrichment.errors import ServiceUnavailable

    world = _world()
    down = {"calls": 0}
    fetch = world.source.fetch_many

    async def flaky(user_ids):  # type: ignore[no-untyped-def]
        down["calls"] += 1
        if down["calls"] <= 6:
            raise ServiceUnavailable("MongoDB is away")
        return await fetch(user_ids)

    world.source.fetch_many = flaky  # type: ignore[method-assign]
    publisher = MemoryPublisher()
    cfg = settings(max_attempts=2, retry_max_seconds=0.02)
    worker, task = await start(world.runtime(cfg, None, publisher))
    world.post("p0", "u0")
    posts = next(p for p in worker.pipelines if p.stream == "posts")
    await wait_for(lambda: posts.stats.handled == 1, what="p0 once MongoDB is back")
    worker.stop.set()
    await task
    # Then it was retried past max_attempts and delivered, never dead-lettered
    assert down["calls"] > 2
    assert world.dead.items == []
    assert [m.correlation_id for m in publisher.messages] == ["p0"]


async def test_stop_ends_the_pipeline_even_when_in_flight_work_is_full_and_stuck() -> None:
    # Given publishes that are never confirmed and an in-flight bound that fills up
    world = _world()
    publisher = GatedPublisher()
    publisher.hold = {f"p{i}" for i in range(10)}
    cfg = settings(max_in_flight_events=3, shutdown_deadline_seconds=0.5)
    worker, task = await start(world.runtime(cfg, None, publisher))
    for i in range(10):
        world.post(f"p{i}", f"u{i % 3}")
    posts = next(p for p in worker.pipelines if p.stream == "posts")
    await wait_for(lambda: posts.in_flight == 3, what="the in-flight bound to fill")
    checkpoint = world.checkpoints.saved["posts"]

    # When asked to stop, it ends within the deadline, and the checkpoint did not move past them
    worker.stop.set()
    await asyncio.wait_for(task, 5)
    # (it may hold the idle token from before the posts, saved at the stop: that passes none of them)
    first_post = min(pos for pos, ev in world.db.log() if ev["ns"]["coll"] == "posts")
    saved = world.checkpoints.saved["posts"].token
    assert saved == checkpoint.token or token_seq(saved) < first_post


async def test_a_profile_that_appears_later_fills_the_earlier_posts() -> None:
    world = World()
    world.graph.set_followers("late", ["f1"])
    publisher = MemoryPublisher()
    worker, task = await start(world.runtime(settings(), None, publisher))
    world.post("p0", "late")  # no profile yet: fanned out with author null
    posts = next(p for p in worker.pipelines if p.stream == "posts")
    await wait_for(lambda: posts.stats.handled == 1, what="p0")
    assert "author_snapshot" not in world.db.collection("posts")["p0"]

    world.add_user("late")
    await wait_for(
        lambda: world.db.collection("posts")["p0"].get("author_snapshot", {}).get("version") == 1,
        what="the new profile's cascade",
    )
    worker.stop.set()
    await task
    assert [m.routing_key for m in publisher.messages] == ["post.created", "profile.updated"]


async def test_the_periodic_summary_reports_rates_cache_hits_and_in_flight() -> None:
    from worker.summary import _totals, summary_line

    world = _world()
    worker, task = await start(world.runtime(settings(), None, MemoryPublisher()))
    before = _totals(worker)
    for i in range(6):
        world.post(f"p{i}", f"u{i % 3}")
    posts = next(p for p in worker.pipelines if p.stream == "posts")
    await wait_for(lambda: posts.stats.handled == 6, what="six posts")
    line = summary_line(worker, before, _totals(worker))
    worker.stop.set()
    await task
    assert line.startswith("summary: leader epoch 0 | ")
    assert "posts/s" in line
    assert "msg/s" in line
    assert "cache hit" in line
    assert "in flight 0 events" in line
