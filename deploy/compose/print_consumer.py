"""The compose file's consumer: prints every message it receives on the given queues, then acks it.

    python print_consumer.py fanout.post.created fanout.post.changes fanout.profile.updated

AMQP_URL (default amqp://guest:guest@127.0.0.1:5672/) names the broker. The queues are the worker's
(declared by its [topology]); this only reads them. One line per message: queue, routing key,
message_id, then the JSON body. A real consumer does more (de-duplication by message_id,
idempotent work): examples/consumer.py and docs/consumers.md.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys

import aio_pika
from aio_pika.abc import AbstractIncomingMessage


def line(queue: str, message: AbstractIncomingMessage) -> str:
    body = message.body.decode("utf-8", errors="replace")
    return f"{queue} {message.routing_key} {message.message_id} {body}"


async def consume(url: str, queues: list[str], limit: int | None) -> int:
    """Print and ack messages until ``limit`` were printed (never, when None). Returns the count."""
    printed = 0
    done = asyncio.Event()
    connection = await aio_pika.connect_robust(url)
    async with connection:
        channel = await connection.channel()
        await channel.set_qos(prefetch_count=16)

        for name in queues:
            queue = await channel.get_queue(name, ensure=True)  # passive: the worker declares it

            async def on_message(message: AbstractIncomingMessage, name: str = name) -> None:
                nonlocal printed
                async with message.process():
                    print(line(name, message), flush=True)
                    printed += 1
                    if limit is not None and printed >= limit:
                        done.set()

            await queue.consume(on_message)
        await done.wait()
    return printed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Print the messages fanout-worker publishes.")
    parser.add_argument("queues", nargs="+", help="queue names to read (they must exist)")
    parser.add_argument("--limit", type=int, default=None, help="stop after this many messages")
    args = parser.parse_args(argv)
    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
    try:
        asyncio.run(consume(url, args.queues, args.limit))
    except KeyboardInterrupt:
        return 130
    except aio_pika.exceptions.ChannelNotFoundEntity as exc:  # not declared yet: compose restarts us
        print(f"print_consumer: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
