"""Restart: a worker abandoned mid-stream is replaced; nothing is lost, duplicates only after the checkpoint."""

from __future__ import annotations

import asyncio
import random

import redis.asyncio as aioredis

from tests.harness import Collector, World, settings, start, wait_for
from worker.memory.db import token_seq
from worker.memory.stores import MemoryCheckpointStore
from worker.ports import Checkpoint


class CrashableCheckpoints(MemoryCheckpointStore):
    """Saves stop at the 'crash', as if the process died: nothing after it reaches the store."""

    def __init__(self) -> None:
        super().__init__()
        self.crashed = False

    async def save(self, checkpoint: Checkpoint) -> None:
        if not self.crashed:
            await super().save(checkpoint)


async def test_restart_resumes_from_checkpoint_without_losing_recipients(
    redis: aioredis.Redis, key_prefix: str, exchange: str, collector: Collector
) -> None:
    # Given authors with known followers
    rng = random.Random(2)
    world = World(checkpoints=CrashableCheckpoints())
    followers: dict[str, set[str]] = {}
    for i in range(20):
        user = f"u{i:02d}"
        world.add_user(user)
        followers[user] = {f"f{j:04d}" for j in rng.sample(range(2000), rng.randint(0, 300))}
        world.graph.set_followers(user, sorted(followers[user]))
    cfg = settings(key_prefix, exchange, chunk_size=50, batch_max_events=20)

    # When worker A handles part of the stream and is abandoned mid-stream
    _worker_a, task_a = await start(world.runtime(cfg, redis))
    authors = sorted(followers)
    for i in range(150):
        world.post(f"p{i:04d}", rng.choice(authors))
        if i % 10 == 9:
            await asyncio.sleep(0.01)
    await wait_for(lambda: len(collector.messages) > 50, what="A to publish some messages")
    world.checkpoints.crashed = True
    task_a.cancel()
    await asyncio.gather(task_a, return_exceptions=True)
    checkpoint = world.checkpoints.saved["posts"]
    for i in range(150, 300):
        world.post(f"p{i:04d}", rng.choice(authors))

    # and worker B starts over the same store
    runtime_b = world.runtime(cfg, redis)
    worker_b, task_b = await start(runtime_b)
    expected = {p: followers[d["author_id"]] for p, d in world.db.collection("posts").items()}

    def all_delivered() -> bool:
        got = collector.recipients_by_post()
        return all(got.get(p, set()) == r for p, r in expected.items())

    await wait_for(all_delivered, what="every recipient")
    worker_b.stop.set()
    await task_b

    # Then B resumed exactly from A's last checkpoint
    assert runtime_b.feeds["posts"].opened_with[0] == checkpoint.token  # type: ignore[attr-defined]
    # and no recipient is missing
    received = collector.recipients_by_post()
    for post_id, recipients in expected.items():
        assert received.get(post_id, set()) == recipients, post_id
    # and duplicates exist only for posts after the checkpoint, with identical ids and bodies
    seq_of = {
        ev["documentKey"]["_id"]: pos
        for pos, ev in world.db.log()
        if ev["ns"]["coll"] == "posts" and ev["operationType"] == "insert"
    }
    cp_seq = token_seq(checkpoint.token)
    assert cp_seq is not None
    seen: dict[str, dict] = {}
    duplicated_posts: set[str] = set()
    for m in collector.of("post.created"):
        if m.message_id in seen:
            duplicated_posts.add(m.correlation_id)
            assert m.body == seen[m.message_id], "a replay must publish the same chunk"
        seen[m.message_id] = m.body
    assert all(seq_of[p] > cp_seq for p in duplicated_posts), "duplicate before the checkpoint"
