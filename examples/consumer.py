"""An example consumer of fanout-worker's messages: home-feed inboxes and profile copies in Redis.

    python examples/consumer.py --queue fanout.post.created
    python examples/consumer.py --queue fanout.post.changes
    python examples/consumer.py --queue fanout.profile.updated

Environment: AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/), REDIS_URL (default
redis://127.0.0.1:6379/0). See docs/consumers.md for the walkthrough.

What it shows:

- **Manual ack, after our own work is done.** A crash before the ack gets the message redelivered;
  nothing is lost. ``prefetch_count`` bounds the unacknowledged messages (and so the concurrent
  handlers: aio-pika runs one task per delivered message).
- **De-duplication by ``message_id``.** fanout-worker delivers at least once: after its crash or
  restart, messages are re-published under the same ``message_id`` with the same content, and
  RabbitMQ does not de-duplicate. We skip a message whose id is marked done in Redis
  (``SET key fingerprint NX EX ttl``, shared by the whole consumer fleet, bounded by the TTL; the
  fingerprint of its recipients covers a replay whose chunks shifted, see ``fingerprint``).
- **Mark done only after the work succeeded, and make the work idempotent.** Claiming the id
  *before* the work (SET NX as a lock) would lose the message if we crashed between the claim and
  the work: the redelivery would find the id taken and skip it. Marking after instead leaves a race:
  two consumers may both receive copies of one message, both see "not done" and both do the work.
  That is harmless because the work itself is idempotent (ZADD NX; a version-guarded write), so
  the marker is an optimisation that skips repeated work, and correctness never depends on it.
- **Poison goes to the dead-letter exchange.** A body that cannot be parsed, or a message that
  keeps failing, is rejected with ``requeue=False``; the queue's ``x-dead-letter-exchange``
  (declared by fanout-worker's topology) routes it to the dead-letter queue for inspection.
  Transient failures (Redis down) are requeued, up to MAX_DELIVERIES.
- **Tombstones for deleted posts.** A ``post.deleted`` can overtake chunks of the post's
  ``post.created``; the delete removes the post from its recipients' feeds and leaves a tombstone
  that later creation chunks respect (one Lua script each, so neither can interleave the other).

Importing this module has no side effects.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import logging
import os
import signal
import time
from datetime import datetime
from typing import Any

import aio_pika
import redis.asyncio as aioredis
from aio_pika.abc import AbstractIncomingMessage

log = logging.getLogger("consumer")

# How long a "done" marker lives. It must outlast the time between two copies of one message: a
# replay comes after fanout-worker restarts (seconds to minutes), but the first copy may have sat
# in a backlog for longer. Past the TTL a duplicate is simply processed again (idempotently).
DONE_TTL_SECONDS = 24 * 3600
# Quorum queues count deliveries in the x-delivery-count header; past this the message is poison.
MAX_DELIVERIES = 5
FEED_LENGTH = 500  # entries kept per home feed

# Store a profile only if its version is newer than the one held: profile.updated may skip
# versions and arrive out of order, so "newer wins" is the only safe rule. Idempotent.
NEWER_PROFILE = """
local held = redis.call('HGET', KEYS[1], 'version')
if held and tonumber(held) >= tonumber(ARGV[1]) then return 0 end
redis.call('HSET', KEYS[1], 'version', ARGV[1], 'json', ARGV[2])
return 1
"""


# A post's tombstone outlives any copy of its creation still on its way (like the done markers).
TOMBSTONE_TTL_SECONDS = DONE_TTL_SECONDS
# Add a post to its recipients' feeds unless it was deleted: KEYS = tombstone, feeds; ARGV = id,
# score, feed length. NX: a replay changes nothing.
ADD_UNLESS_DELETED = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
for i = 2, #KEYS do
  redis.call('ZADD', KEYS[i], 'NX', ARGV[2], ARGV[1])
  redis.call('ZREMRANGEBYRANK', KEYS[i], 0, -tonumber(ARGV[3]) - 1)
end
return 1
"""
# Tombstone a post and take it out of its recipients' feeds: KEYS = tombstone, feeds; ARGV = id, ttl.
DELETE_POST = """
redis.call('SET', KEYS[1], '1', 'EX', ARGV[2])
for i = 2, #KEYS do redis.call('ZREM', KEYS[i], ARGV[1]) end
return 1
"""


class Poison(Exception):
    """A message that can never be processed: reject it to the dead-letter exchange."""


def parse(message: AbstractIncomingMessage) -> dict[str, Any]:
    """The body, checked enough to rely on. (The full contract is in schemas/.)"""
    if not message.message_id:
        raise Poison("no message_id")
    try:
        body = json.loads(message.body)
    except ValueError as exc:
        raise Poison(f"body is not JSON: {exc}") from None
    # post.created v2 (chunks of follower ranges); v1 while older workers drain during an upgrade.
    known = {
        "post.created": (1, 2),
        "post.updated": (1,),
        "post.deleted": (1,),
        "profile.updated": (1,),
    }.get(message.routing_key or "", ())
    if not isinstance(body, dict) or body.get("schema") not in known:
        raise Poison("unknown body schema")  # a future version goes to the DLQ rather than be misread
    if body.get("type") != message.routing_key:
        raise Poison(f"type {body.get('type')!r} does not match routing key {message.routing_key!r}")
    return body


def fingerprint(body: dict[str, Any]) -> bytes:
    """What makes two copies of one ``message_id`` interchangeable: their recipients.

    A replay carries the same recipients under the same id, unless the author's followers changed
    between the first try and the replay: chunk boundaries then shift, and chunk *n* may hold a
    slightly different set. Skipping such a copy by id alone could miss a recipient, so the done
    marker holds this fingerprint and only an equal one is skipped.
    """
    recipients = body.get("recipients")
    if not isinstance(recipients, list):
        return b"1"  # profile.updated: one id is one (user, version), always the same content
    return hashlib.sha256("\n".join(map(str, recipients)).encode()).hexdigest()[:32].encode()


def deliveries(message: AbstractIncomingMessage) -> int:
    count = (message.headers or {}).get("x-delivery-count")
    return int(count) + 1 if isinstance(count, int) else (2 if message.redelivered else 1)


class FeedConsumer:
    def __init__(self, redis: aioredis.Redis, prefix: str = "feeds:") -> None:
        self._redis = redis
        self._prefix = prefix
        self._newer_profile = redis.register_script(NEWER_PROFILE)
        self._add_unless_deleted = redis.register_script(ADD_UNLESS_DELETED)
        self._delete_post = redis.register_script(DELETE_POST)
        self.in_flight: set[asyncio.Task[Any]] = set()

    async def on_message(self, message: AbstractIncomingMessage) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.in_flight.add(task)
        try:
            await self._handle(message)
        finally:
            if task is not None:
                self.in_flight.discard(task)

    async def _handle(self, message: AbstractIncomingMessage) -> None:
        done_key = f"{self._prefix}done:{message.message_id}"
        try:
            body = parse(message)
            mark = fingerprint(body)
            if await self._redis.get(done_key) == mark:
                log.debug("duplicate %s skipped", message.message_id)
                await message.ack()
                return
            await self.apply(body)  # idempotent: running it twice changes nothing
            # Only now is the message done. NX keeps the first marker (and its TTL) if a racing
            # consumer set one meanwhile; a copy with other recipients is then just processed
            # again when it comes back, which is harmless.
            await self._redis.set(done_key, mark, nx=True, ex=DONE_TTL_SECONDS)
        except Poison as exc:
            log.error("poison message %s: %s; dead-lettering it", message.message_id, exc)
            await message.reject(requeue=False)
            return
        except Exception as exc:
            if deliveries(message) >= MAX_DELIVERIES:
                log.error(
                    "message %s failed %d times (%r); dead-lettering it",
                    message.message_id,
                    MAX_DELIVERIES,
                    exc,
                )
                await message.reject(requeue=False)
            else:
                log.warning("message %s failed (%r); requeueing it", message.message_id, exc)
                await asyncio.sleep(1)  # do not spin on a failing dependency
                await message.nack(requeue=True)
            return
        await message.ack()  # after the work and the marker: a crash before here means a redelivery

    async def apply(self, body: dict[str, Any]) -> None:
        try:
            if body["type"] == "post.created":
                await self._add_to_feeds(body["post"], body["recipients"])
            elif body["type"] == "post.deleted":
                await self._remove_from_feeds(body["post"], body["recipients"])
            elif body["type"] == "post.updated":
                # The feeds hold post ids, which an edit does not change. A consumer keeping the
                # text would store it only if newer than what it holds (edit.version, else edit.at).
                return
            else:
                await self._store_profile(body["user"])
        except (KeyError, TypeError, ValueError) as exc:
            raise Poison(f"malformed body: {exc!r}") from None

    async def _add_to_feeds(self, post: dict[str, Any], recipients: list[str]) -> None:
        # Each chunk is self-contained: its recipients get the post whatever the other chunks do.
        # chunk.last is only needed by a consumer that must know when a post reached everyone.
        score = _timestamp(post.get("created_at"))
        feeds = [f"{self._prefix}feed:{user}" for user in recipients]
        await self._add_unless_deleted(
            keys=[self._tombstone(post), *feeds], args=[str(post["id"]), score, FEED_LENGTH]
        )

    async def _remove_from_feeds(self, post: dict[str, Any], recipients: list[str]) -> None:
        feeds = [f"{self._prefix}feed:{user}" for user in recipients]
        await self._delete_post(
            keys=[self._tombstone(post), *feeds], args=[str(post["id"]), TOMBSTONE_TTL_SECONDS]
        )

    def _tombstone(self, post: dict[str, Any]) -> str:
        return f"{self._prefix}deleted:{post['id']}"

    async def _store_profile(self, user: dict[str, Any]) -> None:
        key = f"{self._prefix}profile:{user['user_id']}"
        await self._newer_profile(keys=[key], args=[int(user["version"]), json.dumps(user)])


def _timestamp(created_at: Any) -> float:
    if isinstance(created_at, str):
        with contextlib.suppress(ValueError):
            return datetime.fromisoformat(created_at).timestamp()
    return time.time()  # null or not a date: with ZADD NX the first delivery's time sticks


async def run(amqp_url: str, redis_url: str, queue_name: str, prefetch: int, stop: asyncio.Event) -> None:
    redis = aioredis.Redis.from_url(redis_url)
    consumer = FeedConsumer(redis)
    connection = await aio_pika.connect_robust(amqp_url)  # reconnects and re-consumes by itself
    try:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=prefetch)
        # Passive: fanout-worker declares the queue with its arguments (type, DLX, TTL). A consumer
        # declaring it with other arguments would fail with PRECONDITION_FAILED.
        queue = await channel.declare_queue(queue_name, passive=True)
        tag = await queue.consume(consumer.on_message)
        log.info("consuming %s (prefetch %d)", queue_name, prefetch)
        await stop.wait()
        await queue.cancel(tag)  # no new deliveries; finish (and ack) the ones in hand
        if consumer.in_flight:
            await asyncio.wait(consumer.in_flight, timeout=10)
    finally:
        await connection.close()  # unacked messages go back to the queue
        await redis.aclose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--queue", default="fanout.post.created")
    parser.add_argument("--prefetch", type=int, default=64, help="unacknowledged messages at most")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    amqp_url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    redis_url = os.environ.get("REDIS_URL", "redis://127.0.0.1:6379/0")

    async def serve() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await run(amqp_url, redis_url, args.queue, args.prefetch, stop)

    asyncio.run(serve())


if __name__ == "__main__":
    main()
