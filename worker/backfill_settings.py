"""The ``[backfill]`` settings: the repair commands (``fanout-worker backfill`` and
``dead-letters replay``). Their jobs go to the backfill lane, whose queue is in ``[fanout]``.
Pure pydantic: loading the settings imports no client."""

from __future__ import annotations

from pydantic import Field

from worker.service_settings import Section


class BackfillSettings(Section):
    """``[backfill]``: the pace, batches and checkpoints of the repair commands."""

    posts_per_second: float = Field(
        200.0, gt=0, description="posts (or profiles, for --snapshots) a backfill handles per second at most"
    )
    batch_size: int = Field(
        100, gt=0, le=10_000, description="posts read, fanned out and checkpointed together by a backfill"
    )
    collection: str = Field(
        "fanout_backfills",
        min_length=1,
        description="MongoDB collection of the backfills' own checkpoints (one document per run)",
    )
