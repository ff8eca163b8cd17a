"""The job publisher's bulk shard router: one shard per post, the next post on the next shard."""

from __future__ import annotations

import pytest

from handlers.ports import OutgoingMessage
from worker.messaging.jobs import BulkShards, bulk_queues, job_declarations
from worker.settings import FanoutSettings


def job(post: str, lane: str = "bulk") -> OutgoingMessage:
    return OutgoingMessage(lane, f"job:{post}:{lane}", post, b"{}")


def test_every_range_of_a_post_goes_to_one_shard_and_consecutive_posts_round_the_ring() -> None:
    shards = BulkShards(3)
    keys = [shards.routing_key(job(p)) for p in ("a", "a", "b", "c", "b", "d", "a")]
    assert keys == ["bulk", "bulk", "bulk.1", "bulk.2", "bulk.1", "bulk", "bulk"]


def test_ordinary_and_deferred_jobs_keep_their_keys_and_one_shard_is_the_plain_bulk_key() -> None:
    assert BulkShards(4).routing_key(job("a", "ordinary")) == "ordinary"
    assert BulkShards(4).routing_key(job("a", "deferred")) == "deferred"
    assert {BulkShards(1).routing_key(job(p)) for p in "abc"} == {"bulk"}


def test_its_memory_of_posts_is_bounded() -> None:
    shards = BulkShards(2, memory=2)
    for p in "abc":
        shards.routing_key(job(p))
    assert len(shards._assigned) == 2


def test_the_bulk_lane_is_its_shard_queues_each_declared_like_a_lane() -> None:
    settings = FanoutSettings(bulk_queue="q.bulk", bulk_shards=3)
    assert bulk_queues(settings) == ["q.bulk", "q.bulk.1", "q.bulk.2"]
    declared = {d.name for d in job_declarations(settings)}
    assert {"q.bulk", "q.bulk.1", "q.bulk.2"} <= declared


def test_a_shard_queue_that_would_collide_with_another_queue_is_a_config_error() -> None:
    with pytest.raises(ValueError, match="must differ"):
        FanoutSettings(bulk_queue="q.bulk", ordinary_queue="q.bulk.1", bulk_shards=2)
