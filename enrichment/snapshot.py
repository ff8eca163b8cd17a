"""The author snapshot embedded in posts and cached in every layer."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import orjson

from enrichment.errors import InvalidEvent

DISPLAY_FIELDS: frozenset[str] = frozenset({"username", "display_name", "avatar_url"})


@dataclass(frozen=True, slots=True)
class AuthorSnapshot:
    """What a post carries about its author. ``version`` orders snapshots of one user."""

    user_id: str
    username: str
    display_name: str
    avatar_url: str | None
    version: int

    @classmethod
    def from_profile(cls, doc: Mapping[str, Any]) -> AuthorSnapshot:
        """Build a snapshot from a ``profiles`` document; raise InvalidEvent if it is malformed."""
        user_id = doc.get("_id")
        version = doc.get("version")
        username = doc.get("username")
        if not isinstance(user_id, str) or not user_id:
            raise InvalidEvent(f"profile _id must be a non-empty string, got {type(user_id).__name__}")
        # bool is an int subclass; a True version is a bug upstream, not version 1.
        if not isinstance(version, int) or isinstance(version, bool) or version < 0:
            raise InvalidEvent(f"profile {user_id!r}: version must be a non-negative integer")
        if not isinstance(username, str):
            raise InvalidEvent(f"profile {user_id!r}: username must be a string")
        display_name = doc.get("display_name")
        avatar_url = doc.get("avatar_url")
        if display_name is not None and not isinstance(display_name, str):
            raise InvalidEvent(f"profile {user_id!r}: display_name must be a string")
        if avatar_url is not None and not isinstance(avatar_url, str):
            raise InvalidEvent(f"profile {user_id!r}: avatar_url must be a string or null")
        return cls(user_id, username, display_name or username, avatar_url, version)

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "username": self.username,
            "display_name": self.display_name,
            "avatar_url": self.avatar_url,
            "version": self.version,
        }

    def to_json(self) -> bytes:
        return orjson.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuthorSnapshot:
        return cls(
            user_id=str(data["user_id"]),
            username=str(data["username"]),
            display_name=str(data["display_name"]),
            avatar_url=data.get("avatar_url"),
            version=int(data["version"]),
        )


# A cached "this user does not exist" marker. Version -1 so any real profile replaces it.
MISSING_VERSION = -1


def encode_missing() -> bytes:
    return orjson.dumps({"missing": True, "version": MISSING_VERSION})


def decode_cached(raw: bytes | str) -> AuthorSnapshot | None:
    """Decode an L2 value: a snapshot, or None for a negative entry. Raises ValueError if corrupt."""
    data = orjson.loads(raw)
    if not isinstance(data, dict):
        raise ValueError("cached value is not an object")
    if data.get("missing"):
        return None
    try:
        return AuthorSnapshot.from_dict(data)
    except (KeyError, TypeError) as exc:
        raise ValueError(f"cached snapshot is malformed: {exc}") from exc
