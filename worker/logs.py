"""Logging with loguru: text for people, JSON for collectors, credentials always redacted."""

from __future__ import annotations

import logging
import re
import sys
import traceback
from typing import TYPE_CHECKING, Any

import orjson
from loguru import logger

if TYPE_CHECKING:
    from loguru import Record

# Query parameters whose values are credentials in some client (pymongo's
# tlsCertificateKeyFilePassword, redis-py's ?password=, tokens); authSource and the like are not.
SECRET_PARAM = re.compile(r"pass|pwd|secret|token|credential|api_?key", re.IGNORECASE)
_TOKEN = re.compile(r"\S*@\S*")  # a URI-like word holding user-info (no whitespace: refused in URIs)
_SCHEME = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*:/+")
_PARAM = re.compile(r"(?P<key>[?&;][^=&;\s]*=)(?P<value>[^&;\s]*)")
_MECH_PROPS = re.compile(r"((?:TOKEN|SECRET|PASS)[A-Z_]*(?::|%3A))[^,&;\s]*", re.IGNORECASE)


def redact(text: str) -> str:
    """Mask every credential a connection string can carry, in any text, parseable or not.

    User-info: everything between the first ':' after the scheme (or the word's start) and the
    last '@' of the word, so unencoded '#', '?', '/', '@' or ':' in a password are covered.
    Query parameters: the value of any whose name says password, secret or token, and the
    token/secret entries of authMechanismProperties.
    """
    return _PARAM.sub(_param, _TOKEN.sub(_userinfo, text))


def _userinfo(match: re.Match[str]) -> str:
    word = match.group()
    head, _, host = word.rpartition("@")
    scheme = _SCHEME.search(head)
    start = scheme.end() if scheme is not None else 0
    user, colon, _ = head[start:].partition(":")
    return f"{head[:start]}{user}:***@{host}" if colon else word


def _param(match: re.Match[str]) -> str:
    key, value = match.group("key"), match.group("value")
    if SECRET_PARAM.search(key):
        return f"{key}***"
    if key[1:].lower().startswith("authmechanismproperties"):
        return key + _MECH_PROPS.sub(r"\1***", value)
    return match.group()


def _patch(record: Record) -> None:
    record["message"] = redact(record["message"])
    for key, value in record["extra"].items():
        if isinstance(value, str):
            record["extra"][key] = redact(value)
    exc = record["exception"]
    if exc is not None and exc.value is not None:
        _redact_exception(exc.value)


def _redact_exception(exc: BaseException) -> None:
    """Redact what a traceback prints of an exception and of every exception it was chained from."""
    seen: set[int] = set()
    link: BaseException | None = exc
    while link is not None and id(link) not in seen:
        seen.add(id(link))
        link.args = tuple(redact(a) if isinstance(a, str) else a for a in link.args)
        if isinstance(link, OSError):  # str(OSError) is built from these, not from args
            if isinstance(link.strerror, str):
                link.strerror = redact(link.strerror)
            if isinstance(link.filename, str):
                link.filename = redact(link.filename)
        link = link.__cause__ or link.__context__


class _Intercept(logging.Handler):
    """Send the libraries' standard-library logging through loguru (and its redaction)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            level: str | int = logger.level(record.levelname).name
        except ValueError:
            level = record.levelno
        logger.opt(depth=6, exception=record.exc_info).log(level, record.getMessage())


class _JsonLines:
    """One compact JSON object per line: time, level, message and the bound context."""

    def __init__(self, out: Any) -> None:
        self._out = out

    def write(self, message: Any) -> None:
        record = message.record
        line: dict[str, Any] = {
            "ts": record["time"].isoformat(),
            "level": record["level"].name,
            "msg": record["message"],
            "logger": record["name"],
        }
        line.update({k: v for k, v in record["extra"].items() if k not in line})
        exc = record["exception"]
        if exc is not None and exc.type is not None:
            line["error"] = exc.type.__name__
            trace = "".join(traceback.format_exception(exc.type, exc.value, exc.traceback))
            line["traceback"] = redact(trace)
        self._out.write(orjson.dumps(line, default=str).decode() + "\n")
        self._out.flush()


def _text_format(record: Record) -> str:
    """Time, level, message, then the bound context as key=value (stream, op, ids, token)."""
    context = " ".join(f"{key}={value}" for key, value in record["extra"].items())
    # Braces in the context are escaped: loguru formats the returned template once more.
    tail = " | " + context.replace("{", "{{").replace("}", "}}") if context else ""
    return "{time:YYYY-MM-DD HH:mm:ss.SSS} | {level: <7} | {message}" + tail + "\n{exception}"


def configure(level: str = "INFO", fmt: str = "auto", sink: Any = None) -> None:
    """Replace loguru's default sink. ``fmt`` "auto" is text on a TTY, JSON otherwise."""
    out = sink if sink is not None else sys.stderr
    as_json = fmt == "json" or (fmt == "auto" and not (hasattr(out, "isatty") and out.isatty()))
    logger.remove()
    logger.configure(patcher=_patch)
    if as_json:
        logger.add(_JsonLines(out).write, level=level, backtrace=False, diagnose=False)
    else:
        logger.add(out, level=level, format=_text_format, backtrace=False, diagnose=False)
    logging.basicConfig(handlers=[_Intercept()], level=logging.WARNING, force=True)
