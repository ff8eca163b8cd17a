"""A connection failure's cause in a few words, for ``check`` and start-up errors.

The clients wrap the socket's error in their own (PyMongo flattens it into a message), so the
cause is read from the exception chain first and the message second. The message itself is never
shown: it may hold a URI.
"""

from __future__ import annotations

import socket
import ssl

from pymongo.errors import OperationFailure

_AUTH_CODES = {18, 11}  # MongoDB: AuthenticationFailed, UserNotFound
_BY_TEXT = (
    # The order matters: a TLS failure often reads as a timeout or a reset too.
    (("ssl", "certificate", "tls handshake", "wrong_version_number"), "TLS handshake failed"),
    (
        ("authentication failed", "access_refused", "invalid username-password", "wrongpass", "noauth"),
        "authentication failed",
    ),
    (("errno 111", "connection refused", "connect call failed"), "connection refused"),
    (
        ("name or service not known", "nodename nor servname", "name resolution", "errno -2", "errno -3"),
        "host name not found",
    ),
    (("timed out", "timeout", "no servers found yet"), "timed out"),
    (
        ("connection.close", "not_allowed", "vhost"),
        "the broker closed the connection (virtual host missing or not permitted?)",
    ),
)


def cause(exc: BaseException) -> str:
    """``connection refused``, ``timed out``, ``authentication failed``, ``TLS handshake failed``…"""
    chain = _chain(exc)
    for link in chain:
        if isinstance(link, OperationFailure) and link.code in _AUTH_CODES:
            return "authentication failed"
        if isinstance(link, ssl.SSLError | ssl.CertificateError):
            return "TLS handshake failed"
        if isinstance(link, ConnectionRefusedError):
            return "connection refused"
        if isinstance(link, socket.gaierror):
            return "host name not found"
    text = " ".join(f"{type(link).__name__} {link}" for link in chain).lower()
    for needles, meaning in _BY_TEXT:
        if any(needle in text for needle in needles):
            return meaning
    if any(isinstance(link, TimeoutError) for link in chain):
        return "timed out"
    return type(exc).__name__


def _chain(exc: BaseException) -> list[BaseException]:
    seen: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in seen:
        seen.append(link)
        link = link.__cause__ or link.__context__
    return seen
