"""L2: snapshots in Redis. One MGET per batch to read, one script call per batch to write.

Every write goes through a Lua script that keeps the stored value when its ``version`` is the same
or newer, so a slow reader cannot put an old snapshot over a new one (the "stale set" problem).
Failures never propagate: the cache degrades to L1 plus the source, behind a circuit breaker.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Sequence

import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisError

from enrichment.breaker import CircuitBreaker
from enrichment.snapshot import MISSING_VERSION, AuthorSnapshot, decode_cached, encode_missing

# KEYS: the keys. ARGV: payload, ttl seconds, version, repeated once per key.
# Returns, per key, a status and the version Redis holds after the call: WRITTEN, KEPT (a same or
# newer version was there) or KEPT_OTHER (the same version with other content: an edit that did
# not bump the version).
_SET_IF_NEWER = """
local out = {}
for i, key in ipairs(KEYS) do
  local payload = ARGV[3 * i - 2]
  local ttl = tonumber(ARGV[3 * i - 1])
  local version = tonumber(ARGV[3 * i])
  local status = 1
  local held = version
  -- pcall: a key of another type (written by something else) is overwritten, not a failed batch.
  local current = redis.pcall('GET', key)
  if type(current) == 'string' then
    local ok, doc = pcall(cjson.decode, current)
    if ok and type(doc) == 'table' and tonumber(doc['version']) ~= nil
        and tonumber(doc['version']) >= version then
      held = tonumber(doc['version'])
      status = 0
      if held == version and current ~= payload then
        status = 2
      end
    end
  end
  if status == 1 then
    redis.call('SET', key, payload, 'EX', ttl)
  end
  out[2 * i - 1] = status
  out[2 * i] = held
end
return out
"""
KEPT, WRITTEN, KEPT_OTHER = 0, 1, 2

# A deleted profile: a "no such user" entry whose version is the highest known (the one given or
# the one stored), so the set-if-newer script refuses fills that read the profile before the delete.
# KEYS: the keys. ARGV: version, ttl seconds, repeated once per key. Returns the versions stored.
_TOMBSTONE = """
local out = {}
for i, key in ipairs(KEYS) do
  local version = tonumber(ARGV[2 * i - 1])
  local current = redis.pcall('GET', key)
  if type(current) == 'string' then
    local ok, doc = pcall(cjson.decode, current)
    if ok and type(doc) == 'table' and tonumber(doc['version']) ~= nil
        and tonumber(doc['version']) > version then
      version = tonumber(doc['version'])
    end
  end
  redis.call('SET', key, '{"missing":true,"deleted":true,"version":' .. string.format('%d', version) .. '}',
             'EX', tonumber(ARGV[2 * i]))
  out[i] = version
end
return out
"""


class RedisLayer:
    """Batch reads and version-guarded batch writes of snapshots in Redis."""

    def __init__(
        self,
        client: aioredis.Redis,
        key_prefix: str,
        ttl_seconds: int,
        ttl_jitter: float,
        negative_ttl_seconds: int,
        breaker: CircuitBreaker,
        rng: random.Random | None = None,
    ) -> None:
        self._client = client
        self._prefix = key_prefix
        self._ttl = ttl_seconds
        self._jitter = ttl_jitter
        self._negative_ttl = negative_ttl_seconds
        self._breaker = breaker
        self._rng = rng or random.Random()
        self._script = client.register_script(_SET_IF_NEWER)
        self._tombstone = client.register_script(_TOMBSTONE)
        self.mget_calls = 0
        self.errors = 0

    @property
    def available(self) -> bool:
        return not self._breaker.is_open

    def key(self, user_id: str) -> str:
        return f"{self._prefix}snap:{user_id}"

    async def get_many(self, user_ids: Sequence[str]) -> dict[str, AuthorSnapshot | None]:
        """Hits only; a None value is a cached 'no such user'. An unavailable Redis yields no hits."""
        if not user_ids or not self._breaker.allow():
            return {}
        self.mget_calls += 1
        try:
            raw = await self._client.mget([self.key(u) for u in user_ids])
        except (RedisError, OSError) as exc:
            self._failed("MGET", exc)
            return {}
        except asyncio.CancelledError:
            self._breaker.abandon()  # a cancelled half-open trial must not keep L2 off for good
            raise
        self._recovered()
        hits: dict[str, AuthorSnapshot | None] = {}
        for user_id, value in zip(user_ids, raw, strict=True):
            if value is None:
                continue
            try:
                hits[user_id] = decode_cached(value)
            except ValueError as exc:
                # A corrupt entry is a miss; the fill overwrites it.
                logger.warning("L2 entry for {} is unreadable, treating as a miss: {}", user_id, exc)
        return hits

    async def put_many(self, values: Sequence[tuple[str, AuthorSnapshot | None]]) -> int | None:
        """Write each value unless Redis holds a same-or-newer version.

        Returns how many were written, or None when Redis could not be written at all.
        """
        checked = await self.put_many_checked(values)
        return None if checked is None else sum(status == WRITTEN for status, _ in checked)

    async def put_many_checked(
        self, values: Sequence[tuple[str, AuthorSnapshot | None]]
    ) -> list[tuple[int, int]] | None:
        """``put_many`` saying, per value, (WRITTEN, KEPT or KEPT_OTHER, the version Redis holds)."""
        if not values:
            return []
        if not self._breaker.allow():
            return None
        keys: list[str] = []
        args: list[bytes | int] = []
        for user_id, snap in values:
            keys.append(self.key(user_id))
            if snap is None:
                args += [encode_missing(), self._negative_ttl, MISSING_VERSION]
            else:
                args += [snap.to_json(), self._jittered_ttl(), snap.version]
        try:
            written = await self._script(keys=keys, args=args)
        except (RedisError, OSError) as exc:
            self._failed("set-if-newer", exc)
            return None
        except asyncio.CancelledError:
            self._breaker.abandon()
            raise
        self._recovered()
        return [(int(written[i]), int(written[i + 1])) for i in range(0, len(written), 2)]

    async def put_tombstones(self, values: Sequence[tuple[str, int]]) -> list[int] | None:
        """Mark each user deleted, at least at the given version; the versions stored, or None when
        Redis could not be written."""
        if not values:
            return []
        if not self._breaker.allow():
            return None
        args: list[int] = []
        for _, version in values:
            args += [version, self._negative_ttl]
        try:
            stored = await self._tombstone(keys=[self.key(u) for u, _ in values], args=args)
        except (RedisError, OSError) as exc:
            self._failed("tombstone", exc)
            return None
        except asyncio.CancelledError:
            self._breaker.abandon()
            raise
        self._recovered()
        return [int(v) for v in stored]

    def _jittered_ttl(self) -> int:
        # Spread expiries so a burst of fills does not expire (and miss) all at once.
        spread = self._ttl * self._jitter
        return max(1, round(self._ttl + self._rng.uniform(-spread, spread)))

    def _failed(self, op: str, exc: BaseException) -> None:
        self.errors += 1
        if self._breaker.failure():
            logger.warning(
                "Redis {} failed ({}); L2 disabled for now, serving from L1 and the source",
                op,
                type(exc).__name__,
            )

    def _recovered(self) -> None:
        if self._breaker.success():
            logger.info("Redis answers again; L2 re-enabled")
