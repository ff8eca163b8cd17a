"""What a fan-out process's runner exports: every queue's depth and each lane's oldest job age."""

from __future__ import annotations

import time
from typing import Any

from tests.worker.observe.test_metrics_health import fake_worker, key, scrape
from worker.fanout.runner import FanoutRunner
from worker.memory.publisher import MemoryPublisher
from worker.memory.stores import MemoryFollowerGraph
from worker.settings import FanoutSettings


def worker_with(r: FanoutRunner) -> Any:
    w = fake_worker()
    w.runtime.fanout = r
    return w


def runner() -> FanoutRunner:
    return FanoutRunner(
        "amqp://127.0.0.1", FanoutSettings(), MemoryFollowerGraph(), MemoryPublisher(), 10, 1.0, 1.0
    )


def test_depths_of_the_lanes_the_delay_queue_and_the_dead_letters_are_exported_once_read() -> None:
    # Given a runner that has read its queues' depths, one lane with jobs waiting
    r = runner()
    assert scrape(worker_with(r)).get(key("fanout_job_queue_depth", lane="dead")) is None
    r.depths.update(ordinary=0, bulk=4, deferred=2, dead=1)
    bulk = r.consumers["bulk"].stats
    bulk.last_job_wait_seconds, bulk.last_job_taken_at = 3.0, time.time() - 2.0
    # When scraped
    m = scrape(worker_with(r))
    # Then every queue's depth is there, and the bulk lane's oldest job is at least 5 s old
    for lane, depth in (("ordinary", 0), ("bulk", 4), ("deferred", 2), ("dead", 1)):
        assert m[key("fanout_job_queue_depth", lane=lane)] == depth
    assert m[key("fanout_job_oldest_age_seconds", lane="ordinary")] == 0.0
    assert 5.0 <= m[key("fanout_job_oldest_age_seconds", lane="bulk")] < 6.0


def test_a_lane_with_jobs_waiting_but_none_taken_has_no_age_rather_than_a_wrong_one() -> None:
    r = runner()
    r.depths.update(ordinary=3, bulk=None)
    assert r.oldest_job_ages() == {}
