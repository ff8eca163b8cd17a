"""The ``[topology]`` settings (consumer queues, dead-letter exchanges) and the name and number
checks other sections share. Pure pydantic: loading the settings imports no AMQP client."""

from __future__ import annotations

from typing import Any, Literal, Self, get_args

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

DLQ_SUFFIX = ".queue"


def check_name(value: str) -> str:
    if value.startswith("amq."):
        raise ValueError("names starting with 'amq.' are reserved by RabbitMQ")
    if len(value.encode()) > 255:
        raise ValueError("RabbitMQ names are at most 255 bytes")
    return value


def no_bool_numbers(model: type[BaseModel], value: Any, info: ValidationInfo) -> Any:
    """A before-validator: TOML ``true`` is not the number 1 (pydantic would cast it)."""
    if isinstance(value, bool) and info.field_name is not None:
        annotation = model.model_fields[info.field_name].annotation
        kinds = get_args(annotation) or (annotation,)
        if bool not in kinds and (int in kinds or float in kinds):
            raise ValueError("must be a number, not true or false")
    return value


class QueueSpec(BaseModel):
    """One consumer queue bound to the fan-out exchange."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = Field(min_length=1, description="Queue name.")
    bindings: list[str] = Field(
        min_length=1, description="Routing keys bound from rabbitmq.exchange (topic patterns allowed)."
    )
    type: Literal["classic", "quorum"] = Field(
        "quorum", description="quorum (replicated; must be durable) or classic."
    )
    durable: bool = Field(True, description="The queue survives a broker restart.")
    dead_letter_exchange: str | None = Field(
        None,
        min_length=1,
        description="Where rejected or expired messages go: a durable fanout exchange, and its queue "
        'named "<exchange>.queue".',
    )
    message_ttl_ms: int | None = Field(
        None, ge=0, description="Milliseconds a message may wait before it is dead-lettered; unset: no limit."
    )

    @field_validator("*", mode="before")
    @classmethod
    def _strict_numbers(cls, value: Any, info: ValidationInfo) -> Any:
        return no_bool_numbers(cls, value, info)

    @field_validator("name", "dead_letter_exchange")
    @classmethod
    def _names(cls, value: str | None) -> str | None:
        return None if value is None else check_name(value)

    @model_validator(mode="after")
    def _quorum_is_durable(self) -> Self:
        if self.type == "quorum" and not self.durable:
            raise ValueError(f"queue {self.name!r}: a quorum queue must be durable")
        return self

    def arguments(self) -> dict[str, Any]:
        args: dict[str, Any] = {"x-queue-type": self.type}
        if self.dead_letter_exchange is not None:
            args["x-dead-letter-exchange"] = self.dead_letter_exchange
        if self.message_ttl_ms is not None:
            args["x-message-ttl"] = self.message_ttl_ms
        return args


def _default_queues() -> list[QueueSpec]:
    return [
        QueueSpec(name="fanout.post.created", bindings=["post.created"], dead_letter_exchange="fanout.dlx"),
        QueueSpec(
            name="fanout.post.changes",
            bindings=["post.updated", "post.deleted"],
            dead_letter_exchange="fanout.dlx",
        ),
        QueueSpec(
            name="fanout.profile.updated", bindings=["profile.updated"], dead_letter_exchange="fanout.dlx"
        ),
    ]


class TopologySettings(BaseModel):
    """``[topology]``: the queues declared at start (``declare = false`` leaves the broker alone)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    declare: bool = Field(
        True, description="Declare the queues below at start (idempotent); false leaves the broker alone."
    )
    queues: list[QueueSpec] = Field(
        default_factory=_default_queues,
        description="Consumer queues bound to rabbitmq.exchange; listing any replaces the defaults.",
    )

    @model_validator(mode="after")
    def _unique(self) -> Self:
        names = [q.name for q in self.queues]
        names += [f"{x}{DLQ_SUFFIX}" for x in self.dead_letter_exchanges()]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"queue names must be unique (dead-letter queues included): {dupes}")
        return self

    def dead_letter_exchanges(self) -> list[str]:
        return sorted({q.dead_letter_exchange for q in self.queues if q.dead_letter_exchange})

    def unbound(self, routing_keys: list[str]) -> list[str]:
        """The routing keys no declared queue's binding takes (AMQP topic patterns: ``*`` is one
        word, ``#`` any number of words)."""
        patterns = [b for q in self.queues for b in q.bindings]
        return [key for key in routing_keys if not any(topic_matches(p, key) for p in patterns)]


def topic_matches(pattern: str, key: str) -> bool:
    """Whether a topic exchange routes ``key`` to a binding of ``pattern``."""

    def match(p: list[str], k: list[str]) -> bool:
        if not p:
            return not k
        if p[0] == "#":
            return any(match(p[1:], k[i:]) for i in range(len(k) + 1))
        return bool(k) and (p[0] == "*" or p[0] == k[0]) and match(p[1:], k[1:])

    return match(pattern.split("."), key.split("."))
