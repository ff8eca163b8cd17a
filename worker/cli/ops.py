"""Operator commands: ``check``, ``checkpoint show|reset`` and ``config``."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from contextlib import AsyncExitStack
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import aio_pika
from pydantic import SecretStr
from pymongo.errors import PyMongoError
from redis.exceptions import RedisError

from enrichment.errors import ConfigError, FanoutError
from worker import uris, wiring
from worker.failures import cause
from worker.messaging.jobs import verify_job_topology
from worker.messaging.topology import verify_topology
from worker.observe.logs import redact
from worker.ports import Checkpoint
from worker.settings import Settings
from worker.streams import NAMES as STREAMS


@dataclass(frozen=True)
class CheckResult:
    name: str
    ok: bool
    detail: str
    config_error: bool = False  # a FAIL the operator fixes in the configuration (exit 2)


def _at(parts: uris.Parts, exc: BaseException) -> str:
    return f"{parts.endpoints()}: {cause(exc)}"


async def check(settings: Settings) -> list[CheckResult]:
    """Reach every service the worker needs; never raises. Details name host:port and the cause."""
    results = [CheckResult("config", True, "valid")]
    async with AsyncExitStack() as stack:
        mongo = wiring.open_mongo(settings, stack)
        where = uris.validate_mongo(settings.mongo.uri.get_secret_value())
        try:
            hello = await mongo.admin.command("hello")
            if hello.get("setName") or hello.get("msg") == "isdbgrid":
                results.append(CheckResult("mongodb", True, f"replica set {hello.get('setName', 'mongos')}"))
            else:
                results.append(CheckResult("mongodb", False, "not a replica set: change streams need one"))
        except PyMongoError as exc:
            results.append(CheckResult("mongodb", False, _at(where, exc)))
        if settings.fanout.role != "fanout":  # a fan-out worker has no cache: it needs no Redis
            redis = wiring.open_redis(settings, stack)
            where = uris.validate_redis(settings.redis.url.get_secret_value())
            try:
                await redis.ping()
                results.append(CheckResult("redis", True, "PONG"))
            except (RedisError, OSError) as exc:
                results.append(CheckResult("redis", False, _at(where, exc)))
    results.append(await _check_rabbitmq(settings))
    return results


async def _check_rabbitmq(settings: Settings) -> CheckResult:
    q = settings.rabbitmq
    where = uris.validate_amqp(q.url.get_secret_value())
    try:
        connection = await aio_pika.connect(q.url.get_secret_value(), timeout=q.confirm_timeout_seconds)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        return CheckResult("rabbitmq", False, _at(where, exc))
    try:
        async with asyncio.timeout(q.confirm_timeout_seconds):
            await verify_topology(connection, q.exchange, settings.topology)
            await verify_job_topology(connection, settings.fanout)
    except ConfigError as exc:
        return CheckResult("rabbitmq", False, str(exc), config_error=True)
    except (OSError, TimeoutError, aio_pika.exceptions.AMQPError) as exc:
        return CheckResult("rabbitmq", False, _at(where, exc))
    finally:
        await connection.close()
    return CheckResult("rabbitmq", True, "connected; no exchange or queue conflicts with the config")


def format_table(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows)


async def show_checkpoints(settings: Settings) -> str:
    async with AsyncExitStack() as stack:
        checkpoints, leases = wiring.checkpoint_stores(settings, wiring.open_mongo(settings, stack))
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


async def reset_checkpoint(settings: Settings, stream: str, to: datetime, force: bool) -> str:
    """Point ``stream`` at ``to`` (an operator's answer to history loss). Events before are skipped."""
    if stream not in (*STREAMS, "all"):
        raise ConfigError(f"unknown stream {stream!r}: choose posts, profiles or all")
    async with AsyncExitStack() as stack:
        checkpoints, leases = wiring.checkpoint_stores(settings, wiring.open_mongo(settings, stack))
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


def effective_config(settings: Settings) -> str:
    """The settings as TOML that ``--config`` reads back, credentials masked."""
    lines: list[str] = []
    for section, values in settings.model_dump(exclude_none=True).items():
        raw = getattr(settings, section)
        tables = {k: v for k, v in values.items() if _is_table_list(v)}
        lines.append(f"[{section}]")
        for key, value in values.items():
            if key in tables:
                continue
            secret = getattr(raw, key)
            if isinstance(secret, SecretStr):
                value = redact(secret.get_secret_value())
            lines.append(f"{key} = {_toml(value)}")
        lines.append("")
        for key, rows in tables.items():
            for row in rows:  # an array of tables: [[section.key]]
                lines.append(f"[[{section}.{key}]]")
                lines += [f"{k} = {_toml(v)}" for k, v in row.items()]
                lines.append("")
    return "\n".join(lines)


def _is_table_list(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(v, dict) for v in value)


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)  # inf and nan are TOML too
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{json.dumps(k)} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(str(value))  # JSON's string escapes are valid in a TOML basic string
