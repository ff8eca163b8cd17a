"""The consumer-side RabbitMQ topology, declared at start so fan-out messages always have a queue.

Without a bound queue, RabbitMQ drops (and the publisher only logs) every ``post.created`` sent to a
fresh broker. ``declare_topology`` declares, idempotently:

- the main exchange: durable ``topic`` (as the publisher declares it);
- each configured queue with ``x-queue-type``, ``x-dead-letter-exchange`` and ``x-message-ttl``,
  bound to the main exchange with each of its routing keys;
- each dead-letter exchange named by a queue: durable ``fanout``, so every dead letter reaches
  the DLQ whatever its routing key (dead letters keep their original routing key and carry an
  ``x-death`` header saying which queue and why); plus a durable quorum queue ``{dlx}.queue``
  bound to it, so a dead letter is kept rather than dropped by an exchange with no queue.

A queue's or exchange's arguments cannot be changed by re-declaring it. When one already exists with
other arguments, RabbitMQ answers PRECONDITION_FAILED (406) and **closes the channel**; this raises
ConfigError naming it and saying how to resolve it. The channel is unusable afterwards: a caller
that goes on must open a fresh one. ``ensure_topology`` does all of that on its own connection.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Any, Literal, Self, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelPreconditionFailed
from aiormq.exceptions import ChannelAccessRefused
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from enrichment.errors import ConfigError, ServiceUnavailable

T = TypeVar("T")
DLQ_SUFFIX = ".queue"


def check_name(value: str) -> str:
    if value.startswith("amq."):
        raise ValueError("names starting with 'amq.' are reserved by RabbitMQ")
    if len(value.encode()) > 255:
        raise ValueError("RabbitMQ names are at most 255 bytes")
    return value


class QueueSpec(BaseModel):
    """One consumer queue bound to the fan-out exchange."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1)
    bindings: list[str] = Field(min_length=1)  # routing keys (topic patterns allowed)
    type: Literal["classic", "quorum"] = "quorum"
    durable: bool = True
    dead_letter_exchange: str | None = Field(None, min_length=1)
    message_ttl_ms: int | None = Field(None, ge=0)

    @field_validator("name", "dead_letter_exchange")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)

    @model_validator(mode="after")
    def _quorum_is_durable(self) -> Self:
        if self.type == "quorum" and not self.durable:
            raise ValueError(f"queue {self.name!r}: a quorum queue must be durable")
        return self

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": self.type}
        if self.dead_letter_exchange is not None:
            args["x-dead-letter-exchange"] = self.dead_letter_exchange
        if self.message_ttl_ms is not None:
            args["x-message-ttl"] = self.message_ttl_ms
        return args


def _default_queues() -> list[QueueSpec]:
    return [
        QueueSpec(name="fanout.post.created", bindings=["post.created"], dead_letter_exchange="fanout.dlx"),
        QueueSpec(
            name="fanout.profile.updated", bindings=["profile.updated"], dead_letter_exchange="fanout.dlx"
        ),
    ]


class TopologySettings(BaseModel):
    """``[topology]``: the queues declared at start (``declare = false`` leaves the broker alone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    declare: bool = True
    queues: list[QueueSpec] = Field(default_factory=_default_queues)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [q.name for q in self.queues]
        names += [f"{x}{DLQ_SUFFIX}" for x in self.dead_letter_exchanges()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"queue names must be unique (dead-letter queues included): {dupes}")
        return self

    def dead_letter_exchanges(self) -> list[str]:
        return sorted({q.dead_letter_exchange for q in self.queues if q.dead_letter_exchange})


async def _guard(
    kind: str, name: str, wanted: str, step: Awaitable[T], action: str = "declare", section: str = "topology"
) -> T:
    """Run one declare or bind; turn the broker's refusals into ConfigError naming the object."""
    try:
        return await step
    except ChannelPreconditionFailed as exc:
        if kind == "queue":
            delete = f"rabbitmqctl delete_queue -p VHOST {name}"
        else:
            delete = f"rabbitmqadmin -V VHOST delete exchange name={name}"
        raise ConfigError(
            f"RabbitMQ {kind} {name!r} already exists with different arguments (type, durability or "
            f"x-arguments) than the config asks for ({wanted}); the broker says: {exc}. To resolve it, "
            f"delete the existing {kind} (`{delete}`; a queue's messages are lost) so it is declared "
            f"anew, or change [{section}] in the config to match it. This channel is closed now; "
            f"open a fresh one before going on."
        ) from None
    except ChannelAccessRefused as exc:
        raise ConfigError(
            f"RabbitMQ refused to {action} {kind} {name!r}: {exc}. Grant the user the permissions "
            f"it needs (configure; read/write to bind), or set {section}.declare = false."
        ) from None


async def declare_topology(channel: AbstractChannel, exchange_name: str, topology: TopologySettings) -> None:
    """Declare the exchange, dead-letter exchanges and queues, and bind them. Idempotent.

    Does nothing when ``topology.declare`` is false. Raises ConfigError when something already
    exists with other arguments; the channel is then closed and the caller must open a new one.
    """
    if not topology.declare:
        return
    if exchange_name in topology.dead_letter_exchanges():
        raise ConfigError(
            f"topology: {exchange_name!r} is the fan-out exchange; it cannot be a dead-letter one"
        )
    exchange = await _guard(
        "exchange",
        exchange_name,
        "durable topic",
        channel.declare_exchange(exchange_name, aio_pika.ExchangeType.TOPIC, durable=True),
    )
    for dlx_name in topology.dead_letter_exchanges():
        dlx = await _guard(
            "exchange",
            dlx_name,
            "durable fanout",
            channel.declare_exchange(dlx_name, aio_pika.ExchangeType.FANOUT, durable=True),
        )
        dlq_name = f"{dlx_name}{DLQ_SUFFIX}"
        dlq_args: dict[str, Any] = {"x-queue-type": "quorum"}
        dlq = await _guard(
            "queue",
            dlq_name,
            f"durable, {dlq_args}",
            channel.declare_queue(dlq_name, durable=True, arguments=dlq_args),
        )
        await _guard("queue", dlq_name, f"bound to {dlx_name}", dlq.bind(dlx, routing_key=""), "bind")
    for spec in topology.queues:
        args = spec.arguments()
        wanted = f"{'durable' if spec.durable else 'transient'}, {args}"
        queue = await _guard(
            "queue", spec.name, wanted, channel.declare_queue(spec.name, durable=spec.durable, arguments=args)
        )
        for key in spec.bindings:
            await _guard(
                "queue", spec.name, f"bound to {key!r}", queue.bind(exchange, routing_key=key), "bind"
            )


async def ensure_topology(
    url: str, exchange_name: str, topology: TopologySettings, timeout_seconds: float
) -> None:
    """``declare_topology`` on a connection of its own, closed afterwards.

    Raises ServiceUnavailable when the broker cannot be reached, ConfigError on a mismatch.
    """
    if not topology.declare:
        return
    try:
        connection = await aio_pika.connect(url, timeout=timeout_seconds)
        async with connection:
            channel = await asyncio.wait_for(connection.channel(), timeout_seconds)
            await asyncio.wait_for(declare_topology(channel, exchange_name, topology), timeout_seconds)
    except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
        raise ServiceUnavailable(f"RabbitMQ is unreachable: {type(exc).__name__}") from None
