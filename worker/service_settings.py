"""The ``[mongo]``, ``[redis]`` and ``[rabbitmq]`` settings: the services, their URLs (secrets,
validated without ever echoing them) and the base every section shares."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationInfo, field_validator

from worker import uris
from worker.topology_settings import no_bool_numbers


class Section(BaseModel):
    """A settings section: unknown keys refused, frozen, and a boolean is not a number."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    @field_validator("*", mode="before")
    @classmethod
    def _strict_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return no_bool_numbers(cls, value, info)


def _uri(check: Any, value: SecretStr) -> SecretStr:
    try:
        check(value.get_secret_value())
    except ValueError as exc:
        raise ValueError(str(exc)) from None  # the message names the problem, never the URI
    return value


class MongoSettings(Section):
    """``[mongo]``: the replica set, the collections read and the worker's own collections."""

    uri: SecretStr = Field(
        SecretStr("mongodb://127.0.0.1:27017/?replicaSet=rs0"),
        description="MongoDB URI of a replica set or mongos (change streams need one); a secret: put it "
        "in the environment.",
    )
    database: str = Field("social", min_length=1, description="Database holding every collection below.")
    posts: str = Field("posts", min_length=1, description="Collection of posts, watched for inserts.")
    profiles: str = Field(
        "profiles",
        min_length=1,
        description="Collection of profiles, watched for updates, replaces and deletes; the source of "
        "author snapshots.",
    )
    follows: str = Field(
        "follows",
        min_length=1,
        description="Follow edges {follower_id, followee_id}; needs the index {followee_id: 1, "
        "follower_id: 1}.",
    )
    checkpoints: str = Field(
        "fanout_checkpoints", min_length=1, description="Worker-owned: one resume position per stream."
    )
    dead_letters: str = Field(
        "fanout_dead_letters",
        min_length=1,
        description="Worker-owned: events that could not be handled, with the reason.",
    )
    gaps: str = Field(
        "fanout_gaps",
        min_length=1,
        description="Worker-owned: windows of history skipped after history loss (resume-from-now).",
    )
    leases: str = Field(
        "fanout_leases",
        min_length=1,
        description="Worker-owned: the leader lease {owner, epoch, expires_at}.",
    )
    server_selection_timeout_ms: int = Field(
        10_000, gt=0, description="Milliseconds to wait for a usable server before an operation fails."
    )
    max_await_time_ms: int = Field(
        1_000,
        gt=0,
        le=60_000,
        description="Milliseconds an idle change-stream getMore waits for events; also the idle "
        "checkpoint cadence.",
    )
    change_batch_size: int = Field(500, gt=0, description="Change-stream cursor batch size (events).")
    follower_batch_size: int = Field(
        1_000, gt=0, description="Follows cursor batch size (edges) while a range's followers are read."
    )
    # "split" needs $changeStreamSplitLargeEvent (MongoDB 7.0+, 6.0.9+): older servers fail as "fail".
    large_events: Literal["split", "fail", "skip"] = Field(
        "split",
        description="A change event over MongoDB's 16 MB limit: split (reassembled from fragments), "
        "fail (the worker exits 4), skip (dead-lettered without its document).",
    )

    @field_validator("uri")
    @classmethod
    def _valid_uri(cls, value: SecretStr) -> SecretStr:
        return _uri(uris.validate_mongo, value)


class RedisSettings(Section):
    """``[redis]``: the L2 snapshot cache and the invalidation channel."""

    url: SecretStr = Field(
        SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis URL for the L2 cache and invalidation pub/sub; a secret: put it in the "
        "environment.",
    )
    key_prefix: str = Field("fanout:", description="Prefix of every key and channel the worker uses.")
    ttl_seconds: int = Field(3_600, gt=0, description="Lifetime of a snapshot in Redis, in seconds.")
    ttl_jitter: float = Field(
        0.1,
        ge=0,
        lt=1,
        description="± fraction of the TTL added at random, so fills do not all expire together.",
    )
    negative_ttl_seconds: int = Field(
        30, gt=0, description='Lifetime of a cached "no such user" in Redis, in seconds.'
    )
    socket_timeout_seconds: float = Field(
        0.5, gt=0, description="Per-command timeout in seconds; a slower Redis counts as down."
    )
    max_connections: int = Field(
        32,
        gt=1,
        le=10_000,
        description="Connection pool size; commands beyond it wait for a free connection.",
    )
    pool_wait_seconds: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Longest wait for a free pooled connection, in seconds, before Redis counts as down.",
    )
    breaker_threshold: int = Field(
        3, gt=0, description="Consecutive Redis failures that open the circuit breaker (L2 skipped)."
    )
    breaker_cooldown_seconds: float = Field(
        5.0, gt=0, description="Seconds L2 is skipped once the breaker opens, before one trial call."
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: SecretStr) -> SecretStr:
        return _uri(uris.validate_redis, value)


class RabbitSettings(Section):
    """``[rabbitmq]``: the broker and the exchange consumer messages are published to."""

    url: SecretStr = Field(
        SecretStr("amqp://guest:guest@127.0.0.1:5672/"),
        description="AMQP URL of the broker; a secret: put it in the environment.",
    )
    exchange: str = Field(
        "social.fanout",
        min_length=1,
        description="Durable topic exchange of consumer messages (post.created, profile.updated), "
        "declared at start.",
    )
    publish_window: int = Field(
        256, gt=0, le=65_535, description="Publishes awaiting a broker confirm at most (per publisher)."
    )
    confirm_timeout_seconds: float = Field(
        10.0,
        gt=0,
        description="Seconds to wait for a publish's confirm; past it the worker reconnects and "
        "re-publishes. Also bounds connecting.",
    )
    reconnect_max_seconds: float = Field(
        30.0, gt=0, description="Cap of the reconnect backoff to RabbitMQ, in seconds."
    )

    @field_validator("url")
    @classmethod
    def _valid_url(cls, value: SecretStr) -> SecretStr:
        return _uri(uris.validate_amqp, value)
