"""Shared fixtures. Integration tests use the real Redis and RabbitMQ on 127.0.0.1.

A missing service FAILS the test (locally and in CI); ``make test`` starts them first.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import AsyncIterator, Iterator

import pytest
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from tests.harness import Collector

REDIS_URL = os.environ.get("FANOUT_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
AMQP_URL = os.environ.get("FANOUT_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")


@pytest.fixture
def unique() -> str:
    return uuid.uuid4().hex[:10]


@pytest.fixture
async def redis(unique: str) -> AsyncIterator[aioredis.Redis]:
    client = aioredis.Redis.from_url(REDIS_URL, socket_timeout=2)
    try:
        await client.ping()
    except (RedisError, OSError) as exc:
        await client.aclose()
        pytest.fail(f"Redis is not reachable at {REDIS_URL} ({exc}); run scripts/ensure-services.sh")
    yield client
    keys = [k async for k in client.scan_iter(match=f"t{unique}:*")]
    if keys:
        await client.delete(*keys)
    await client.aclose()


@pytest.fixture
def key_prefix(unique: str) -> str:
    return f"t{unique}:"


@pytest.fixture
def exchange(unique: str) -> Iterator[str]:
    """The test's own exchange name; afterwards it is deleted with the job queues named after it."""
    name = f"test.fanout.{unique}"
    yield name
    asyncio.run(_delete_exchange(name))


@pytest.fixture
async def collector(exchange: str) -> AsyncIterator[Collector]:
    try:
        c = await Collector.start(AMQP_URL, exchange)
    except Exception as exc:  # aio-pika raises several kinds here
        pytest.fail(f"RabbitMQ is not reachable at 127.0.0.1:5672 ({exc!r}); run scripts/ensure-services.sh")
    yield c
    await c.close()


async def _delete_exchange(name: str) -> None:
    """Delete a test daemon's exchange and the job queues named after it (tests/faults/daemon.py)."""
    import aio_pika

    connection = await aio_pika.connect(AMQP_URL, timeout=5)
    channel = await connection.channel()
    await channel.exchange_delete(name)
    shards = [f"bulk.{k}" for k in range(1, 16)]  # the bulk lane's shards (tests use fewer than 16)
    for suffix in ("ordinary", "bulk", *shards, "deferred", "dead", "backfill"):
        await channel.queue_delete(f"{name}.jobs.{suffix}")
    await channel.exchange_delete(f"{name}.jobs")
    await channel.exchange_delete(f"{name}.jobs.dlx")
    await connection.close()


@pytest.fixture
def daemon_exchange(unique: str) -> Iterator[str]:
    """An exchange for a real daemon process to declare; deleted afterwards (sync tests)."""
    name = f"test.daemon.{unique}"
    yield name
    asyncio.run(_delete_exchange(name))
