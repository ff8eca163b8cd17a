"""Post ids as text: one string per distinct ``_id``, whatever its BSON type (docs/contract.md).

``str()`` is not enough: ``777`` and ``"777"`` are two posts but the same text, so consumers that
de-duplicate by ``message_id`` would drop one. The encoding keeps the two common cases unchanged
and tags everything else:

- an ObjectId (MongoDB's default ``_id``): its 24 lowercase hex digits, as before;
- a string: itself, as before, unless it could be read as something else, i.e. it is exactly 24
  lowercase hex digits (an ObjectId's form) or starts with ``~`` (the tag mark): then ``~str:`` + it;
- anything else: ``~{tag}:{canonical form}``, e.g. ``~int:777``, ``~uuid:…``, ``~double:1.5``.

Injective: an encoded id starting with ``~`` is tagged (the tag ends at the first ``:``; tags
contain none), one of exactly 24 lowercase hex digits is an ObjectId, and any other is a string as
is. Each form is injective within its type, so :func:`decode_post_id` inverts it (the tests check).
Deterministic: the same ``_id`` always gives the same text, so replays keep their ids.
"""

from __future__ import annotations

import re
import uuid
from datetime import datetime
from typing import Any

from bson import Binary, Decimal128, ObjectId, json_util
from bson.json_util import CANONICAL_JSON_OPTIONS

TAG = "~"
_HEX24 = re.compile(r"[0-9a-f]{24}")


def encode_post_id(value: Any) -> str:
    """The text form of a post ``_id``: unique per distinct ``_id``, stable across replays."""
    if isinstance(value, str):
        # An empty _id is tagged too: ids, message ids and jobs need a non-empty text.
        if not value or value.startswith(TAG) or _HEX24.fullmatch(value):
            return f"{TAG}str:{value}"
        return value
    if isinstance(value, ObjectId):
        return str(value)
    if isinstance(value, bool):  # before int: bool is an int subclass
        return f"{TAG}bool:{'true' if value else 'false'}"
    if isinstance(value, int):  # int and bson Int64: MongoDB holds 5 and Int64(5) as one _id anyway
        return f"{TAG}int:{int(value)}"
    if isinstance(value, float):
        return f"{TAG}double:{value!r}"  # repr round-trips every float
    if isinstance(value, uuid.UUID):
        return f"{TAG}uuid:{value}"
    if isinstance(value, Decimal128):
        return f"{TAG}decimal:{value}"
    if isinstance(value, datetime):
        return f"{TAG}date:{value.isoformat()}"
    if isinstance(value, Binary):
        return f"{TAG}binary:{value.subtype}:{bytes(value).hex()}"
    # Any other scalar BSON value: its canonical extended JSON, which names the type.
    return f"{TAG}ejson:{json_util.dumps(value, json_options=CANONICAL_JSON_OPTIONS)}"


def decode_post_id(text: str) -> tuple[str, str]:
    """``(kind, canonical form)`` of an encoded id: ``("objectid", hex)``, ``("str", the string)``
    or ``(tag, form)``. The inverse of :func:`encode_post_id` up to that canonical form."""
    if text.startswith(TAG):
        tag, sep, form = text[len(TAG) :].partition(":")
        if not sep:
            raise ValueError(f"not an encoded post id: {text!r}")
        return tag, form
    if _HEX24.fullmatch(text):
        return "objectid", text
    return "str", text
