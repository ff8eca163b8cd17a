"""``fanout-worker config reference``: docs/config.md, rendered from the settings model itself.

It walks the model generically: every section of ``Settings`` (a pydantic model), sections nested in
sections, and lists of models (``[[topology.queues]]``) become tables of key, environment variable,
type, default, bounds and the field's own ``description``. A new section appears without a change
here. Secrets never show a value, not even their defaults.
"""

from __future__ import annotations

import json
import types
from typing import Any, Literal, Union, get_args, get_origin

import annotated_types as at
from pydantic import BaseModel, SecretStr
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from worker.settings import Settings

REGENERATE = "fanout-worker config reference > docs/config.md"
_SCALARS = {int: "integer", float: "number", str: "string", bool: "boolean", SecretStr: "string (secret)"}


def reference(model: type[Settings] = Settings) -> str:
    """The Markdown reference of every setting of ``model``."""
    prefix = str(model.model_config.get("env_prefix", ""))
    delimiter = str(model.model_config.get("env_nested_delimiter", "__"))
    lines = [
        "# Configuration reference",
        "",
        f"Generated from the settings model by `{REGENERATE}`: edit the field descriptions in "
        "`worker/*settings.py`, not this file. `config.toml` is the same settings with their defaults.",
        "",
        f"Settings come from the TOML file given with `--config` and from environment variables, which "
        f"win. A key is set by `{prefix}<SECTION>{delimiter}<KEY>` (upper case, e.g. "
        f"`{prefix}RABBITMQ{delimiter}URL`); a whole section by `{prefix}<SECTION>` holding JSON, and so "
        f"is a list of tables (`{prefix}TOPOLOGY{delimiter}QUEUES='[{{\"name\": ...}}]'`). A "
        f"`{prefix}` variable that names no setting is refused. Bad settings stop every command with "
        "one line naming the field (exit 2). Secrets (URLs with credentials) never show a value here, "
        "in `fanout-worker config` or in the logs: put them in the environment. `run` without "
        f"`--config` starts only when `{prefix}MONGO{delimiter}URI` is set (the variables and the "
        "defaults then configure it); otherwise it exits 2 saying what to pass.",
        "",
    ]
    for name, info in model.model_fields.items():
        section = _model_of(info.annotation)
        if section is None:
            continue  # no top-level scalars today; a section is always a model
        lines += _section([name], section, info, f"{prefix}{name.upper()}", delimiter)
    return "\n".join(lines).rstrip() + "\n"


def _section(
    path: list[str], model: type[BaseModel], info: FieldInfo | None, env: str | None, delimiter: str
) -> list[str]:
    """The heading and table of one section, then those of its nested sections and lists of tables."""
    heading = ".".join(path)
    lines = [f"## `[{heading}]`" if env is not None else f"## `[[{heading}]]`", ""]
    about = _about(model, info)
    if about:
        lines += [about, ""]
    rows: list[tuple[str, ...]] = [("key", "environment", "type", "default", "bounds", "description")]
    later: list[list[str]] = []
    for key, field in model.model_fields.items():
        key_env = f"{env}{delimiter}{key.upper()}" if env is not None else None
        nested = _model_of(field.annotation)
        items = _list_item_model(field.annotation)
        if nested is not None:
            later.append(_section([*path, key], nested, field, key_env, delimiter))
            continue
        kind = _type(field.annotation)
        default = _default(field)
        if items is not None:
            kind, default = f"list of `[[{heading}.{key}]]` tables", f"{_count(field)} (below)"
            later.append(_section([*path, key], items, field, None, delimiter))
        env_cell = f"`{key_env}`" + (" (JSON)" if items is not None else "") if key_env else "—"
        rows.append((f"`{key}`", env_cell, kind, default, _bounds(field), _one_line(field.description)))
    lines += _table(rows)
    if env is None:
        lines += ["", f"Each item is a table; the whole list is set at once (`{heading}` above)."]
    lines.append("")
    for block in later:
        lines += block
    return lines


def _about(model: type[BaseModel], info: FieldInfo | None) -> str:
    if info is not None and info.description and _model_of(info.annotation) is not None:
        return _one_line(info.description)
    doc = model.__dict__.get("__doc__") or ""  # its own: a docstring of a base says nothing of it
    # A section's docstring opens with its own name (``[mongo]``: ...), which the heading shows.
    text = " ".join(doc.split()).replace("``", "`")
    if text.startswith("`[") and "`: " in text:
        text = text.split("`: ", 1)[1]
    return text[:1].upper() + text[1:]


def _table(rows: list[tuple[str, ...]]) -> list[str]:
    out = ["| " + " | ".join(rows[0]) + " |", "|" + " --- |" * len(rows[0])]
    # A cell may hold a pipe (a choice) or a "<" (an HTML tag to Markdown): escaped so they stay text.
    out += ["| " + " | ".join(_cell(cell) for cell in row) + " |" for row in rows[1:]]
    return out


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("<", "&lt;")


def _model_of(annotation: Any) -> type[BaseModel] | None:
    return annotation if isinstance(annotation, type) and issubclass(annotation, BaseModel) else None


def _list_item_model(annotation: Any) -> type[BaseModel] | None:
    if get_origin(annotation) is list:
        (item,) = get_args(annotation) or (None,)
        return _model_of(item)
    return None


def _type(annotation: Any) -> str:
    origin = get_origin(annotation)
    if origin is Literal:
        return " | ".join(json.dumps(v) for v in get_args(annotation))
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        inner = " or ".join(_type(a) for a in args)
        return f"{inner} (optional)" if len(args) < len(get_args(annotation)) else inner
    if origin is list:
        (item,) = get_args(annotation) or (str,)
        return f"list of {_type(item)}s"
    if isinstance(annotation, type) and annotation in _SCALARS:
        return _SCALARS[annotation]
    return getattr(annotation, "__name__", str(annotation))


def _value(field: FieldInfo) -> Any:
    if field.default_factory is not None:
        return field.default_factory()  # type: ignore[call-arg]
    return field.default


def _default(field: FieldInfo) -> str:
    if field.is_required():
        return "required"
    value = _value(field)
    if isinstance(value, SecretStr) or _type(field.annotation).endswith("(secret)"):
        return "*secret: not shown*"
    if value is None or value is PydanticUndefined:
        return "not set"
    if isinstance(value, bool):
        return "`true`" if value else "`false`"
    if isinstance(value, str | int | float):
        return f"`{json.dumps(value)}`"
    if isinstance(value, list) and all(isinstance(v, str | int | float) for v in value):
        return f"`{json.dumps(value)}`"
    return f"`{value!r}`"


def _count(field: FieldInfo) -> str:
    value = _value(field)
    n = len(value) if isinstance(value, list) else 0
    return f"{n} item{'s' if n != 1 else ''}"


def _bounds(field: FieldInfo) -> str:
    return ", ".join(_bound(m) for m in field.metadata if _bound(m)) or ""


def _bound(constraint: Any) -> str:
    for kind, attr, sign in ((at.Gt, "gt", ">"), (at.Ge, "ge", "≥"), (at.Lt, "lt", "<"), (at.Le, "le", "≤")):
        if isinstance(constraint, kind):
            return f"{sign} {getattr(constraint, attr)}"
    if isinstance(constraint, at.MinLen):
        return "not empty" if constraint.min_length == 1 else f"length ≥ {constraint.min_length}"
    if isinstance(constraint, at.MaxLen):
        return f"length ≤ {constraint.max_length}"
    return ""


def _one_line(text: str | None) -> str:
    return " ".join((text or "").split())
