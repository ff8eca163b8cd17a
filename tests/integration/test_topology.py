"""worker/messaging/topology against the real RabbitMQ: idempotence, routing, dead-lettering, mismatches.

Every test uses names of its own (uuid) and deletes whatever it created, on a fresh channel, since
the test's channel may have been closed by the broker (406).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aio_pika
import pytest
from aio_pika.abc import AbstractChannel, AbstractConnection
from aiormq.exceptions import ChannelPreconditionFailed
from loguru import logger
from pydantic import ValidationError

from enrichment.errors import ConfigError, ServiceUnavailable
from handlers.ports import OutgoingMessage
from tests.conftest import AMQP_URL, REDIS_URL
from tests.faults.daemon import job_names
from tests.support.wire_mongo import WireMongo
from worker.messaging.publisher import RabbitPublisher
from worker.messaging.topology import declare_topology, ensure_topology, verify_topology
from worker.topology_settings import QueueSpec, TopologySettings


@dataclass(frozen=True)
class Names:
    exchange: str
    post_queue: str
    profile_queue: str
    dlx: str

    @property
    def dlq(self) -> str:
        return f"{self.dlx}.queue"

    def topology(self, **post_queue: Any) -> TopologySettings:
        return TopologySettings(
            queues=[
                QueueSpec(
                    name=self.post_queue,
                    bindings=["post.created"],
                    dead_letter_exchange=self.dlx,
                    **post_queue,
                ),
                QueueSpec(
                    name=self.profile_queue, bindings=["profile.updated"], dead_letter_exchange=self.dlx
                ),
            ]
        )


@pytest.fixture
async def connection() -> AsyncIterator[AbstractConnection]:
    try:
        conn = await aio_pika.connect(AMQP_URL, timeout=5)
    except Exception as exc:  # aio-pika raises several kinds here
        pytest.fail(f"RabbitMQ is not reachable at {AMQP_URL} ({exc!r}); run scripts/ensure-services.sh")
    yield conn
    await conn.close()


@pytest.fixture
async def names(connection: AbstractConnection) -> AsyncIterator[Names]:
    tag = uuid.uuid4().hex[:10]
    n = Names(f"t.topo.{tag}", f"t.topo.{tag}.post", f"t.topo.{tag}.profile", f"t.topo.{tag}.dlx")
    yield n
    channel = await connection.channel()  # fresh: the test's channel may be closed
    for queue in (n.post_queue, n.profile_queue, n.dlq):
        await channel.queue_delete(queue)  # deleting a missing queue is a no-op
    for exchange in (n.exchange, n.dlx):
        await channel.exchange_delete(exchange)
    await channel.close()


async def redeclare_ok(connection: AbstractConnection, queue: str, **kwargs: Any) -> bool:
    """True when declaring ``queue`` exactly so is accepted: the broker checks equivalence."""
    channel = await connection.channel()
    try:
        await channel.declare_queue(queue, **kwargs)
    except ChannelPreconditionFailed:
        return False
    await channel.close()
    return True


async def exchange_redeclare_ok(
    connection: AbstractConnection, name: str, kind: aio_pika.ExchangeType
) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_exchange(name, kind, durable=True)
    except ChannelPreconditionFailed:
        return False
    await channel.close()
    return True


async def get_one(channel: AbstractChannel, queue: str, timeout: float = 5.0) -> Any:
    q = await channel.get_queue(queue, ensure=True)  # passive declare: it must exist
    deadline = asyncio.get_running_loop().time() + timeout
    while (message := await q.get(fail=False, no_ack=False)) is None:
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"no message arrived in {queue}")
        await asyncio.sleep(0.05)
    return message


async def publish(channel: AbstractChannel, exchange: str, key: str, message_id: str) -> None:
    ex = await channel.get_exchange(exchange, ensure=True)
    body = aio_pika.Message(
        b'{"x": 1}', message_id=message_id, delivery_mode=aio_pika.DeliveryMode.PERSISTENT
    )
    await ex.publish(body, key, mandatory=True, timeout=5)  # raises if unroutable


async def test_declaring_twice_is_idempotent_with_exactly_the_configured_arguments(
    connection: AbstractConnection, names: Names
) -> None:
    # Given a topology declared once
    channel = await connection.channel()
    await declare_topology(channel, names.exchange, names.topology(message_ttl_ms=60_000))

    # When it is declared again, on the same channel and on another
    await declare_topology(channel, names.exchange, names.topology(message_ttl_ms=60_000))
    await declare_topology(await connection.channel(), names.exchange, names.topology(message_ttl_ms=60_000))

    # Then nothing failed and the queues hold exactly the configured arguments (the broker accepts
    # an identical declaration and rejects one that differs in any argument)
    assert not channel.is_closed
    post_args = {"x-queue-type": "quorum", "x-dead-letter-exchange": names.dlx, "x-message-ttl": 60_000}
    assert await redeclare_ok(connection, names.post_queue, durable=True, arguments=post_args)
    assert not await redeclare_ok(
        connection, names.post_queue, durable=True, arguments={"x-queue-type": "quorum"}
    )
    profile_args = {"x-queue-type": "quorum", "x-dead-letter-exchange": names.dlx}
    assert await redeclare_ok(connection, names.profile_queue, durable=True, arguments=profile_args)
    assert await redeclare_ok(connection, names.dlq, durable=True, arguments={"x-queue-type": "quorum"})


async def test_post_created_lands_in_the_post_queue_and_profile_updated_in_the_profile_queue(
    connection: AbstractConnection, names: Names
) -> None:
    # Given the topology on a fresh broker (nothing else bound to the exchange)
    channel = await connection.channel(publisher_confirms=True)
    await declare_topology(channel, names.exchange, names.topology())

    # When one message of each routing key is published (mandatory: unroutable would raise)
    await publish(channel, names.exchange, "post.created", "post:p1:chunk:0")
    await publish(channel, names.exchange, "profile.updated", "profile:u1:v:2")

    # Then each sits in its own queue, once
    post_queue = await channel.declare_queue(names.post_queue, passive=True)
    assert post_queue.declaration_result.message_count == 1
    post = await get_one(channel, names.post_queue)
    assert (post.message_id, post.routing_key) == ("post:p1:chunk:0", "post.created")
    await post.ack()
    profile = await get_one(channel, names.profile_queue)
    assert (profile.message_id, profile.routing_key) == ("profile:u1:v:2", "profile.updated")
    await profile.ack()
    assert await (await channel.get_queue(names.post_queue)).get(fail=False) is None


async def test_a_rejected_message_goes_to_the_dead_letter_queue(
    connection: AbstractConnection, names: Names
) -> None:
    # Given the topology: the DLX is a durable fanout with a durable quorum queue bound to it
    channel = await connection.channel(publisher_confirms=True)
    await declare_topology(channel, names.exchange, names.topology())
    assert await exchange_redeclare_ok(connection, names.dlx, aio_pika.ExchangeType.FANOUT)
    assert not await exchange_redeclare_ok(connection, names.dlx, aio_pika.ExchangeType.TOPIC)
    assert await exchange_redeclare_ok(connection, names.exchange, aio_pika.ExchangeType.TOPIC)

    # When a consumer rejects a post without requeueing it (poison)
    await publish(channel, names.exchange, "post.created", "post:p9:chunk:0")
    message = await get_one(channel, names.post_queue)
    await message.reject(requeue=False)

    # Then it is in the dead-letter queue, with its routing key and the reason
    dead = await get_one(channel, names.dlq)
    assert dead.message_id == "post:p9:chunk:0"
    assert dead.routing_key == "post.created"
    death = dead.headers["x-death"][0]
    assert (death["queue"], death["reason"]) == (names.post_queue, "rejected")
    await dead.ack()


async def test_an_expired_message_is_dead_lettered(connection: AbstractConnection, names: Names) -> None:
    # Given a post queue whose messages live 50 ms
    channel = await connection.channel(publisher_confirms=True)
    await declare_topology(channel, names.exchange, names.topology(message_ttl_ms=50))

    # When a message is left unconsumed past that
    await publish(channel, names.exchange, "post.created", "post:p7:chunk:0")

    # Then it moves to the dead-letter queue as expired
    dead = await get_one(channel, names.dlq)
    assert dead.message_id == "post:p7:chunk:0"
    assert dead.headers["x-death"][0]["reason"] == "expired"
    await dead.ack()


@pytest.mark.parametrize(
    ("existing", "wanted"),
    [
        ({"x-queue-type": "classic"}, {}),  # declared classic first; the config says quorum
        ({"x-queue-type": "quorum"}, {"message_ttl_ms": 1000}),  # the config adds a TTL
    ],
    ids=["classic-vs-quorum", "ttl-added"],
)
async def test_an_existing_queue_with_other_arguments_is_a_config_error_naming_it(
    connection: AbstractConnection, names: Names, existing: dict[str, Any], wanted: dict[str, Any]
) -> None:
    # Given the post queue already exists with other arguments
    await (await connection.channel()).declare_queue(names.post_queue, durable=True, arguments=existing)

    # When the topology is declared
    channel = await connection.channel()
    with pytest.raises(ConfigError) as caught:
        await declare_topology(channel, names.exchange, names.topology(**wanted))

    # Then the error names the queue, says what is wrong and how to resolve it
    text = str(caught.value)
    assert repr(names.post_queue) in text
    assert "already exists with different arguments" in text
    assert f"delete_queue -p / {names.post_queue}" in text and "change [topology]" in text
    assert "PRECONDITION_FAILED" in text
    # and the channel is closed (the broker closes it on 406), the queue untouched, a fresh channel fine
    assert channel.is_closed
    assert await redeclare_ok(connection, names.post_queue, durable=True, arguments=existing)


async def test_an_existing_exchange_of_another_type_is_a_config_error_naming_it(
    connection: AbstractConnection, names: Names
) -> None:
    channel = await connection.channel()
    await channel.declare_exchange(names.exchange, aio_pika.ExchangeType.DIRECT, durable=True)
    with pytest.raises(
        ConfigError, match=f"exchange '{names.exchange}' already exists with different"
    ) as caught:
        await declare_topology(await connection.channel(), names.exchange, names.topology())
    # The line names both types, as the broker tells them
    assert "its type is 'direct', fanout-worker declares 'topic'" in str(caught.value)
    assert "\n" not in str(caught.value)


async def test_the_publishers_own_exchange_declaration_is_a_config_error_too(
    connection: AbstractConnection, names: Names
) -> None:
    # Given the exchange exists as a direct exchange
    await (await connection.channel()).declare_exchange(
        names.exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    publisher = RabbitPublisher(AMQP_URL, names.exchange, 8, 5.0, 1.0)
    # When the publisher connects, it is a configuration error naming both types, not "unreachable"
    with pytest.raises(ConfigError, match="its type is 'direct', fanout-worker declares 'topic'"):
        await publisher.connect()
    await publisher.close()


async def test_verify_creates_nothing_and_finds_every_mismatch(
    connection: AbstractConnection, names: Names
) -> None:
    # Given a broker where nothing of the topology exists: verify passes and creates nothing
    await verify_topology(connection, names.exchange, names.topology())
    assert not await exchange_exists(connection, names.exchange)
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await (await connection.channel()).declare_queue(names.post_queue, passive=True)

    # When the topology is declared as configured, verify passes
    await declare_topology(await connection.channel(), names.exchange, names.topology())
    await verify_topology(connection, names.exchange, names.topology())

    # Then a queue configured otherwise than it exists is named
    with pytest.raises(ConfigError, match=f"queue '{names.post_queue}' already exists"):
        await verify_topology(connection, names.exchange, names.topology(message_ttl_ms=5))


async def test_verify_checks_the_exchange_even_when_topology_is_not_declared(
    connection: AbstractConnection, names: Names
) -> None:
    await (await connection.channel()).declare_exchange(
        names.exchange, aio_pika.ExchangeType.FANOUT, durable=True
    )
    with pytest.raises(ConfigError, match="its type is 'fanout', fanout-worker declares 'topic'"):
        await verify_topology(connection, names.exchange, TopologySettings(declare=False))


async def exchange_exists(connection: AbstractConnection, name: str) -> bool:
    channel = await connection.channel()
    try:
        await channel.declare_exchange(name, passive=True)
    except aio_pika.exceptions.ChannelNotFoundEntity:
        return False
    await channel.close()
    return True


@pytest.fixture
def wire() -> Iterator[WireMongo]:
    with WireMongo() as wm:
        yield wm


def fanout_worker(command: str, exchange: str, mongo_uri: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("FANOUT_")}
    env.update(
        FANOUT_MONGO__URI=mongo_uri,
        FANOUT_MONGO__SERVER_SELECTION_TIMEOUT_MS="2000",
        FANOUT_REDIS__URL=REDIS_URL,
        FANOUT_RABBITMQ__URL=AMQP_URL,
        FANOUT_RABBITMQ__EXCHANGE=exchange,
        FANOUT_TOPOLOGY__DECLARE="false",  # the default queue names are shared: leave them alone
        **job_names(exchange),  # the job queues too: the test's own names, deleted afterwards
        FANOUT_HEALTH__ENABLED="false",
        FANOUT_LOG__FORMAT="text",
    )
    binary = Path(sys.executable).with_name("fanout-worker")
    config = Path(__file__).resolve().parents[2] / "config.toml"
    return subprocess.run(
        [str(binary), command, "--config", str(config)], env=env, capture_output=True, text=True, timeout=50
    )


async def test_run_and_check_report_an_exchange_of_another_type_as_a_config_error(
    connection: AbstractConnection, names: Names, wire: WireMongo
) -> None:
    # Given the fan-out exchange exists as a direct exchange
    await (await connection.channel()).declare_exchange(
        names.exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )

    # When the worker starts: exit 2 (not 3, which systemd would restart), one line naming both types
    started = await asyncio.to_thread(fanout_worker, "run", names.exchange, wire.uri)
    assert started.returncode == 2, started.stderr
    assert len(started.stderr.strip().splitlines()) == 1, started.stderr
    [line] = started.stderr.strip().splitlines()
    assert f"exchange '{names.exchange}'" in line
    assert "its type is 'direct', fanout-worker declares 'topic'" in line
    assert "Traceback" not in started.stderr

    # And check says FAIL with that line for RabbitMQ, and exits 2
    checked = await asyncio.to_thread(fanout_worker, "check", names.exchange, wire.uri)
    assert checked.returncode == 2, checked.stdout + checked.stderr
    [row] = [r for r in checked.stdout.splitlines() if r.startswith("rabbitmq")]
    assert "FAIL" in row
    assert f"exchange '{names.exchange}'" in row and "its type is 'direct'" in row


async def test_declare_false_leaves_the_broker_alone(connection: AbstractConnection, names: Names) -> None:
    await declare_topology(await connection.channel(), names.exchange, TopologySettings(declare=False))
    with pytest.raises(aio_pika.exceptions.ChannelNotFoundEntity):
        await (await connection.channel()).declare_queue(names.post_queue, passive=True)


async def test_ensure_topology_declares_on_its_own_connection(
    connection: AbstractConnection, names: Names
) -> None:
    await ensure_topology(AMQP_URL, names.exchange, names.topology(), 5.0)
    assert await redeclare_ok(connection, names.post_queue, passive=True)
    with pytest.raises(ConfigError, match=names.post_queue):  # a mismatch is not "unreachable"
        await ensure_topology(AMQP_URL, names.exchange, names.topology(type="classic"), 5.0)
    with pytest.raises(ServiceUnavailable):
        await ensure_topology("amqp://guest:guest@127.0.0.1:1/", names.exchange, names.topology(), 2.0)


def test_defaults_are_three_quorum_queues_with_a_dead_letter_exchange() -> None:
    topology = TopologySettings()
    assert topology.declare
    assert [(q.name, q.bindings, q.type, q.durable) for q in topology.queues] == [
        ("fanout.post.created", ["post.created"], "quorum", True),
        ("fanout.post.changes", ["post.updated", "post.deleted"], "quorum", True),
        ("fanout.profile.updated", ["profile.updated"], "quorum", True),
    ]
    assert topology.dead_letter_exchanges() == ["fanout.dlx"]


@pytest.mark.parametrize(
    ("spec", "error"),
    [
        ({"name": "q", "bindings": ["k"], "durable": False}, "quorum queue must be durable"),
        ({"name": "amq.q", "bindings": ["k"]}, "reserved"),
        ({"name": "q", "bindings": []}, "at least 1"),
        ({"name": "q", "bindings": ["k"], "message_ttl_ms": -1}, "greater than or equal to 0"),
        ({"name": "q", "bindings": ["k"], "exclusive": True}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_queue_specs_are_rejected(spec: dict[str, Any], error: str) -> None:
    with pytest.raises(ValidationError, match=error):
        QueueSpec.model_validate(spec)


def test_a_classic_queue_may_be_transient_and_names_must_be_unique() -> None:
    assert not QueueSpec(name="q", bindings=["k"], type="classic", durable=False).durable
    with pytest.raises(ValidationError, match="unique"):
        TopologySettings(queues=[QueueSpec(name="q", bindings=["a"]), QueueSpec(name="q", bindings=["b"])])
    with pytest.raises(ValidationError, match="unique"):  # collides with the DLQ of DLX "d"
        TopologySettings(queues=[QueueSpec(name="d.queue", bindings=["a"], dead_letter_exchange="d")])


async def test_an_exchange_of_another_type_mid_run_holds_publishes_and_logs_until_it_is_fixed(
    connection: AbstractConnection, names: Names
) -> None:
    # Given the exchange exists as direct when the publisher (re)connects mid-run
    await (await connection.channel()).declare_exchange(
        names.exchange, aio_pika.ExchangeType.DIRECT, durable=True
    )
    errors: list[str] = []
    sink = logger.add(lambda m: errors.append(m.record["message"]), level="ERROR")
    publisher = RabbitPublisher(AMQP_URL, names.exchange, 8, 5.0, 0.3)
    try:
        # When a message is sent, it is held (retried), not failed, and the reason is logged
        done = await publisher.send(OutgoingMessage("post.created", "post:p1:chunk:0", "p1", b"{}"))
        await asyncio.sleep(1.0)
        assert not done.done()
        assert any("its type is 'direct', fanout-worker declares 'topic'" in e for e in errors), errors
        # Then once the operator deletes the exchange, the publisher declares it and goes on
        await (await connection.channel()).exchange_delete(names.exchange)
        await asyncio.wait_for(done, 10)
    finally:
        logger.remove(sink)
        await publisher.close()
