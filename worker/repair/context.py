"""What the repair commands run on, built from the wiring's client builders and closed by the
caller's AsyncExitStack: MongoDB always; Redis, RabbitMQ and today's handlers only when the command
publishes (never for ``--dry-run``, ``list``, ``show`` or ``purge``)."""

from __future__ import annotations

from collections.abc import Mapping
from contextlib import AsyncExitStack
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from enrichment.errors import ServiceUnavailable
from handlers.posts import PostCreatedHandler
from worker import uris, wiring
from worker.failures import cause
from worker.messaging.jobs import BACKFILL, ensure_job_topology
from worker.mongo.repair import (
    MongoDeadLetterArchive,
    MongoGapLedger,
    MongoPostReader,
    MongoProfileReader,
    MongoRunStore,
)
from worker.mongo.stores import (
    MongoDeadLetters,
    MongoFollowerGraph,
    MongoPostStore,
    MongoProfileSource,
)
from worker.ports import EventHandler
from worker.repair.pace import LanePublisher
from worker.repair.ports import DeadLetterArchive, GapLedger, PostReader, ProfileReader, RunStore
from worker.settings import Settings
from worker.streams import POSTS


@dataclass
class RepairContext:
    settings: Settings
    posts: MongoPostStore
    reader: PostReader
    profiles: ProfileReader
    runs: RunStore
    gaps: GapLedger
    dead_letters: MongoDeadLetters
    archive: DeadLetterArchive
    # Today's handlers by stream (publishing to the backfill lane); empty unless opened to publish.
    handlers: Mapping[str, EventHandler] = field(default_factory=dict)

    @property
    def posts_handler(self) -> PostCreatedHandler:
        handler = self.handlers[POSTS.name]
        assert isinstance(handler, PostCreatedHandler)
        return handler


async def open_repair(settings: Settings, stack: AsyncExitStack, publish: bool) -> RepairContext:
    """Raises ServiceUnavailable (naming host:port and the cause) when a service is unreachable."""
    m = settings.mongo
    mongo = await wiring.reach_mongo(settings, stack)
    db = mongo[m.database]
    ctx = RepairContext(
        settings,
        MongoPostStore(db[m.posts]),
        MongoPostReader(db[m.posts], settings.post_lifecycle.soft_delete_field),
        MongoProfileReader(db[m.profiles]),
        MongoRunStore(db[settings.backfill.collection]),
        MongoGapLedger(db[m.gaps]),
        MongoDeadLetters(db[m.dead_letters]),
        MongoDeadLetterArchive(db[m.dead_letters]),
    )
    if not publish:
        return ctx
    redis = wiring.open_redis(settings, stack)
    try:
        await redis.ping()
    except (RedisError, OSError) as exc:
        where = uris.validate_redis(settings.redis.url.get_secret_value()).endpoints()
        raise ServiceUnavailable(f"Redis is unreachable: {where}: {cause(exc)}") from None
    q = settings.rabbitmq
    # The backfill lane must exist before a job is routed to it (an unroutable job fails its post).
    await ensure_job_topology(q.url.get_secret_value(), settings.fanout, q.confirm_timeout_seconds)
    publisher, jobs = wiring.rabbit_publisher(settings), wiring.job_publisher(settings)
    wiring.close_later(stack, "RabbitMQ", publisher.close)
    wiring.close_later(stack, "RabbitMQ jobs", jobs.close)
    await publisher.connect()
    await jobs.connect()
    stores = wiring.Stores(
        source=MongoProfileSource(db[m.profiles]),
        posts=ctx.posts,
        graph=MongoFollowerGraph(db[m.follows], m.follower_batch_size),
        checkpoints=wiring.checkpoint_stores(settings, mongo)[0],
        dead_letters=ctx.dead_letters,
    )
    runtime = wiring.assemble(settings, {}, stores, publisher, redis, jobs=LanePublisher(jobs, BACKFILL))
    ctx.handlers = runtime.handlers
    return ctx
