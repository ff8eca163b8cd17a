"""Publishing and fan-out metrics: consumer messages, posts, fan-out jobs (tailer and worker side).

Each outcome that is a part of another count has a counter of its own, so every labelled counter
sums to something true (the jobs settled by outcome sum to the jobs settled).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import TYPE_CHECKING

from prometheus_client.metrics_core import Metric

from worker.observe.families import counter, gauge

if TYPE_CHECKING:
    from worker.stats import RuntimeView

LANE = ("lane",)


def delivery_families(rt: RuntimeView) -> Iterator[Metric]:
    yield from _messages(rt)
    yield from _posts(rt)
    yield from _jobs(rt)


def _messages(rt: RuntimeView) -> Iterator[Metric]:
    pub = rt.publisher.stats
    yield counter(
        "messages_published",
        "Publish attempts of consumer messages (post.created chunks, profile.updated), re-publishes "
        "included.",
        (),
        [((), pub.sent)],
    )
    yield counter("messages_confirmed", "Consumer messages the broker confirmed.", (), [((), pub.confirmed)])
    yield counter(
        "messages_returned",
        "Consumer messages returned unroutable (no queue bound for the routing key): dropped, logged.",
        (),
        [((), pub.returned)],
    )
    yield counter(
        "messages_nacked", "Publishes the broker refused (nack); re-published.", (), [((), pub.nacked)]
    )
    yield counter(
        "message_republishes",
        "Re-publishes after a nack, a confirm timeout or a lost connection.",
        (),
        [((), pub.retried)],
    )
    yield counter("publisher_reconnects", "Reconnections to RabbitMQ.", (), [((), pub.reconnects)])
    yield counter(
        "rabbitmq_blocked_episodes",
        "Times RabbitMQ blocked the publishing connection (connection.blocked: a resource alarm).",
        (),
        [((), pub.blocked_pauses)],
    )
    yield counter(
        "rabbitmq_blocked_seconds",
        "Seconds publishing spent paused by connection.blocked (grows while a block lasts).",
        (),
        [((), pub.blocked_seconds)],
    )
    yield gauge("publishes_in_flight", "Publishes awaiting a confirm.", (), [((), rt.publisher.in_flight)])


def _posts(rt: RuntimeView) -> Iterator[Metric]:
    posts = rt.posts.stats
    yield counter(
        "posts_handled", "Posts handled: every fan-out job of the post confirmed.", (), [((), posts.posts)]
    )
    yield counter(
        "recipients",
        "Recipients in the chunks this process's fan-out workers published.",
        (),
        [((), posts.recipients)],
    )
    yield counter(
        "post_events",
        "Post edits and deletes: fanned out, ignored (no visible field), dead-lettered (author unknown).",
        ("event",),
        [
            (("updated",), posts.edits),
            (("deleted",), posts.deletes),
            (("edit_ignored",), posts.edits_ignored),
            (("delete_author_unknown",), posts.deletes_author_unknown),
        ],
    )
    profiles = rt.profiles.stats
    yield counter(
        "profiles_deleted",
        "Deleted profiles tombstoned in every cache layer and on every replica.",
        (),
        [((), profiles.deleted)],
    )
    yield counter(
        "profile_changes_stale",
        "Profile changes older than a version already seen (cache layers): not announced.",
        (),
        [((), profiles.stale)],
    )
    yield counter(
        "profile_changes_unbumped",
        "Profile display changes that kept the version already seen with other content.",
        (),
        [((), profiles.unbumped)],
    )
    yield counter(
        "follower_ids_skipped",
        "Follow edges skipped because their follower_id is not a string.",
        (),
        [((), rt.posts.invalid_follower_ids)],
    )


def _jobs(rt: RuntimeView) -> Iterator[Metric]:
    emitted = rt.posts.emitter.stats
    yield counter(
        "jobs_published",
        "Fan-out jobs the tailer published and the broker confirmed, by the lane the post was planned for.",
        LANE,
        [(("ordinary",), emitted.ordinary), (("bulk",), emitted.bulk)],
    )
    yield counter(
        "posts_deferred",
        "Posts over their author's rate whose jobs went through the delay queue (never dropped).",
        (),
        [((), emitted.deferred_posts)],
    )
    yield gauge(
        "post_ranges_max",
        "The most follower ranges one post was split into (a post over fanout.range_size followers).",
        (),
        [((), emitted.largest_post_ranges)],
    )
    runner = rt.fanout
    if runner is None:
        return
    lanes = sorted(runner.consumers.items())
    received: list[tuple[Sequence[str], float]] = []
    settled: list[tuple[Sequence[str], float]] = []
    for lane, consumer in lanes:
        c = consumer.stats
        received.append(((lane,), c.jobs_received))
        settled += [
            ((lane, "acked"), c.jobs_acked),
            ((lane, "requeued"), c.requeued),
            ((lane, "dead_lettered"), c.dead_lettered),
        ]
    yield counter("jobs_received", "Job deliveries to this process's fan-out workers.", LANE, received)
    yield counter(
        "jobs_redelivered",
        "Deliveries of a job seen before (a crash, a lost broker, a requeue): part of jobs_received.",
        LANE,
        [((lane,), c.stats.redelivered) for lane, c in lanes],
    )
    yield counter(
        "jobs_settled",
        "Job deliveries settled by this process's fan-out workers: acked (every chunk confirmed), "
        "requeued (a failed attempt), dead_lettered (malformed, permanent error, or last delivery).",
        ("lane", "outcome"),
        settled,
    )
    yield counter(
        "jobs_malformed",
        "Jobs that could not be decoded: part of jobs_settled{outcome=dead_lettered}.",
        LANE,
        [((lane,), c.stats.malformed) for lane, c in lanes],
    )
    yield gauge(
        "job_queue_depth",
        "Jobs ready in each lane's queue, the delay queue (deferred) and the dead-letter queue (dead; "
        "dead-lettered by a worker or by the broker past the delivery limit), read every 5 s.",
        LANE,
        [((lane,), depth) for lane, depth in sorted(runner.depths.items()) if depth is not None],
    )
    yield gauge(
        "job_oldest_age_seconds",
        "Per lane, an upper bound on how long the oldest waiting job has waited (0: none waits).",
        LANE,
        [((lane,), age) for lane, age in sorted(runner.oldest_job_ages().items())],
    )
    yield gauge(
        "jobs_in_flight",
        "Jobs this process holds unacknowledged, by lane (bounded by the lane's prefetch).",
        LANE,
        [((lane,), c.in_flight) for lane, c in lanes],
    )
    yield gauge(
        "workers_connected",
        "1 while this process's fan-out workers are connected.",
        (),
        [((), float(runner.connected))],
    )
    yield counter("worker_reconnects", "Reconnections of the fan-out workers.", (), [((), runner.reconnects)])
