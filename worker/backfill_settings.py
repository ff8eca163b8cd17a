"""The ``[backfill]`` settings: the repair commands (``fanout-worker backfill`` and
``dead-letters replay``). Their jobs go to the backfill lane, whose queue is in ``[fanout]``.
Pure pydantic: loading the settings imports no client."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from worker.topology_settings import no_bool_numbers


class BackfillSettings(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

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

    @field_validator("*", mode="before")
    @classmethod
    def _strict_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return no_bool_numbers(cls, value, info)
