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
ConfigError naming it, what differs (as the broker tells) and how to resolve it: a configuration
error (exit 2), never "unreachable". The channel is unusable afterwards: a caller that goes on must
open a fresh one. ``ensure_topology`` does all of that on its own connection; ``verify_topology``
(``fanout-worker check``) finds the same mismatches without creating anything.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

import aio_pika
from aio_pika.abc import AbstractChannel, AbstractConnection
from aio_pika.exceptions import CONNECTION_EXCEPTIONS, ChannelNotFoundEntity, ChannelPreconditionFailed
from aiormq.exceptions import ChannelAccessRefused

from enrichment.errors import ConfigError, ServiceUnavailable
from worker import uris
from worker.failures import cause
from worker.topology_settings import DLQ_SUFFIX, TopologySettings

T = TypeVar("T")
_INEQUIVALENT = re.compile(
    r"inequivalent arg '(?P<arg>[^']+)' for (?:exchange|queue) '.*' in vhost '(?P<vhost>.*)': "
    r"received (?P<received>.*) but current is (?P<current>.*)$"
)


def precondition_error(
    kind: str, name: str, wanted: str, reply: str, section: str = "topology"
) -> ConfigError:
    """One line for a 406 on declare: the object, what differs (as the broker tells), the remedy."""
    found = _INEQUIVALENT.search(reply)
    vhost = found.group("vhost") if found else "VHOST"
    if found:
        differs = (
            f"its {found.group('arg')} is {found.group('current')}, "
            f"fanout-worker declares {found.group('received')}"
        )
    else:
        differs = f"fanout-worker declares {wanted}"
    if kind == "queue":
        delete, change = f"rabbitmqctl delete_queue -p {vhost} {name}", f"change [{section}] to match it"
    else:
        delete = f"rabbitmqadmin -V {vhost} delete exchange name={name}"
        change = (
            "use another name in the config (rabbitmq.exchange or [topology])"
            if section == "topology"
            else f"use another name in [{section}]"
        )
    return ConfigError(
        f"RabbitMQ {kind} {name!r} already exists with different arguments: {differs} "
        f"(PRECONDITION_FAILED). Delete it (`{delete}`; a queue's messages are lost) so it is "
        f"declared anew, or {change}."
    )


async def guard(
    kind: str, name: str, wanted: str, step: Awaitable[T], action: str = "declare", section: str = "topology"
) -> T:
    """Run one declare or bind; turn the broker's refusals into ConfigError naming the object.

    A refusal closes the channel: a caller that goes on must open a fresh one.
    """
    try:
        return await step
    except ChannelPreconditionFailed as exc:
        raise precondition_error(kind, name, wanted, str(exc), section) from None
    except ChannelAccessRefused as exc:
        raise ConfigError(
            f"RabbitMQ refused to {action} {kind} {name!r}: {exc}. Grant the user the permissions "
            f"it needs (configure; read/write to bind), or set {section}.declare = false."
        ) from None


@dataclass(frozen=True)
class Declaration:
    kind: Literal["exchange", "queue"]
    name: str
    wanted: str
    declare: Callable[[AbstractChannel], Awaitable[Any]]  # the active declare

    async def exists(self, channel: AbstractChannel) -> bool:
        """A passive declare; a missing object closes the channel."""
        try:
            if self.kind == "exchange":
                await channel.declare_exchange(self.name, passive=True)
            else:
                await channel.declare_queue(self.name, passive=True)
        except ChannelNotFoundEntity:
            return False
        return True


def exchange_declaration(name: str, kind: aio_pika.ExchangeType) -> Declaration:
    return Declaration(
        "exchange",
        name,
        f"durable {kind.value}",
        lambda channel: channel.declare_exchange(name, kind, durable=True),
    )


def queue_declaration(name: str, durable: bool, args: dict[str, Any]) -> Declaration:
    return Declaration(
        "queue",
        name,
        f"{'durable' if durable else 'transient'}, {args}",
        lambda channel: channel.declare_queue(name, durable=durable, arguments=args),
    )


def _declarations(exchange_name: str, topology: TopologySettings) -> list[Declaration]:
    plan = [exchange_declaration(exchange_name, aio_pika.ExchangeType.TOPIC)]
    for dlx_name in topology.dead_letter_exchanges():
        plan.append(exchange_declaration(dlx_name, aio_pika.ExchangeType.FANOUT))
        plan.append(queue_declaration(f"{dlx_name}{DLQ_SUFFIX}", True, {"x-queue-type": "quorum"}))
    plan += [queue_declaration(spec.name, spec.durable, spec.arguments()) for spec in topology.queues]
    return plan


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
    declared = {}
    for item in _declarations(exchange_name, topology):
        declared[item.name] = await guard(item.kind, item.name, item.wanted, item.declare(channel))
    for dlx_name in topology.dead_letter_exchanges():
        dlq_name = f"{dlx_name}{DLQ_SUFFIX}"
        bind = declared[dlq_name].bind(declared[dlx_name], routing_key="")
        await guard("queue", dlq_name, f"bound to {dlx_name}", bind, "bind")
    for spec in topology.queues:
        for key in spec.bindings:
            bind = declared[spec.name].bind(declared[exchange_name], routing_key=key)
            await guard("queue", spec.name, f"bound to {key!r}", bind, "bind")


async def verify_topology(
    connection: AbstractConnection, exchange_name: str, topology: TopologySettings
) -> None:
    """Raise ConfigError if the exchange or a configured queue exists with other arguments.

    Creates nothing: what is missing is left for ``run`` to declare. What exists is declared
    again with the worker's arguments, a no-op unless they differ.
    """
    plan = _declarations(exchange_name, topology)
    await verify_declarations(connection, plan if topology.declare else plan[:1])


async def verify_declarations(
    connection: AbstractConnection, plan: list[Declaration], section: str = "topology"
) -> None:
    """``verify_topology`` for any plan of declarations (the job queues' too). Each probe has its
    own channel, since the broker closes a channel on 404 and 406."""
    for item in plan:
        probe = await connection.channel()
        if not await item.exists(probe):
            continue
        await probe.close()
        channel = await connection.channel()
        await guard(item.kind, item.name, item.wanted, item.declare(channel), section=section)
        await channel.close()


async def ensure_topology(
    url: str, exchange_name: str, topology: TopologySettings, timeout_seconds: float
) -> None:
    """``declare_topology`` on a connection of its own, closed afterwards.

    Raises ServiceUnavailable when the broker cannot be reached, ConfigError on a mismatch.
    """
    if topology.declare:
        await declare_on_own_connection(
            url, timeout_seconds, lambda channel: declare_topology(channel, exchange_name, topology)
        )


async def declare_on_own_connection(
    url: str, timeout_seconds: float, declare: Callable[[AbstractChannel], Awaitable[None]]
) -> None:
    """Run ``declare`` on a channel of a connection of its own, closed afterwards. Raises
    ServiceUnavailable (host:port and cause) when the broker cannot be reached."""
    try:
        connection = await aio_pika.connect(url, timeout=timeout_seconds)
        async with connection:
            channel = await asyncio.wait_for(connection.channel(), timeout_seconds)
            await asyncio.wait_for(declare(channel), timeout_seconds)
    except (TimeoutError, *CONNECTION_EXCEPTIONS) as exc:
        where = uris.validate_amqp(url).endpoints()
        raise ServiceUnavailable(f"RabbitMQ is unreachable: {where}: {cause(exc)}") from None
