"""Validation of the three connection URIs when the settings load, without ever echoing them.

Each URI is first checked for the shape every client library relies on (scheme, one user-info
part, host, port 1–65535, nothing after the host that belongs to a password), then handed to its
client's own parser: PyMongo's (without the DNS lookup of ``mongodb+srv``), redis-py's
``parse_url`` and yarl (what aiormq parses with). Messages name what is wrong, never the value;
a library's message is used only with the password and secret query values scrubbed out.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from urllib.parse import unquote_plus

from pymongo.uri_parser_shared import _validate_uri  # parse_uri would resolve DNS for +srv
from redis.connection import parse_url
from yarl import URL

from worker.logs import SECRET_PARAM, redact

_DEFAULT_PORTS = {"mongodb://": 27017, "redis://": 6379, "rediss://": 6379, "amqp://": 5672, "amqps://": 5671}
MONGO_SCHEMES = ("mongodb://", "mongodb+srv://")
REDIS_SCHEMES = ("redis://", "rediss://", "unix://")
AMQP_SCHEMES = ("amqp://", "amqps://")
_ENCODE = "percent-encode the user name and password (urllib.parse.quote(password, safe=''))"


@dataclass(frozen=True)
class Parts:
    scheme: str
    hosts: list[tuple[str, int | None]]
    rest: str  # path, query

    def endpoints(self) -> str:
        """``host:port`` of every host, for messages (never the credentials)."""
        shown = []
        for host, explicit in self.hosts:
            name = f"[{host}]" if ":" in host else host
            port = _DEFAULT_PORTS.get(self.scheme) if explicit is None else explicit
            shown.append(name if port is None else f"{name}:{port}")  # +srv: no port, DNS says
        return ",".join(shown) or "(unix socket)"


def split(uri: str, schemes: tuple[str, ...], multi_host: bool = False) -> Parts:
    """The URI's parts; raises ValueError with a message that never contains the URI."""
    if any(c.isspace() or ord(c) < 32 for c in uri):
        raise ValueError("contains whitespace or a control character; " + _ENCODE)
    scheme = next((s for s in schemes if uri.lower().startswith(s)), None)
    if scheme is None:
        raise ValueError("must start with " + " or ".join(schemes))
    body = uri[len(scheme) :]
    if "#" in body:
        raise ValueError("contains '#'; " + _ENCODE)
    authority, rest = _cut(body)
    if "@" in rest:
        raise ValueError("has an '@' after the host (a '/' or '?' in the password?); " + _ENCODE)
    userinfo, _, hostlist = authority.rpartition("@")
    if "@" in userinfo:
        raise ValueError("has more than one '@'; " + _ENCODE)
    hosts = [] if scheme == "unix://" else [_host(h) for h in hostlist.split(",")] if hostlist else []
    if scheme != "unix://" and not hosts:
        raise ValueError("names no host")
    if len(hosts) > 1 and not multi_host:
        raise ValueError("names more than one host")
    return Parts(scheme, hosts, rest)


def _cut(body: str) -> tuple[str, str]:
    """Authority, then the rest (path and query): what a parser would take for them."""
    match = re.search(r"[/?]", body)
    return (body, "") if match is None else (body[: match.start()], body[match.start() :])


def _host(entity: str) -> tuple[str, int | None]:
    if entity.startswith("["):
        host, bracket, tail = entity[1:].partition("]")
        if not bracket or not host:
            raise ValueError("has an IPv6 address without its closing ']'")
        port = tail[1:] if tail.startswith(":") else None
        if tail and port is None:
            raise ValueError("has text after an IPv6 address that is not a port")
    else:
        host, colon, port_text = entity.partition(":")
        port = port_text if colon else None
        if not host:
            raise ValueError("names an empty host")
    if port is None:
        return host, None
    if not port.isdigit() or not 1 <= int(port) <= 65535:
        raise ValueError("has a port that is not a number from 1 to 65535; if it is not a port, " + _ENCODE)
    return host, int(port)


def secrets_of(uri: str) -> list[str]:
    """The password and secret query values (raw and decoded), longest first, for scrubbing."""
    found: list[str] = []
    body = uri.split("://", 1)[-1]
    authority = body.rsplit("@", 1)[0] if "@" in body else ""
    if ":" in authority:
        found.append(authority.split(":", 1)[1])
    for match in re.finditer(r"[?&;]([^=&;]*)=([^&;]*)", body):
        if SECRET_PARAM.search(match.group(1)):
            found.append(match.group(2))
    found += [unquote_plus(s) for s in found]
    return sorted({s for s in found if s}, key=len, reverse=True)


def scrub(message: str, uri: str) -> str:
    """A library's message about ``uri`` with its secrets removed."""
    for secret in secrets_of(uri):
        message = message.replace(secret, "***")
    return redact(message)


def _library(parse: Callable[[str], object], uri: str, what: str) -> None:
    try:
        parse(uri)
    except Exception as exc:  # every parser raises its own kinds; all mean "invalid"
        raise ValueError(f"is not a valid {what} URI: {scrub(str(exc), uri)}") from None


def validate_mongo(uri: str) -> Parts:
    """``mongodb://`` (hosts with optional ports) or ``mongodb+srv://`` (one host, no port)."""
    parts = split(uri, MONGO_SCHEMES, multi_host=True)
    if parts.scheme == "mongodb+srv://" and (len(parts.hosts) != 1 or parts.hosts[0][1] is not None):
        raise ValueError("mongodb+srv:// takes exactly one host name and no port")
    _library(lambda u: _validate_uri(u, validate=True, warn=False), uri, "MongoDB")
    return parts


def validate_redis(uri: str) -> Parts:
    """``redis://``, ``rediss://`` (one host, a numeric database) or ``unix://`` (a path)."""
    parts = split(uri, REDIS_SCHEMES)
    if parts.scheme == "unix://" and not parts.rest.startswith("/"):
        raise ValueError("unix:// needs the socket's path (unix:///run/redis.sock)")
    db = parts.rest.split("?", 1)[0].strip("/")
    if parts.scheme != "unix://" and db and not db.isdigit():
        raise ValueError("has a database that is not a number (redis://host:6379/0)")
    _library(parse_url, uri, "Redis")
    return parts


def validate_amqp(uri: str) -> Parts:
    """``amqp://`` or ``amqps://`` with one host."""
    parts = split(uri, AMQP_SCHEMES)
    _library(URL, uri, "AMQP")
    return parts
