"""The scale-out rounds' checks: a lost chunk or an unacked job voids the numbers."""

from __future__ import annotations

import copy
from typing import Any

from bench.report import scaleout_checks, scaleout_targets


def _round(**extra: Any) -> dict[str, Any]:
    return {
        "jobs": 10,
        "jobs_acked": 10,
        "messages": 50,
        "delivered_to_queue": 50,
        "recipients": 50_000,
        "seconds": 1.0,
        "rss_growth_mb": [1.0, 2.0],
        **extra,
    }


def _results() -> dict[str, Any]:
    bare = {"messages": 50, "delivered": 50, "messages_per_s": 100.0}
    return {
        "one": _round(ratio=0.9, ceiling=bare),
        "two": _round(ratio=0.9, ceiling=bare),
        "half_load": _round(
            latency_p99_ms=100.0,
            star_followers=1_000_000,
            ordinary_posts=20,
            ordinary_done=15,
            large_posts_done=5,
            tailer_rss_growth_mb=0.5,
        ),
        "big": _round(followers=50_000, tailer_rss_growth_mb=0.0),
        "dead_lettered": 0,
        "retried": 0,
    }


def test_every_check_holds_when_nothing_is_lost() -> None:
    assert all(c["ok"] for c in scaleout_checks(_results()))
    assert all(t["met"] for t in scaleout_targets(_results()))


def test_a_chunk_missing_from_the_queue_or_a_job_not_acked_fails_a_check() -> None:
    for key, field, value in [
        ("two", "delivered_to_queue", 49),
        ("one", "jobs_acked", 9),
        ("big", "recipients", 49_999),
        ("half_load", "ordinary_done", 14),
    ]:
        r = copy.deepcopy(_results())
        r[key][field] = value
        assert not all(c["ok"] for c in scaleout_checks(r)), (key, field)


def test_targets_use_the_worst_fan_out_process_and_skip_the_big_post_when_not_run() -> None:
    r = _results()
    r["half_load"]["rss_growth_mb"] = [1.0, 80.0]
    del r["big"]
    rows = {t["measure"]: t for t in scaleout_targets(r)}
    assert not rows["RSS growth, fan-out processes (1,000,000 posts)"]["met"]
    assert not any("10,000,000" in name or "50,000" in name for name in rows)
