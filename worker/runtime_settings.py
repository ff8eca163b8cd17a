"""The settings of the worker's own machinery: ``[cache]``, ``[pipeline]``, ``[leader]``,
``[health]``, ``[log]`` and ``[fanout]`` (the job queues)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from worker.service_settings import Section
from worker.topology_settings import check_name


class CacheSettings(Section):
    """``[cache]``: the in-process L1 snapshot cache."""

    l1_max_entries: int = Field(100_000, gt=0, description="Bound of the in-process LRU cache (entries).")
    l1_ttl_seconds: float = Field(60.0, gt=0, description="Lifetime of a snapshot in L1, in seconds.")
    l1_negative_ttl_seconds: float = Field(
        10.0, gt=0, description='Lifetime of a "no such user" in L1, in seconds.'
    )


class PipelineSettings(Section):
    """``[pipeline]``: micro-batches, in-flight bounds, retries, checkpoints and shutdown."""

    batch_max_events: int = Field(200, gt=0, le=10_000, description="Events in one micro-batch at most.")
    batch_max_wait_ms: int = Field(
        20, ge=0, le=10_000, description="Milliseconds a micro-batch waits to fill before it is handled."
    )
    max_in_flight_events: int = Field(
        1_000, gt=0, description="Events read but not finished at most; the reader waits beyond this."
    )
    chunk_size: int = Field(
        1_000, gt=0, le=50_000, description="Recipients in one post.created message at most."
    )
    rewrite_concurrency: int = Field(
        16,
        gt=0,
        le=1_000,
        description="Profile changes whose posts are rewritten at once (update_many in flight); later "
        "changes wait.",
    )
    max_text_bytes: int = Field(
        256 * 1024, gt=0, description="Largest post text in bytes (UTF-8); larger posts are dead-lettered."
    )
    max_attempts: int = Field(
        5, gt=0, description="Tries of a transiently failing event before it is dead-lettered."
    )
    retry_max_seconds: float = Field(
        30.0, gt=0, description="Cap of the retry and reopen backoff, in seconds."
    )
    checkpoint_interval_seconds: float = Field(
        1.0, gt=0, description="Seconds between saves of a checkpoint that moved."
    )
    shutdown_deadline_seconds: float = Field(
        30.0,
        gt=0,
        description="Seconds to drain on SIGTERM before unfinished work is left for replay.",
    )
    on_history_lost: Literal["fail", "resume-from-now"] = Field(
        "fail",
        description="When a stream cannot resume (history lost, invalidate): fail (exit 4) or "
        "resume-from-now (record the gap and go on).",
    )
    first_start_lookback_seconds: float = Field(
        5.0,
        ge=0,
        le=3600,
        description="With no checkpoint at all, start this many seconds back (absorbs clock skew).",
    )


class LeaderSettings(Section):
    """``[leader]``: the lease that lets one worker tail while the others stand by."""

    enabled: bool = Field(True, description="Only the lease holder tails; the others wait as standbys.")
    name: str = Field(
        "fanout-worker",
        min_length=1,
        description="Lease document id: workers sharing it form one group with one leader.",
    )
    ttl_seconds: float = Field(
        15.0, gt=0, description="Lease lifetime in seconds: a dead leader's successor takes over within it."
    )
    renew_interval_seconds: float = Field(
        5.0,
        gt=0,
        description="Seconds between lease renewals; must be under half of ttl_seconds. A leader that "
        "cannot renew stops.",
    )

    @model_validator(mode="after")
    def _renew_well_within_ttl(self) -> LeaderSettings:
        if self.renew_interval_seconds * 2 >= self.ttl_seconds:
            raise ValueError("renew_interval_seconds must be less than half of ttl_seconds")
        return self


class HealthSettings(Section):
    """``[health]``: the /healthz, /readyz and /metrics listener and the liveness watchdog."""

    enabled: bool = Field(True, description="Serve /healthz, /readyz and /metrics.")
    # Loopback: exposing the listener is a decision (the container sets 0.0.0.0).
    host: str = Field("127.0.0.1", description='Listen address; "0.0.0.0" exposes it on every interface.')
    port: int = Field(9464, ge=0, le=65535, description="Listen port (0 picks a free one).")
    watchdog_seconds: float = Field(
        60.0,
        gt=0,
        description="Seconds without life (event loop, or a leader's stream neither progressing nor "
        "waiting) before /healthz fails and the systemd watchdog is starved.",
    )


class LogSettings(Section):
    """``[log]``: log level, format and the periodic summary line."""

    level: Literal["TRACE", "DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        "INFO", description="Lowest level logged (any case); --log-level overrides it."
    )
    format: Literal["auto", "text", "json"] = Field(
        "auto", description="text, json, or auto (text on a terminal, JSON otherwise)."
    )
    summary_interval_seconds: float = Field(
        60.0,
        ge=0,
        description="Seconds between one-line summaries (rates, lag, cache hits, in flight); 0 turns "
        "them off.",
    )

    @field_validator("level", mode="before")
    @classmethod
    def _upper(cls, value: Any) -> Any:
        return value.upper() if isinstance(value, str) else value


Role = Literal["all", "tailer", "fanout"]


class FanoutSettings(Section):
    """``[fanout]``: the job queues between the tailer and the fan-out workers (docs/jobs.md)."""

    role: Role = Field(
        "all",
        description="What this process runs: tailer (lease, streams, enrichment; emits jobs), fanout "
        "(consumes jobs, publishes chunks) or all; run --role overrides it.",
    )
    declare: bool = Field(
        True, description="Declare the job exchange and queues below at start (idempotent)."
    )
    exchange: str = Field(
        "fanout.jobs",
        min_length=1,
        description="Durable topic exchange of jobs; must differ from rabbitmq.exchange.",
    )
    ordinary_queue: str = Field(
        "fanout.jobs.ordinary",
        min_length=1,
        description='Quorum queue of posts whose followers fit one range (routing key "ordinary").',
    )
    bulk_queue: str = Field(
        "fanout.jobs.bulk",
        min_length=1,
        description='Quorum queue of the ranges of large fan-outs (routing key "bulk").',
    )
    deferred_queue: str = Field(
        "fanout.jobs.deferred",
        min_length=1,
        description='Delay queue (routing key "deferred"): its TTL sends jobs on to the bulk lane.',
    )
    dead_letter_exchange: str = Field(
        "fanout.jobs.dlx",
        min_length=1,
        description="Durable fanout exchange taking jobs past the delivery limit, malformed or failing.",
    )
    dead_letter_queue: str = Field(
        "fanout.jobs.dead",
        min_length=1,
        description="Quorum queue keeping dead jobs (x-death and x-fanout-error say why).",
    )
    # The repair lane (backfills, dead-letter replays); "" names it "<exchange>.backfill".
    backfill_queue: str = Field(
        "",
        description="Quorum queue of repair jobs (backfill, dead-letter replay); "
        "empty: '<exchange>.backfill'.",
    )
    backfill_prefetch: int = Field(
        2, gt=0, le=65_535, description="Repair jobs one worker holds unacknowledged (its concurrency there)."
    )
    ordinary_prefetch: int = Field(
        32,
        gt=0,
        le=65_535,
        description="Unacknowledged ordinary jobs one worker holds (its concurrency there).",
    )
    bulk_prefetch: int = Field(
        2,
        gt=0,
        le=65_535,
        description="Unacknowledged bulk ranges one worker holds per bulk shard (its concurrency there).",
    )
    bulk_shards: int = Field(
        4,
        ge=1,
        le=64,
        description="Queues of the bulk lane: each big post's ranges go to one, the next post's to the "
        "next, and workers consume them all, so concurrent big posts progress side by side.",
    )
    range_size: int = Field(
        10_000,
        gt=0,
        le=10_000_000,
        description="Follow edges per range (job); an author with more followers goes to the bulk lane.",
    )
    delivery_limit: int = Field(
        5,
        gt=0,
        le=1_000,
        description="Deliveries of a job beyond the first before it is dead-lettered (x-delivery-limit).",
    )
    defer_seconds: float = Field(
        30.0, gt=0, le=86_400, description="Seconds a deferred job waits in the delay queue (x-message-ttl)."
    )
    author_posts_per_second: float = Field(
        0.0,
        ge=0,
        description="Posts per second one author may make; beyond it (after the burst) posts are "
        "deferred, never dropped. 0 = no limit.",
    )
    author_burst: int = Field(
        20, gt=0, description="Posts an author may make at once before the rate applies."
    )

    @field_validator(
        "exchange",
        "ordinary_queue",
        "bulk_queue",
        "deferred_queue",
        "dead_letter_exchange",
        "dead_letter_queue",
        "backfill_queue",
    )
    @classmethod
    def _names(cls, value: str) -> str:
        return check_name(value)

    @model_validator(mode="after")
    def _distinct(self) -> FanoutSettings:
        shards = [f"{self.bulk_queue}.{k}" for k in range(1, self.bulk_shards)]
        queues = [self.ordinary_queue, self.bulk_queue, *shards, self.deferred_queue, self.dead_letter_queue]
        queues.append(self.backfill_queue or f"{self.exchange}.backfill")
        if len(set(queues)) < len(queues) or self.exchange == self.dead_letter_exchange:
            raise ValueError("the job queues, and the job exchange and its dead-letter exchange, must differ")
        return self
