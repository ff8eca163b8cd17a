"""Operator commands: ``check``, ``checkpoint show|reset`` and ``config``."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
import redis.asyncio as aioredis
from pydantic import SecretStr
from pymongo import AsyncMongoClient
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from enrichment.errors import ConfigError, FanoutError
from worker.adapters.mongo_stores import MongoCheckpointStore, MongoLeaseStore
from worker.app import POSTS_STREAM, PROFILES_STREAM
from worker.ports import Checkpoint
from worker.settings import Settings, redact_url

STREAMS = (POSTS_STREAM, PROFILES_STREAM)


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str


def _mongo(settings: Settings) -> AsyncMongoClient[dict[str, Any]]:
    m = settings.mongo
    return AsyncMongoClient(
        m.uri.get_secret_value(), serverSelectionTimeoutMS=m.server_selection_timeout_ms, tz_aware=True
    )


async def check(settings: Settings) -> list[CheckResult]:
    """Reach every service the worker needs; never raises."""
    results = [CheckResult("config", True, "valid")]
    mongo = _mongo(settings)
    try:
        hello = await mongo.admin.command("hello")
        if hello.get("setName") or hello.get("msg") == "isdbgrid":
            results.append(CheckResult("mongodb", True, f"replica set {hello.get('setName', 'mongos')}"))
        else:
            results.append(CheckResult("mongodb", False, "not a replica set: change streams need one"))
    except PyMongoError as exc:
        results.append(CheckResult("mongodb", False, f"unreachable ({type(exc).__name__})"))
    finally:
        await mongo.close()
    redis = aioredis.Redis.from_url(
        settings.redis.url.get_secret_value(), socket_connect_timeout=2, socket_timeout=2
    )
    try:
        await redis.ping()
        results.append(CheckResult("redis", True, "PONG"))
    except (RedisError, OSError) as exc:
        results.append(CheckResult("redis", False, f"unreachable ({type(exc).__name__})"))
    finally:
        await redis.aclose()
    try:
        connection = await aio_pika.connect(
            settings.rabbitmq.url.get_secret_value(), timeout=settings.rabbitmq.confirm_timeout_seconds
        )
        await connection.close()
        results.append(CheckResult("rabbitmq", True, "connected"))
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        results.append(CheckResult("rabbitmq", False, f"unreachable ({type(exc).__name__})"))
    return results


def format_table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


def _stores(
    settings: Settings, mongo: AsyncMongoClient[dict[str, Any]]
) -> tuple[MongoCheckpointStore, MongoLeaseStore]:
    db = mongo[settings.mongo.database]
    return (
        MongoCheckpointStore(db[settings.mongo.checkpoints], db[settings.mongo.gaps]),
        MongoLeaseStore(db[settings.mongo.leases], settings.leader.name),
    )


async def show_checkpoints(settings: Settings) -> str:
    mongo = _mongo(settings)
    try:
        checkpoints, leases = _stores(settings, mongo)
        now = datetime.now(UTC)
        rows = [("stream", "saved at", "age", "last event at", "epoch", "position")]
        for stream in STREAMS:
            cp = await checkpoints.load(stream)
            if cp is None:
                rows.append((stream, "-", "-", "-", "-", "none: starts from now"))
                continue
            position = str(dict(cp.token))[:60] if cp.token else f"start at {cp.start_at}"
            rows.append(
                (
                    stream,
                    cp.saved_at.isoformat(timespec="seconds"),
                    f"{(now - cp.saved_at).total_seconds():.0f}s",
                    cp.event_time.isoformat(timespec="seconds") if cp.event_time else "-",
                    str(cp.epoch),
                    position,
                )
            )
        lines = [format_table(rows)]
        lease = await leases.current()
        if lease is not None:
            state = "live" if lease.expires_at > now else "expired"
            lines.append(
                f"\nlease: owner {lease.owner}, epoch {lease.epoch}, {state} until {lease.expires_at}"
            )
        for gap in await checkpoints.gaps():
            lines.append(f"gap: {gap.stream} from {gap.start} to {gap.end} ({gap.reason})")
        return "\n".join(lines)
    finally:
        await mongo.close()


async def reset_checkpoint(settings: Settings, stream: str, to: datetime, force: bool) -> str:
    """Point ``stream`` at ``to`` (an operator's answer to history loss). Events before are skipped."""
    if stream not in (*STREAMS, "all"):
        raise ConfigError(f"unknown stream {stream!r}: choose posts, profiles or all")
    mongo = _mongo(settings)
    try:
        checkpoints, leases = _stores(settings, mongo)
        lease = await leases.current()
        if lease is not None and lease.expires_at > datetime.now(UTC) and not force:
            raise FanoutError(
                f"worker {lease.owner} holds a live lease: stop the workers first (or pass --force); "
                "a running leader would overwrite the reset"
            )
        epoch = lease.epoch if lease is not None else 0
        done = []
        for name in STREAMS if stream == "all" else (stream,):
            # Delete first: a fenced save would refuse a lower epoch than the stored one.
            await checkpoints.delete(name)
            await checkpoints.save(Checkpoint(name, None, None, datetime.now(UTC), epoch, start_at=to))
            done.append(name)
        return f"reset {', '.join(done)} to start at {to.isoformat()}"
    finally:
        await mongo.close()


def effective_config(settings: Settings) -> str:
    """The settings as TOML, URLs shown without their passwords."""
    lines: list[str] = []
    for section, values in settings.model_dump().items():
        lines.append(f"[{section}]")
        for key, value in values.items():
            raw = getattr(getattr(settings, section), key)
            if isinstance(raw, SecretStr):
                value = redact_url(raw.get_secret_value())
            lines.append(f"{key} = {_toml(value)}")
        lines.append("")
    return "\n".join(lines)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
