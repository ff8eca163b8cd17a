"""A scripted change-stream server on MockupDB, for wire-level tests of the PyMongo change feed.

MockupDB gives the socket server and the OP_MSG / OP_QUERY framing (one thread per connection);
this module answers, from a handler running on those threads:

* the handshake and monitoring (``ismaster`` / ``hello``) as the primary of replica set ``rs0``,
  wire version 21, no ``topologyVersion`` (so the driver polls instead of streaming);
* ``aggregate`` with a leading ``$changeStream`` and ``getMore`` on the cursors it opened, from a
  per-collection change log. ``resumeAfter`` continues strictly after the event (or post-batch
  token) it names; an unknown token answers 286 ChangeStreamHistoryLost, as a server does for a
  token that fell off the oplog. Without ``resumeAfter`` the stream starts at the end of the log.
  Every batch carries ``postBatchResumeToken``: the last event's token, or for an empty batch a
  fresh high-water-mark token (which ``resumeAfter`` accepts as well). At most ``batch_limit``
  events per batch, so that tests see several batches;
* ``killCursors`` and ``endSessions`` with ``{ok: 1}`` so that closing never hangs;
* ``buildInfo`` with ``version`` (default 7.0.2: a server that has ``$changeStreamSplitLargeEvent``).

The log holds what the server sends *after* the user's pipeline: the server does not evaluate
``$match``; a test appends exactly the events the stream is expected to return, fragments of a
split event included (``split_update``).

Faults are queued per command name with ``inject`` and consumed by the next request of that name,
before it runs: ``HANGUP`` closes the connection without a reply; a ``ServerError`` is replied as
``{ok: 0, code, errmsg, errorLabels}``.

Every request but the handshake is recorded (``commands``), in arrival order, as a plain ``dict``;
every post-batch resume token sent, in ``post_batch_tokens``.
"""

from __future__ import annotations

import contextlib
import itertools
import socket
import threading
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from bson import Int64, Timestamp
from mockupdb import MockupDB

Doc = dict[str, Any]

DB = "social"
EPOCH = 1_700_000_000


@dataclass(frozen=True)
class ServerError:
    code: int
    errmsg: str = "scripted failure"
    labels: tuple[str, ...] = ()


class _Hangup:
    def __repr__(self) -> str:
        return "HANGUP"


HANGUP = _Hangup()
Fault = ServerError | _Hangup


@dataclass
class _Entry:
    """One log entry. ``closes`` ends every cursor that reaches it (a drop/rename's invalidate)."""

    seq: int
    event: Doc | None  # None: the invalidate was filtered out by the user's pipeline
    token: Doc
    closes: bool = False


@dataclass
class _Cursor:
    coll: str
    pos: int  # index of the next log entry to return
    closed: bool = False


@dataclass
class ChangeStreamServer:
    batch_limit: int = 2
    version: str = "7.0.2"
    server: MockupDB = field(init=False)
    commands: list[Doc] = field(default_factory=list)
    post_batch_tokens: list[Doc] = field(default_factory=list)
    _logs: dict[str, list[_Entry]] = field(default_factory=dict)
    _positions: dict[str, tuple[str, int]] = field(default_factory=dict)  # token _data -> (coll, pos)
    _cursors: dict[int, _Cursor] = field(default_factory=dict)
    _faults: dict[str, deque[Fault]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _seq: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _hwm: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _cursor_ids: itertools.count[int] = field(default_factory=lambda: itertools.count(7001))

    def __post_init__(self) -> None:
        self.server = MockupDB(auto_ismaster=None)
        self.server.autoresponds(self._handle)

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> str:
        self.server.run()
        return self.uri

    def stop(self) -> None:
        # MockupDB's accept loop polls select() once a second; flag it and wake it with a
        # connection so that stop() joins it at once instead of waiting up to a second.
        self.server._stopped = True
        with contextlib.suppress(OSError), socket.create_connection(self.server.address, timeout=1):
            pass
        self.server.stop()

    @property
    def uri(self) -> str:
        return str(self.server.uri)

    # -- scripting -------------------------------------------------------------------------------

    def insert(self, coll: str, key: str, **fields: Any) -> Doc:
        """Append an insert event for document ``key`` and return it (as the cursor will see it)."""
        return self._append(coll, "insert", key, {"_id": key, **fields}, {})

    def update(self, coll: str, key: str, updated: Doc, full_document: Doc) -> Doc:
        """Append an update event, with the looked-up document (``fullDocument: updateLookup``)."""
        return self._append(
            coll,
            "update",
            key,
            {"_id": key, **full_document},
            {"updateDescription": {"updatedFields": updated, "removedFields": []}},
        )

    def split_update(self, coll: str, key: str, updated: Doc, full_document: Doc, of: int) -> list[Doc]:
        """Append an update event as ``of`` fragments, as ``$changeStreamSplitLargeEvent`` sends it.

        Each fragment has its own token and ``splitEvent: {fragment, of}``; the top-level fields are
        dealt out in order (the last fragment holds ``fullDocument``). Returns the fragments.
        """
        whole = self.update(coll, key, updated, full_document)
        with self._lock:  # ``update`` logged the whole event: replace it by its fragments
            log = self._logs[coll]
            log.pop()
            self._positions.pop(whole["_id"]["_data"])
        fields = [(k, v) for k, v in whole.items() if k != "_id"]
        per = -(-len(fields) // of)
        fragments: list[Doc] = []
        for i in range(of):
            seq = next(self._seq)
            chunk = fields[i * per : (i + 1) * per] if i < of - 1 else fields[i * per :]
            fragment = {"_id": self._token(seq), "splitEvent": {"fragment": i + 1, "of": of}, **dict(chunk)}
            fragments.append(fragment)
            with self._lock:
                log.append(_Entry(seq, fragment, fragment["_id"]))
                self._positions[fragment["_id"]["_data"]] = (coll, len(log))
        return fragments

    def drop(self, coll: str, *, deliver_invalidate: bool) -> Doc:
        """Append the collection's drop: every cursor reaching it ends (cursor id 0).

        ``deliver_invalidate`` says whether the ``invalidate`` event passes the user's pipeline.
        MongoDB evaluates the user's ``$match`` on it too: a filter on operationType that does not
        list "invalidate" removes it, and the cursor still ends, with an empty batch whose
        post-batch resume token is the invalidate's.
        """
        seq = next(self._seq)
        token = self._token(seq)
        event = {
            "_id": token,
            "operationType": "invalidate",
            "clusterTime": Timestamp(EPOCH + seq, 1),
            "wallTime": datetime.fromtimestamp(EPOCH + seq, UTC).replace(tzinfo=None),
        }
        with self._lock:
            log = self._logs.setdefault(coll, [])
            log.append(_Entry(seq, event if deliver_invalidate else None, token, closes=True))
            self._positions[token["_data"]] = (coll, len(log))
        return event

    def inject(self, command: str, *faults: Fault) -> None:
        """Queue faults for the next requests named ``command`` (one fault per request)."""
        with self._lock:
            self._faults.setdefault(command, deque()).extend(faults)

    def pending_faults(self) -> int:
        with self._lock:
            return sum(len(q) for q in self._faults.values())

    def named(self, name: str) -> list[Doc]:
        """The recorded requests of one command, in order."""
        with self._lock:
            return [c for c in self.commands if next(iter(c)) == name]

    # -- internals ---------------------------------------------------------------------------

    @staticmethod
    def _token(seq: int, hwm: int = 0) -> Doc:
        # Shaped like a real KeyString resume token: hex, sorting in log order.
        return {"_data": f"82{EPOCH + seq:08X}{seq:08X}2B04{hwm:04X}"}

    def _append(self, coll: str, op: str, key: str, full_document: Doc, extra: Doc) -> Doc:
        seq = next(self._seq)
        event: Doc = {
            "_id": self._token(seq),
            "operationType": op,
            "clusterTime": Timestamp(EPOCH + seq, 1),
            "wallTime": datetime.fromtimestamp(EPOCH + seq, UTC).replace(tzinfo=None),
            "ns": {"db": DB, "coll": coll},
            "documentKey": {"_id": key},
            "fullDocument": full_document,
            **extra,
        }
        with self._lock:
            log = self._logs.setdefault(coll, [])
            log.append(_Entry(seq, event, event["_id"]))
            self._positions[event["_id"]["_data"]] = (coll, len(log))
        return event

    def _handle(self, request: Any) -> bool:
        name = getattr(request, "command_name", None)
        if name is None:
            return False  # not a command: left in MockupDB's queue, which no test reads
        doc = dict(request.doc)
        lname = name.lower()
        if lname in ("ismaster", "hello"):
            return bool(request.replies(self._hello()))
        with self._lock:
            self.commands.append(doc)
            queue = self._faults.get(name)
            fault = queue.popleft() if queue else None
        if fault is HANGUP:
            return bool(request.hangup())
        if isinstance(fault, ServerError):
            reply: Doc = {"ok": 0, "code": fault.code, "errmsg": fault.errmsg}
            if fault.labels:
                reply["errorLabels"] = list(fault.labels)
            return bool(request.replies(reply))
        with self._lock:
            if name == "aggregate":
                reply = self._aggregate(doc)
            elif name == "getMore":
                reply = self._get_more(doc)
            elif name == "killCursors":
                for cid in doc.get("cursors", []):
                    self._cursors.pop(int(cid), None)
                reply = {"cursorsKilled": doc.get("cursors", []), "ok": 1}
            elif name == "endSessions":
                reply = {"ok": 1}
            elif lname == "buildinfo":
                numbers = [int(p) for p in self.version.split(".")]
                reply = {"version": self.version, "versionArray": [*numbers, 0], "ok": 1}
            else:
                reply = {"ok": 0, "code": 59, "errmsg": f"no such command: {name!r}"}
        return bool(request.replies(reply))

    def _hello(self) -> Doc:
        me = self.server.address_string
        return {
            "ismaster": True,
            "isWritablePrimary": True,
            "helloOk": True,
            "setName": "rs0",
            "hosts": [me],
            "me": me,
            "minWireVersion": 0,
            "maxWireVersion": 21,
            "logicalSessionTimeoutMinutes": 30,
            "maxBsonObjectSize": 16777216,
            "maxMessageSizeBytes": 48000000,
            "maxWriteBatchSize": 100000,
            "ok": 1,
        }

    def _aggregate(self, doc: Doc) -> Doc:
        coll = doc["aggregate"]
        pipeline = doc.get("pipeline") or [{}]
        stage = pipeline[0].get("$changeStream")
        if stage is None:
            return {"ok": 0, "code": 40324, "errmsg": "only change streams are scripted"}
        log = self._logs.setdefault(coll, [])
        token = stage.get("resumeAfter")
        if token is None:
            pos = len(log)
        else:
            found = self._positions.get(token.get("_data"))
            if found is None or found[0] != coll:
                return {
                    "ok": 0,
                    "code": 286,
                    "codeName": "ChangeStreamHistoryLost",
                    "errmsg": "Resume of change stream was not possible, as the resume point may no "
                    "longer be in the oplog.",
                }
            pos = found[1]
        cur = _Cursor(coll, pos)
        cid = next(self._cursor_ids)
        self._cursors[cid] = cur
        return self._batch(cid, cur, "firstBatch")

    def _get_more(self, doc: Doc) -> Doc:
        cid = int(doc["getMore"])
        cur = self._cursors.get(cid)
        if cur is None or cur.coll != doc.get("collection"):
            return {"ok": 0, "code": 43, "codeName": "CursorNotFound", "errmsg": f"cursor id {cid} not found"}
        return self._batch(cid, cur, "nextBatch")

    def _batch(self, cid: int, cur: _Cursor, key: str) -> Doc:
        log = self._logs[cur.coll]
        events: list[Doc] = []
        last_token: Doc | None = None
        while cur.pos < len(log) and len(events) < self.batch_limit:
            entry = log[cur.pos]
            cur.pos += 1
            last_token = entry.token
            if entry.event is not None:
                events.append(entry.event)
            if entry.closes:
                cur.closed = True
                break
        if last_token is None:
            # Nothing new: a high-water mark, sorting between the last entry and the next one.
            hwm = self._token(log[cur.pos - 1].seq if cur.pos else 0, hwm=next(self._hwm))
            self._positions[hwm["_data"]] = (cur.coll, cur.pos)
            last_token = hwm
        self.post_batch_tokens.append(last_token)
        if cur.closed:
            self._cursors.pop(cid, None)
            cid = 0
        return {
            "cursor": {
                "id": Int64(cid),
                "ns": f"{DB}.{cur.coll}",
                key: events,
                "postBatchResumeToken": last_token,
            },
            "ok": 1,
        }
