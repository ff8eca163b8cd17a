"""Change-stream pipeline stages for WireMongo (a TEST TOOL, not MongoDB).

What a change stream's user pipeline may do here, applied to one event document:

* ``$match``: mongomock's matcher;
* ``$project``: inclusion only (``field: 1``, dotted paths, through arrays of documents);
* ``$set`` / ``$addFields``: a small expression subset: field paths, ``$$ROOT``, ``$$REMOVE``,
  ``$literal``, ``$bsonSize``, ``$ifNull``, ``$add``, ``$cond``, ``$gt``/``$gte``/``$lt``/``$lte``/``$eq``;
* ``$changeStreamSplitLargeEvent`` (last stage only): events over the size limit are split into
  fragments, top-level fields in order, each with ``_id`` (its own token) and
  ``splitEvent: {fragment, of}``, as MongoDB 7.0 does.

Anything else raises ``Unsupported`` (WireMongo answers it as a command error). A pipeline that
changes an event's ``_id`` gets error 280, as on a server.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

import bson
from mongomock.filtering import filter_applies as _filter_applies

Doc = dict[str, Any]
SPLIT_STAGE = "$changeStreamSplitLargeEvent"
# The server's limit of one change event (BSONObjMaxInternalSize): 16 MiB + 16 KiB.
MAX_EVENT_BYTES = 16 * 1024 * 1024 + 16 * 1024
_MISSING = object()


class Unsupported(Exception):
    """A stage or expression WireMongo does not emulate."""


class StageError(Exception):
    """A server-side error of the pipeline: ``code`` and message, replied as ``ok: 0``."""

    def __init__(self, code: int, errmsg: str) -> None:
        super().__init__(errmsg)
        self.code, self.errmsg = code, errmsg


def bson_size(doc: Mapping[str, Any]) -> int:
    return len(bson.encode(doc))


def too_large(size: int, doc: Mapping[str, Any]) -> StageError:
    return StageError(
        10334,
        f"BSONObj size: {size} (0x{size:X}) is invalid. Size must be between 0 and "
        f"{MAX_EVENT_BYTES}(16MB) First element: _id: {doc.get('_id')!r}",
    )


def check_stages(stages: list[Doc]) -> bool:
    """Validate the user's stages; True when the last one is the split stage."""
    for i, stage in enumerate(stages):
        if len(stage) != 1:
            raise Unsupported(f"a stage must have exactly one field: {stage!r}")
        (name,) = stage
        if name == SPLIT_STAGE and i != len(stages) - 1:
            raise StageError(7182802, f"{SPLIT_STAGE} must be the last stage in the pipeline")
        if name not in ("$match", "$project", "$set", "$addFields", SPLIT_STAGE):
            raise Unsupported(f"change stream stage {name} is not emulated")
    return bool(stages) and SPLIT_STAGE in stages[-1]


def apply_stages(stages: list[Doc], event: Doc) -> Doc | None:
    """The event after the user's stages (the split stage excepted), or None if filtered out."""
    doc = event
    for stage in stages:
        ((name, spec),) = stage.items()
        if name == "$match":
            if not _filter_applies(spec, doc):  # type: ignore[no-untyped-call]  # mongomock matcher
                return None
        elif name == "$project":
            doc = _project(doc, spec)
        elif name in ("$set", "$addFields"):
            doc = _add_fields(doc, spec)
    if doc.get("_id") != event.get("_id"):
        raise StageError(
            280,
            "Encountered an event whose _id field, which contains the resume token, was modified by "
            "the pipeline. Modifying the _id field of an event makes it impossible to resume the stream "
            "from that point.",
        )
    return doc


def split_event(doc: Doc, limit: int, token: Callable[[int], Doc]) -> list[Doc]:
    """Fragments of ``doc``, each at most ``limit`` bytes; ``token(n)`` is fragment n's ``_id``."""
    groups: list[Doc] = []
    group: Doc = {}
    for key, value in doc.items():
        if key == "_id":
            continue
        trial = {**group, key: value}
        if group and _fragment_size(trial, token) > limit:
            groups.append(group)
            trial = {key: value}
        group = trial
    groups.append(group)
    fragments = [
        {"_id": token(i), "splitEvent": {"fragment": i, "of": len(groups)}, **g}
        for i, g in enumerate(groups, 1)
    ]
    for fragment in fragments:
        if (size := bson_size(fragment)) > limit:  # one field alone is over the limit
            raise too_large(size, fragment)
    return fragments


def _fragment_size(fields: Doc, token: Callable[[int], Doc]) -> int:
    return bson_size({"_id": token(1), "splitEvent": {"fragment": 1, "of": 1}, **fields})


def _project(doc: Doc, spec: Mapping[str, Any]) -> Doc:
    if any(v not in (1, True) for k, v in spec.items() if k != "_id") or spec.get("_id", 1) not in (
        1,
        True,
        0,
    ):
        raise Unsupported("only inclusion projections are emulated")
    out: Doc = {}
    if spec.get("_id", 1) and "_id" in doc:
        out["_id"] = copy.deepcopy(doc["_id"])
    for path in spec:
        if path != "_id":
            _include(doc, out, path.split("."))
    return out


def _include(src: Any, dst: Doc, parts: list[str]) -> None:
    head, rest = parts[0], parts[1:]
    if not isinstance(src, Mapping) or head not in src:
        return
    value = src[head]
    if not rest:
        dst[head] = copy.deepcopy(value)
    elif isinstance(value, Mapping):
        sub = dst.setdefault(head, {})
        if isinstance(sub, dict):
            _include(value, sub, rest)
    elif isinstance(value, list):
        items = dst.setdefault(head, [{} for _ in value])
        for item, target in zip(value, items, strict=False):
            if isinstance(item, Mapping) and isinstance(target, dict):
                _include(item, target, rest)


def _add_fields(doc: Doc, spec: Mapping[str, Any]) -> Doc:
    out = dict(doc)
    for key, expr in spec.items():
        if "." in key:
            raise Unsupported("dotted $set/$addFields targets are not emulated")
        value = _eval(expr, doc)
        if value is _MISSING:
            out.pop(key, None)
        else:
            out[key] = value
    return out


def _eval(expr: Any, doc: Doc) -> Any:
    if isinstance(expr, str) and expr.startswith("$"):
        if expr == "$$ROOT":
            return doc
        if expr == "$$REMOVE":
            return _MISSING
        if expr.startswith("$$"):
            raise Unsupported(f"variable {expr} is not emulated")
        value: Any = doc
        for part in expr[1:].split("."):
            if not isinstance(value, Mapping) or part not in value:
                return _MISSING
            value = value[part]
        return value
    if isinstance(expr, list):
        return [_eval(e, doc) for e in expr]
    if not isinstance(expr, Mapping):
        return expr
    if len(expr) == 1 and next(iter(expr)).startswith("$"):
        ((op, arg),) = expr.items()
        return _operator(op, arg, doc)
    return {k: v for k, v in ((k, _eval(e, doc)) for k, e in expr.items()) if v is not _MISSING}


def _nullish(value: Any) -> bool:
    return value is None or value is _MISSING


def _operator(op: str, arg: Any, doc: Doc) -> Any:
    if op == "$literal":
        return arg
    if op == "$cond":
        cond, then, other = (arg["if"], arg["then"], arg["else"]) if isinstance(arg, Mapping) else arg
        return _eval(then if _truthy(_eval(cond, doc)) else other, doc)
    args = arg if isinstance(arg, list) else [arg]
    values = [_eval(a, doc) for a in args]
    if op == "$bsonSize":
        (value,) = values
        if _nullish(value):
            return None
        if not isinstance(value, Mapping):
            raise StageError(31393, "$bsonSize requires a document input")
        return bson_size(value)
    if op == "$ifNull":
        return next((v for v in values[:-1] if not _nullish(v)), values[-1])
    if op == "$add":
        return None if any(_nullish(v) for v in values) else sum(values)
    compare: dict[str, Callable[[Any, Any], bool]] = {
        "$gt": lambda a, b: a > b,
        "$gte": lambda a, b: a >= b,
        "$lt": lambda a, b: a < b,
        "$lte": lambda a, b: a <= b,
        "$eq": lambda a, b: a == b,
    }
    if op in compare:
        a, b = values
        return compare[op](a, b)
    raise Unsupported(f"expression operator {op} is not emulated")


def _truthy(value: Any) -> bool:
    return not (_nullish(value) or value is False or value == 0)
