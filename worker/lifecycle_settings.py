"""The ``[post_lifecycle]`` settings: which post edits followers see and how a delete finds its
author (handlers/lifecycle.py). Pure pydantic, like the other sections."""

from __future__ import annotations

import re
from typing import Literal

from pydantic import Field, field_validator, model_validator

from worker.service_settings import Section

PreImages = Literal["off", "when-available", "required"]
# Top-level field names only: the feed projects them and reads them from updateDescription.
_FIELD = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
# Fields with a meaning of their own in the posts collection, never configurable as these.
_RESERVED = frozenset({"_id", "author_id", "created_at", "author_snapshot"})


def _field_name(value: str, what: str) -> str:
    if not _FIELD.match(value):
        raise ValueError(f"{what} {value!r} must be a top-level field name (letters, digits, _)")
    if value in _RESERVED:
        raise ValueError(f"{what} {value!r} is a field the worker reads for another purpose")
    return value


class PostLifecycleSettings(Section):
    """``[post_lifecycle]``: edits and deletes of posts fanned out to the author's followers."""

    edits: bool = Field(True, description="Fan out post.updated when a visible field of a post changes.")
    visible_fields: list[str] = Field(
        default_factory=list,
        description="Post fields followers see besides text; an edit of one of them is fanned out.",
    )
    version_field: str = Field(
        "",
        description="A post field counting its edits (an integer): edit message ids use it; "
        "empty: they use the change event's resume token.",
    )
    pre_images: PreImages = Field(
        "off",
        description="Read a hard delete's author from its pre-image (MongoDB 6.0+, "
        "changeStreamPreAndPostImages on the posts collection): off, when-available or required.",
    )
    soft_delete_field: str = Field(
        "",
        description="A post field whose setting (to anything but null) deletes the post; "
        "empty: no soft deletes.",
    )

    @field_validator("visible_fields")
    @classmethod
    def _visible(cls, value: list[str]) -> list[str]:
        for name in value:
            _field_name(name, "visible field")
        if "text" in value or len(set(value)) < len(value):
            raise ValueError("visible fields must be distinct and not repeat text (always visible)")
        return value

    @field_validator("version_field", "soft_delete_field")
    @classmethod
    def _optional_field(cls, value: str) -> str:
        return _field_name(value, "field") if value else value

    @model_validator(mode="after")
    def _distinct_roles(self) -> PostLifecycleSettings:
        roles = [f for f in (self.version_field, self.soft_delete_field) if f]
        if len(set(roles)) < len(roles) or set(roles) & {"text", *self.visible_fields}:
            raise ValueError("version_field, soft_delete_field and the visible fields must differ")
        return self

    @property
    def before_change(self) -> str | None:
        """The change stream's ``fullDocumentBeforeChange`` option for this setting."""
        return {"off": None, "when-available": "whenAvailable", "required": "required"}[self.pre_images]
