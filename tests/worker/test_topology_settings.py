"""Which messages the declared consumer queues take: AMQP topic matching, and the start-up warning."""

from __future__ import annotations

import pytest
from loguru import logger

from tests.harness import settings
from worker.topology_settings import QueueSpec, TopologySettings, topic_matches
from worker.wiring import warn_unbound_messages


@pytest.mark.parametrize(
    ("pattern", "key", "routes"),
    [
        ("post.updated", "post.updated", True),
        ("post.*", "post.deleted", True),
        ("post.*", "post.a.b", False),
        ("#", "profile.updated", True),
        ("post.#", "post", True),
        ("#.updated", "post.updated", True),
        ("*.created", "post.updated", False),
        ("post.created", "post.created.x", False),
    ],
)
def test_topic_patterns_match_as_a_topic_exchange_routes(pattern: str, key: str, routes: bool) -> None:
    assert topic_matches(pattern, key) is routes


def test_an_own_topology_that_binds_no_queue_to_edits_and_deletes_is_warned_about_at_start() -> None:
    # Given [topology] queues from before edits and deletes existed: post.created only
    own = TopologySettings(queues=[QueueSpec(name="q.posts", bindings=["post.created", "profile.*"])])
    cfg = settings(exchange="test.unbound").model_copy(update={"topology": own})
    lines: list[str] = []
    sink = logger.add(lines.append, level="WARNING", format="{message}")
    try:
        # When the worker starts, Then one warning names what the broker would drop
        warn_unbound_messages(cfg)
        assert own.unbound(["post.created", "post.updated", "post.deleted"]) == [
            "post.updated",
            "post.deleted",
        ]
        # and the default topology, which binds them all, is not warned about
        warn_unbound_messages(settings(exchange="test.unbound"))
    finally:
        logger.remove(sink)
    [line] = lines
    assert "post.updated, post.deleted" in line and "post.created" not in line.split(":")[0]
