"""Cross-replica L1 invalidation over Redis pub/sub.

Pub/sub is fire-and-forget: a replica whose subscription drops may miss messages. So every
(re)subscription first clears that replica's L1 (``on_gap``); L2 and the source stay authoritative.
"""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from collections.abc import Sequence

import orjson
import redis.asyncio as aioredis
from loguru import logger
from redis.exceptions import RedisError

from enrichment.backoff import Backoff
from enrichment.ports import OnGap, OnInvalidate


def _decode(data: bytes | str, own_origin: str) -> tuple[str, int] | None:
    try:
        msg = orjson.loads(data)
        if msg["o"] == own_origin:
            return None
        return str(msg["u"]), int(msg["v"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        logger.warning("ignoring a malformed invalidation message")
        return None


class RedisInvalidationBus:
    def __init__(
        self,
        client: aioredis.Redis,
        channel: str,
        origin: str | None = None,
        max_backoff_seconds: float = 10.0,
    ) -> None:
        self._client = client
        self._channel = channel
        self.origin = origin or uuid.uuid4().hex
        self._backoff = Backoff(0.1, max_backoff_seconds)
        self.published = 0
        self.received = 0
        self.gaps = 0

    async def publish_many(self, changes: Sequence[tuple[str, int]]) -> bool:
        if not changes:
            return True
        try:
            # One message per change, as replicas of every version read them, pipelined: one round
            # trip and one pooled connection for a whole storm of edits.
            async with self._client.pipeline(transaction=False) as pipe:
                for user_id, version in changes:
                    pipe.publish(self._channel, orjson.dumps({"u": user_id, "v": version, "o": self.origin}))
                await pipe.execute()
            self.published += len(changes)
            return True
        except (RedisError, OSError) as exc:
            # Other replicas may still be subscribed (a pool wait or a timeout here): they must be
            # told, so the caller retries.
            logger.warning(
                "could not publish {} invalidation(s), e.g. for {}: {}",
                len(changes),
                changes[0][0],
                type(exc).__name__,
            )
            return False

    async def run(self, on_invalidate: OnInvalidate, on_gap: OnGap) -> None:
        while True:
            pubsub = self._client.pubsub(ignore_subscribe_messages=True)
            try:
                await pubsub.subscribe(self._channel)
                # Anything published while we were not subscribed is lost: start L1 afresh.
                on_gap()
                self.gaps += 1
                self._backoff.reset()
                while True:
                    message = await pubsub.get_message(timeout=1.0)
                    if message is None or message.get("type") != "message":
                        continue
                    decoded = _decode(message["data"], self.origin)
                    if decoded is not None:
                        self.received += 1
                        on_invalidate(*decoded)
            except (RedisError, OSError) as exc:
                delay = self._backoff.next_delay()
                logger.warning(
                    "invalidation subscription lost ({}); retrying in {:.1f}s",
                    type(exc).__name__,
                    delay,
                )
                await asyncio.sleep(delay)
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
