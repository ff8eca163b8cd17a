"""WireMongo: an in-process MongoDB *wire-protocol stand-in* for tests.

This is a TEST TOOL, not MongoDB.  MockupDB provides the socket server and the
OP_MSG / OP_QUERY framing (one thread per connection); mongomock provides the
query/update semantics.  It exists so that tests can run the real daemon
process with real PyMongo ``AsyncMongoClient`` adapters on a machine without a
MongoDB server.  The test process owns it, so it outlives a SIGKILLed worker.

URI: ``start()`` returns ``mongodb://127.0.0.1:PORT/?replicaSet=rs0`` (the
driver discovers a single replica-set primary; retryable writes/reads and
change streams behave as against a one-node replica set).
``wm.direct_uri`` (``...?directConnection=true``) works as well.

Emulated:
  * handshake: ``hello`` / ``ismaster`` / ``isMaster`` answered as an rs0
    primary, maxWireVersion 21, ``helloOk``; no ``topologyVersion`` (so the
    driver polls instead of using the streaming/exhaust monitor protocol);
  * ``ping``, ``buildInfo``, ``endSessions``, ``killCursors``, ``listIndexes``,
    ``createIndexes``, ``listCollections``, ``create``, ``drop``,
    ``dropDatabase``, ``count``, ``distinct``;
  * CRUD via one mongomock backend: ``find`` (filter, projection, sort, skip,
    limit, batchSize, singleBatch) + ``getMore``; ``insert`` (``writeErrors``
    code 11000 on duplicate keys, ordered/unordered); ``update`` (q/u/upsert/
    multi, operator, replacement and -- as far as mongomock goes -- pipeline
    updates; n/nModified/upserted); ``delete``; ``findAndModify`` (query, sort,
    update, remove, upsert, new, fields); ``aggregate`` (whatever mongomock's
    aggregate supports);
  * change streams: ``aggregate`` with a leading ``$changeStream`` on a
    collection, a database or the cluster (``allChangesForCluster``).  Every
    write served here (or through the test hooks) appends to one ordered change
    log.  Events: insert/update/replace/delete (+ ``invalidate`` via
    ``wm.invalidate``) with ``_id`` = ``{_data: <hex>}`` (sorts in log order),
    clusterTime, wallTime, ns, documentKey, fullDocument (insert/replace, and
    update with ``fullDocument: "updateLookup"`` -- looked up at read time),
    updateDescription (computed by diffing before/after; nested changes are
    reported as dotted paths, arrays as whole fields, truncatedArrays always
    empty).  Pre-images: a collection created (``create``, or the
    ``create_collection`` hook) or modified (``collMod``) with
    ``changeStreamPreAndPostImages: {enabled: true}`` records the document
    before each update/replace/delete while enabled (``listCollections`` shows
    the option); ``fullDocumentBeforeChange: "whenAvailable"`` adds it to those
    events (null when none was recorded), ``"required"`` fails the command with
    47 NoMatchingDocument when one is missing, as MongoDB 6.0+ does.  ``resumeAfter`` / ``startAfter`` / ``startAtOperationTime``;
    unknown or foreign tokens -> 286 ChangeStreamHistoryLost; resumeAfter an
    invalidate -> 260.  Every batch carries ``postBatchResumeToken``.  getMore
    blocks up to maxTimeMS (default 1000) for new events (``stop()`` drops such
    a parked request without a reply, so the driver sees a resumable network
    error).  Extra stages (tests/support/wire_stages.py): ``$match``
    (mongomock), inclusion ``$project``, ``$set``/``$addFields`` with a small
    expression subset (``$bsonSize``, ``$cond``, ``$$REMOVE``, ...), and
    ``$changeStreamSplitLargeEvent``; a pipeline that changes ``_id`` -> 280.
    Size limit: an event over ``max_event_bytes`` (default 16 MiB + 16 KiB;
    tests lower it) fails the command with 10334 BSONObjectTooLarge, or with
    the split stage is sent as fragments (``splitEvent``, each with its own
    token; resuming after a fragment continues with the next one).
    ``buildInfo`` reports ``version`` (default 7.0.0);
  * test hooks (``insert``/``update_one``/... and ``db(name)``) that write
    through the same code path, and fault injection (``fail_next``,
    ``hangup_next``; both act *before* the command executes).

Not emulated: authentication, TLS, compression, transactions and session
semantics (lsid/txnNumber are ignored; a retried write is simply re-executed),
read/write concerns, causal consistency, multiple members / elections / any
secondary, the oplog window (the change log is unbounded and lives until the
process ends; after ``stop()``/``start()`` data and log survive but cursors
don't), post-images (``fullDocument: whenAvailable|required``), pre-image
expiry, change events for DDL (drop, rename, ...),
change-stream stages and expressions beyond the above, ``$out``/``$merge``,
sharding, size limits outside change events, exhaust cursors, unacknowledged-write error reporting.
Unknown commands reply 59 CommandNotFound.
"""

from __future__ import annotations

import contextlib
import copy
import functools
import itertools
import random
import re
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import TracebackType
from typing import Any

import mongomock
from bson import ObjectId
from bson.int64 import Int64
from bson.timestamp import Timestamp
from mockupdb import MockupDB, OpMsg, Request
from mongomock.filtering import filter_applies as _filter_applies
from pymongo.errors import CollectionInvalid, DuplicateKeyError, OperationFailure

from tests.support.wire_stages import (
    MAX_EVENT_BYTES,
    StageError,
    Unsupported,
    apply_stages,
    bson_size,
    check_stages,
    split_event,
    too_large,
)

Doc = dict[str, Any]

MAX_WIRE_VERSION = 21
_CODE_NAMES = {
    2: "BadValue",
    6: "HostUnreachable",
    8: "UnknownError",
    26: "NamespaceNotFound",
    43: "CursorNotFound",
    47: "NoMatchingDocument",
    48: "NamespaceExists",
    59: "CommandNotFound",
    91: "ShutdownInProgress",
    115: "CommandNotSupported",
    189: "PrimarySteppedDown",
    260: "InvalidResumeToken",
    280: "ChangeStreamFatalError",
    286: "ChangeStreamHistoryLost",
    10334: "BSONObjectTooLarge",
    10107: "NotWritablePrimary",
    11000: "DuplicateKey",
    11600: "InterruptedAtShutdown",
}
_TOKEN_RE = re.compile(r"82([0-9A-F]{8})([0-9A-F]{16})([0-9A-F]{4})?")  # epoch, seq, fragment


class CommandError(Exception):
    """A server-style command failure; ``reply()`` renders the ``ok: 0`` document."""

    def __init__(self, code: int, errmsg: str, labels: list[str] | None = None) -> None:
        super().__init__(f"{errmsg} (code {code})")
        self.code, self.errmsg, self.labels = code, errmsg, list(labels or [])

    def reply(self) -> Doc:
        doc: Doc = {
            "ok": 0,
            "errmsg": self.errmsg,
            "code": self.code,
            "codeName": _CODE_NAMES.get(self.code, f"Location{self.code}"),
        }
        if self.labels:
            doc["errorLabels"] = self.labels
        return doc


@dataclass
class _Event:
    seq: int
    op: str
    db: str
    coll: str
    key: Any
    cluster_time: Timestamp
    wall_time: datetime
    full: Doc | None = None
    desc: Doc | None = None
    pre: Doc | None = None  # the pre-image, when the collection recorded one


@dataclass
class _FindCursor:
    ns: str
    docs: list[Doc]


@dataclass
class _StreamCursor:
    ns: str
    db: str | None
    coll: str | None
    pos: int  # number of log entries already scanned
    full_document: str
    stages: list[Doc]
    before_change: str = "off"  # fullDocumentBeforeChange
    split: bool = False  # the pipeline ends with $changeStreamSplitLargeEvent
    skip_fragments: int = 0  # resumed after this fragment of the first event scanned
    pending: list[Doc] = field(default_factory=list)  # fragments not yet sent
    killed: bool = False


@dataclass
class _Fault:
    command: str
    error: CommandError | None  # None means "hang up"


def _matches(flt: Mapping[str, Any], doc: Mapping[str, Any]) -> bool:
    return bool(_filter_applies(flt, doc))  # type: ignore[no-untyped-call]  # mongomock matcher


def _now() -> datetime:
    now = datetime.now(UTC)
    return now.replace(microsecond=now.microsecond - now.microsecond % 1000)


def _diff(before: Mapping[str, Any], after: Mapping[str, Any], prefix: str = "") -> tuple[Doc, list[str]]:
    updated: Doc = {}
    removed: list[str] = [prefix + k for k in before if k not in after]
    for k, v in after.items():
        old = before.get(k, _MISSING)
        if isinstance(v, Mapping) and isinstance(old, Mapping):
            sub_u, sub_r = _diff(old, v, f"{prefix}{k}.")
            updated.update(sub_u)
            removed += sub_r
        elif old is _MISSING or type(old) is not type(v) or old != v:
            updated[prefix + k] = copy.deepcopy(v)
    return updated, removed


_MISSING = object()


class WireDb:
    """Thin synchronous per-database view of the WireMongo test hooks."""

    def __init__(self, wm: WireMongo, name: str) -> None:
        self._wm, self.name = wm, name

    def insert(self, coll: str, doc: Mapping[str, Any]) -> Any:
        return self._wm.insert(self.name, coll, doc)

    def update_one(self, coll: str, filter: Mapping[str, Any], update: Any, upsert: bool = False) -> int:
        return self._wm.update_one(self.name, coll, filter, update, upsert)

    def replace_one(
        self, coll: str, filter: Mapping[str, Any], doc: Mapping[str, Any], upsert: bool = False
    ) -> int:
        return self._wm.replace_one(self.name, coll, filter, doc, upsert)

    def delete_one(self, coll: str, filter: Mapping[str, Any]) -> int:
        return self._wm.delete_one(self.name, coll, filter)

    def find(self, coll: str, filter: Mapping[str, Any] | None = None) -> list[Doc]:
        return self._wm.find(self.name, coll, filter)

    def find_one(self, coll: str, filter: Mapping[str, Any] | None = None) -> Doc | None:
        return self._wm.find_one(self.name, coll, filter)


class WireMongo:
    """MongoDB wire-protocol stand-in for tests (see module docstring)."""

    def __init__(
        self,
        port: int = 0,
        set_name: str = "rs0",
        version: str = "7.0.0",
        max_event_bytes: int = MAX_EVENT_BYTES,
    ) -> None:
        self.port, self.set_name = port, set_name
        self.version, self.max_event_bytes = version, max_event_bytes
        self.backend: Any = mongomock.MongoClient()  # direct writes here bypass the change log
        self._cond = threading.Condition(threading.Lock())  # guards backend, log, cursors, faults
        self._log: list[_Event] = []
        self._cursors: dict[int, _FindCursor | _StreamCursor] = {}
        self._faults: list[_Fault] = []
        self._options: dict[tuple[str, str], Doc] = {}  # collection options (create, collMod)
        self._counts: Counter[str] = Counter()
        self._epoch = random.getrandbits(32)
        self._cursor_ids = itertools.count(random.randint(1 << 40, 1 << 50))
        self._conn_ids = itertools.count(1)
        self._last_ts = Timestamp(int(time.time()), 0)
        self._server: MockupDB | None = None
        self._stopped = True
        self._handlers: dict[str, Callable[[str, Doc], Doc]] = {
            "hello": self._hello,
            "ismaster": self._hello,
            "ping": self._ok,
            "endsessions": self._ok,
            "buildinfo": self._build_info,
            "killcursors": self._kill_cursors,
            "find": self._find,
            "getmore": self._get_more,
            "insert": self._insert_cmd,
            "update": self._update_cmd,
            "delete": self._delete_cmd,
            "findandmodify": self._find_and_modify,
            "aggregate": self._aggregate,
            "count": self._count,
            "distinct": self._distinct,
            "listindexes": self._list_indexes,
            "createindexes": self._create_indexes,
            "listcollections": self._list_collections,
            "create": self._create,
            "collmod": self._coll_mod,
            "drop": self._drop,
            "dropdatabase": self._drop_database,
        }

    # ---------------------------------------------------------------- lifecycle
    def start(self) -> str:
        """Start serving (again: same port, data and change log kept) and return ``uri``."""
        server = MockupDB(port=self.port or None, request_timeout=int(1e6))
        server._address = ("127.0.0.1", self.port or None)  # MockupDB hard-codes "localhost"
        server.autoresponds(self._handle)
        self._stopped = False
        self.port = server.run()
        # MockupDB's accept thread dies with EBADF if stop() closes the listening socket before the
        # thread's setblocking() has finished; only return once it has accepted a probe connection.
        with socket.create_connection(("127.0.0.1", self.port), 5):
            deadline = time.monotonic() + 5
            while not server._server_socks and time.monotonic() < deadline:
                time.sleep(0.001)
        self._server = server
        return self.uri

    def stop(self) -> None:
        """Stop serving; open cursors are dropped, connections closed."""
        if self._server is None:
            return
        with self._cond:
            self._stopped = True
            self._cursors.clear()
            self._cond.notify_all()
        server, self._server = self._server, None
        # MockupDB's accept loop polls select() with a 1 s timeout; flag it and poke it with a
        # throwaway connection so stop() doesn't wait out that second.
        server._stopped = True
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", self.port), 1):
            pass
        server.stop()

    def __enter__(self) -> WireMongo:
        self.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def uri(self) -> str:
        return f"mongodb://{self.address}/?replicaSet={self.set_name}"

    @property
    def direct_uri(self) -> str:
        return f"mongodb://{self.address}/?directConnection=true"

    # ---------------------------------------------------------------- test hooks
    def db(self, name: str) -> WireDb:
        return WireDb(self, name)

    def insert(self, db: str, coll: str, doc: Mapping[str, Any]) -> Any:
        """Insert one document (logged as an ``insert`` event); returns its ``_id``."""
        doc = dict(doc)
        doc.setdefault("_id", ObjectId())
        with self._cond:
            reply = self._insert_docs(db, coll, [doc], ordered=True)
        if reply.get("writeErrors"):
            raise CommandError(11000, reply["writeErrors"][0]["errmsg"])
        return doc["_id"]

    def update_one(
        self, db: str, coll: str, filter: Mapping[str, Any], update: Any, upsert: bool = False
    ) -> int:
        """Apply an operator update (or pipeline) to one document; returns nModified (+1 if upserted)."""
        with self._cond:
            _, modified, upserted = self._update_docs(db, coll, dict(filter), update, False, upsert)
        return modified + len(upserted)

    def update_many(self, db: str, coll: str, filter: Mapping[str, Any], update: Any) -> int:
        with self._cond:
            return self._update_docs(db, coll, dict(filter), update, True, False)[1]

    def replace_one(
        self, db: str, coll: str, filter: Mapping[str, Any], doc: Mapping[str, Any], upsert: bool = False
    ) -> int:
        if any(k.startswith("$") for k in doc):
            raise ValueError("replacement document must not contain update operators")
        return self.update_one(db, coll, filter, dict(doc), upsert)

    def delete_one(self, db: str, coll: str, filter: Mapping[str, Any]) -> int:
        with self._cond:
            return self._delete_docs(db, coll, dict(filter), 1)

    def find(self, db: str, coll: str, filter: Mapping[str, Any] | None = None) -> list[Doc]:
        with self._cond:
            return [dict(d) for d in self.backend[db][coll].find(dict(filter or {}))]

    def find_one(self, db: str, coll: str, filter: Mapping[str, Any] | None = None) -> Doc | None:
        found = self.find(db, coll, filter)
        return found[0] if found else None

    def create_collection(self, db: str, coll: str, pre_images: bool = False) -> None:
        """Create ``db.coll``, recording pre-images (``changeStreamPreAndPostImages``) if asked."""
        cmd: Doc = {"create": coll}
        if pre_images:
            cmd["changeStreamPreAndPostImages"] = {"enabled": True}
        with self._cond:
            self._create(db, cmd)

    def invalidate(self, db: str, coll: str) -> None:
        """Append an ``invalidate`` event: streams on db.coll return it and their cursor ends."""
        with self._cond:
            self._emit("invalidate", db, coll, None)

    def fail_next(
        self, command_name: str, code: int, labels: list[str] | None = None, errmsg: str = ""
    ) -> None:
        """Make the next ``command_name`` request (case-insensitive) fail with ``code``."""
        err = CommandError(code, errmsg or f"WireMongo injected failure for {command_name}", labels)
        with self._cond:
            self._faults.append(_Fault(command_name.lower(), err))

    def hangup_next(self, command_name: str) -> None:
        """Close the connection instead of answering the next ``command_name`` request."""
        with self._cond:
            self._faults.append(_Fault(command_name.lower(), None))

    def command_count(self, command_name: str) -> int:
        """How many ``command_name`` requests were received (case-insensitive)."""
        with self._cond:
            return self._counts[command_name.lower()]

    def change_events(self) -> list[Doc]:
        """The whole change log rendered as change events (no lookups)."""
        with self._cond:
            return [self._event_doc(ev, "default") for ev in self._log]

    # ---------------------------------------------------------------- dispatch
    def _handle(self, request: Request) -> bool:
        # MockupDB runs every handler while holding its server-wide lock; release it so that
        # connections are served concurrently and a waiting getMore doesn't stall the others.
        with request.server._unlock():
            self._serve(request)
        return True

    def _serve(self, request: Request) -> None:
        name = str(getattr(request, "command_name", None) or "")
        key = name.lower()
        cmd: Doc = request.doc if name else {}
        db = str(cmd.get("$db") or request.namespace or "admin")
        with self._cond:
            self._counts[key] += 1
            fault = next((f for f in self._faults if f.command == key), None)
            if fault is not None:
                self._faults.remove(fault)
        if fault is not None and fault.error is None:
            with contextlib.suppress(OSError):  # MockupDB's hangup() calls getpeername()
                request.hangup()
            return
        try:
            if fault is not None and fault.error is not None:
                raise fault.error
            handler = self._handlers.get(key)
            if handler is None:
                raise CommandError(59, f"no such command: '{name}' (WireMongo test stand-in)")
            with self._cond:
                reply = handler(db, cmd)
        except CommandError as exc:
            reply = exc.reply()
        except StageError as exc:
            reply = CommandError(exc.code, exc.errmsg).reply()
        except Unsupported as exc:
            reply = CommandError(40324, f"WireMongo: {exc}").reply()
        except OperationFailure as exc:
            reply = CommandError(exc.code or 2, str(exc)).reply()
        except NotImplementedError as exc:
            reply = CommandError(115, f"not emulated by WireMongo/mongomock: {exc}").reply()
        except Exception as exc:
            reply = CommandError(8, f"WireMongo internal error: {exc!r}").reply()
        if self._stopped or (isinstance(request, OpMsg) and request.flags & 2):
            return  # stopping: let stop() drop the connection (a network error is resumable); moreToCome
        with contextlib.suppress(OSError):  # client gone (e.g. SIGKILLed worker); MockupDB's loop ends
            request.reply(reply)

    # ---------------------------------------------------------------- helpers
    def _coll(self, db: str, name: str) -> Any:
        return self.backend[db][name]

    def _next_ts(self) -> Timestamp:
        now, last = int(time.time()), self._last_ts
        self._last_ts = Timestamp(now, 1) if now > last.time else Timestamp(last.time, last.inc + 1)
        return self._last_ts

    def _token(self, seq: int, fragment: int = 0) -> Doc:
        suffix = f"{fragment:04X}" if fragment else ""
        return {"_data": f"82{self._epoch:08X}{seq:016X}{suffix}"}

    @staticmethod
    def _token_fragment(token: Any) -> int:
        m = _TOKEN_RE.fullmatch(str(token.get("_data", "")))
        return int(m[3], 16) if m and m[3] else 0

    def _parse_token(self, token: Any) -> int:
        data = token.get("_data") if isinstance(token, Mapping) else None
        m = _TOKEN_RE.fullmatch(data) if isinstance(data, str) else None
        if not m or int(m[1], 16) != self._epoch or int(m[2], 16) > len(self._log):
            raise CommandError(
                286,
                "Resume of change stream was not possible, as the resume point may "
                f"no longer be in the oplog (WireMongo: unknown token {token!r})",
            )
        return int(m[2], 16)

    def _emit(
        self,
        op: str,
        db: str,
        coll: str,
        key: Any,
        full: Doc | None = None,
        desc: Doc | None = None,
        pre: Doc | None = None,
    ) -> None:
        ev = _Event(len(self._log) + 1, op, db, coll, key, self._next_ts(), _now(), copy.deepcopy(full), desc)
        ev.pre = copy.deepcopy(pre)
        self._log.append(ev)
        self._cond.notify_all()

    def _pre_image(self, db: str, coll: str, doc: Doc | None) -> Doc | None:
        """``doc`` if ``db.coll`` records pre-images now, else None."""
        images = self._options.get((db, coll), {}).get("changeStreamPreAndPostImages") or {}
        return copy.deepcopy(doc) if doc is not None and images.get("enabled") is True else None

    def _new_cursor(self, cursor: _FindCursor | _StreamCursor) -> int:
        cid = next(self._cursor_ids)
        self._cursors[cid] = cursor
        return cid

    def _cursor_reply(self, ns: str, docs: list[Doc], batch_size: Any, single: bool = False) -> Doc:
        n = 101 if batch_size is None else int(batch_size)
        first, rest = docs[:n], docs[n:]
        cid = self._new_cursor(_FindCursor(ns, rest)) if rest and not single else 0
        return {"cursor": {"id": Int64(cid), "ns": ns, "firstBatch": first}, "ok": 1}

    def _target_ids(self, coll: Any, q: Doc, multi: bool, sort: Any = None) -> list[Any]:
        cur = coll.find(q, {"_id": 1})
        if sort:
            cur = cur.sort(list(sort.items()))
        return [d["_id"] for d in (cur if multi else cur.limit(1))]

    # ---------------------------------------------------------------- write core
    def _insert_docs(self, db: str, cname: str, docs: list[Doc], ordered: bool) -> Doc:
        coll, n, errors = self._coll(db, cname), 0, []
        for i, doc in enumerate(docs):
            doc.setdefault("_id", ObjectId())
            try:
                coll.insert_one(doc)
            except DuplicateKeyError as exc:
                errors.append(
                    {
                        "index": i,
                        "code": 11000,
                        "keyValue": {"_id": doc["_id"]},
                        "errmsg": f"E11000 duplicate key error collection: {db}.{cname} ({exc})",
                    }
                )
                if ordered:
                    break
                continue
            n += 1
            self._emit("insert", db, cname, doc["_id"], full=coll.find_one({"_id": doc["_id"]}))
        reply: Doc = {"n": n, "ok": 1}
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _update_docs(
        self, db: str, cname: str, q: Doc, u: Any, multi: bool, upsert: bool, sort: Any = None
    ) -> tuple[int, int, list[Any]]:
        """Returns (matched, modified, [upserted _id]) and logs one event per changed document."""
        coll = self._coll(db, cname)
        replace = isinstance(u, Mapping) and not any(k.startswith("$") for k in u)
        ids = self._target_ids(coll, q, multi, sort)
        if not ids:
            if not upsert:
                return 0, 0, []
            res = coll.replace_one(q, u, upsert=True) if replace else coll.update_one(q, u, upsert=True)
            doc = coll.find_one({"_id": res.upserted_id})
            self._emit("insert", db, cname, res.upserted_id, full=doc)
            return 0, 0, [res.upserted_id]
        modified = 0
        for _id in ids:
            before = coll.find_one({"_id": _id})
            flt = {"$and": [q, {"_id": _id}]} if "_id" in q else {**q, "_id": _id}
            (coll.replace_one if replace else coll.update_one)(flt, u)
            after = coll.find_one({"_id": _id})
            if after is None or after == before:
                continue
            modified += 1
            pre = self._pre_image(db, cname, before)
            if replace:
                self._emit("replace", db, cname, _id, full=after, pre=pre)
            else:
                upd, rem = _diff(before or {}, after)
                self._emit(
                    "update",
                    db,
                    cname,
                    _id,
                    desc={"updatedFields": upd, "removedFields": rem, "truncatedArrays": []},
                    pre=pre,
                )
        return len(ids), modified, []

    def _delete_docs(self, db: str, cname: str, q: Doc, limit: int) -> int:
        coll = self._coll(db, cname)
        ids = self._target_ids(coll, q, multi=not limit)
        for _id in ids:
            pre = self._pre_image(db, cname, coll.find_one({"_id": _id}))
            coll.delete_one({"_id": _id})
            self._emit("delete", db, cname, _id, pre=pre)
        return len(ids)

    # ---------------------------------------------------------------- commands
    def _ok(self, db: str, cmd: Doc) -> Doc:
        return {"ok": 1}

    def _hello(self, db: str, cmd: Doc) -> Doc:
        return {
            "ismaster": True,
            "isWritablePrimary": True,
            "helloOk": True,
            "secondary": False,
            "setName": self.set_name,
            "setVersion": 1,
            "electionId": ObjectId("7fffffff0000000000000001"),
            "hosts": [self.address],
            "primary": self.address,
            "me": self.address,
            "minWireVersion": 0,
            "maxWireVersion": MAX_WIRE_VERSION,
            "logicalSessionTimeoutMinutes": 30,
            "maxBsonObjectSize": 16 * 1024 * 1024,
            "maxMessageSizeBytes": 48_000_000,
            "maxWriteBatchSize": 100_000,
            "localTime": _now(),
            "connectionId": next(self._conn_ids),
            "readOnly": False,
            "ok": 1,
        }

    def _build_info(self, db: str, cmd: Doc) -> Doc:
        numbers = [int(p) for p in self.version.split("-")[0].split(".")]
        return {
            "version": self.version,
            "versionArray": [*numbers, 0, 0, 0, 0][:4],
            "gitVersion": "wiremongo-test-stand-in",
            "bits": 64,
            "maxBsonObjectSize": 16 * 1024 * 1024,
            "ok": 1,
        }

    def _kill_cursors(self, db: str, cmd: Doc) -> Doc:
        killed: list[Int64] = []
        missing: list[Int64] = []
        for cid in cmd.get("cursors", []):
            cur = self._cursors.pop(int(cid), None)
            (killed if cur is not None else missing).append(Int64(cid))
            if isinstance(cur, _StreamCursor):
                cur.killed = True
        self._cond.notify_all()
        return {
            "cursorsKilled": killed,
            "cursorsNotFound": missing,
            "cursorsAlive": [],
            "cursorsUnknown": [],
            "ok": 1,
        }

    def _find(self, db: str, cmd: Doc) -> Doc:
        cur = self._coll(db, cmd["find"]).find(cmd.get("filter") or {}, cmd.get("projection") or None)
        if cmd.get("sort"):
            cur = cur.sort(list(cmd["sort"].items()))
        if cmd.get("skip"):
            cur = cur.skip(int(cmd["skip"]))
        limit = int(cmd.get("limit") or 0)
        if limit:
            cur = cur.limit(abs(limit))
        single = bool(cmd.get("singleBatch")) or limit < 0
        return self._cursor_reply(f"{db}.{cmd['find']}", list(cur), cmd.get("batchSize"), single)

    def _get_more(self, db: str, cmd: Doc) -> Doc:
        cid, batch = int(cmd["getMore"]), cmd.get("batchSize")
        cur = self._cursors.get(cid)
        if cur is None:
            raise CommandError(43, f"cursor id {cid} not found")
        if isinstance(cur, _FindCursor):
            n = int(batch) if batch else len(cur.docs)
            out, cur.docs = cur.docs[:n], cur.docs[n:]
            if not cur.docs:
                del self._cursors[cid]
                cid = 0
            return {"cursor": {"id": Int64(cid), "ns": cur.ns, "nextBatch": out}, "ok": 1}
        deadline = time.monotonic() + int(cmd.get("maxTimeMS") or 1000) / 1000
        while True:
            events, invalidated = self._collect(cur, batch)
            remaining = deadline - time.monotonic()
            if events or invalidated or cur.killed or self._stopped or remaining <= 0:
                return self._stream_reply(cid, cur, events, invalidated, "nextBatch")
            self._cond.wait(remaining)  # releases the lock while waiting

    def _insert_cmd(self, db: str, cmd: Doc) -> Doc:
        return self._insert_docs(
            db, cmd["insert"], list(cmd.get("documents", [])), bool(cmd.get("ordered", True))
        )

    def _update_cmd(self, db: str, cmd: Doc) -> Doc:
        n = modified = 0
        upserted: list[Doc] = []
        errors: list[Doc] = []
        for i, st in enumerate(cmd.get("updates", [])):
            try:
                matched, mod, ups = self._update_docs(
                    db,
                    cmd["update"],
                    dict(st.get("q") or {}),
                    st["u"],
                    bool(st.get("multi")),
                    bool(st.get("upsert")),
                )
            except (OperationFailure, ValueError, TypeError, KeyError) as exc:
                errors.append({"index": i, "code": getattr(exc, "code", None) or 2, "errmsg": str(exc)})
                if cmd.get("ordered", True):
                    break
                continue
            n, modified = n + matched + len(ups), modified + mod
            upserted += [{"index": i, "_id": _id} for _id in ups]
        reply: Doc = {"n": n, "nModified": modified, "ok": 1}
        if upserted:
            reply["upserted"] = upserted
        if errors:
            reply["writeErrors"] = errors
        return reply

    def _delete_cmd(self, db: str, cmd: Doc) -> Doc:
        n = sum(
            self._delete_docs(db, cmd["delete"], dict(st.get("q") or {}), int(st.get("limit", 0)))
            for st in cmd.get("deletes", [])
        )
        return {"n": n, "ok": 1}

    def _find_and_modify(self, db: str, cmd: Doc) -> Doc:
        cname = next(iter(cmd.values()))
        coll, q, fields, sort = (
            self._coll(db, cname),
            dict(cmd.get("query") or {}),
            cmd.get("fields"),
            cmd.get("sort"),
        )
        hit = self._target_ids(coll, q, multi=False, sort=sort)
        before = coll.find_one({"_id": hit[0]}, fields or None) if hit else None
        if cmd.get("remove"):
            if hit:
                pre = self._pre_image(db, cname, coll.find_one({"_id": hit[0]}))
                coll.delete_one({"_id": hit[0]})
                self._emit("delete", db, cname, hit[0], pre=pre)
            return {"lastErrorObject": {"n": len(hit)}, "value": before, "ok": 1}
        _, _, ups = self._update_docs(db, cname, q, cmd.get("update"), False, bool(cmd.get("upsert")), sort)
        key = hit[0] if hit else (ups[0] if ups else None)
        value = coll.find_one({"_id": key}, fields or None) if cmd.get("new") and (hit or ups) else before
        leo: Doc = {"n": 1 if hit or ups else 0, "updatedExisting": bool(hit)}
        if ups:
            leo["upserted"] = ups[0]
        return {"lastErrorObject": leo, "value": value, "ok": 1}

    def _count(self, db: str, cmd: Doc) -> Doc:
        kw = {k: int(cmd[k]) for k in ("skip", "limit") if cmd.get(k)}
        return {"n": self._coll(db, cmd["count"]).count_documents(cmd.get("query") or {}, **kw), "ok": 1}

    def _distinct(self, db: str, cmd: Doc) -> Doc:
        return {
            "values": self._coll(db, cmd["distinct"]).distinct(cmd["key"], cmd.get("query") or {}),
            "ok": 1,
        }

    def _list_indexes(self, db: str, cmd: Doc) -> Doc:
        cname = cmd["listIndexes"]
        if cname not in self.backend[db].list_collection_names():
            raise CommandError(26, f"ns does not exist: {db}.{cname}")
        docs = [
            {**{k: v for k, v in spec.items() if k != "key"}, "key": dict(spec["key"]), "name": name}
            for name, spec in self._coll(db, cname).index_information().items()
        ]
        return self._cursor_reply(f"{db}.{cname}", docs, (cmd.get("cursor") or {}).get("batchSize"))

    def _create_indexes(self, db: str, cmd: Doc) -> Doc:
        cname = cmd["createIndexes"]
        existed = cname in self.backend[db].list_collection_names()
        coll = self._coll(db, cname)
        before = len(coll.index_information()) if existed else 1
        for spec in cmd.get("indexes", []):
            opts = {k: v for k, v in spec.items() if k not in ("key", "v", "ns", "background")}
            coll.create_index(list(spec["key"].items()), **opts)
        return {
            "numIndexesBefore": before,
            "numIndexesAfter": len(coll.index_information()),
            "createdCollectionAutomatically": not existed,
            "ok": 1,
        }

    def _list_collections(self, db: str, cmd: Doc) -> Doc:
        docs = [
            {
                "name": n,
                "type": "collection",
                "options": copy.deepcopy(self._options.get((db, n), {})),
                "info": {"readOnly": False},
            }
            for n in sorted(self.backend[db].list_collection_names())
        ]
        docs = [d for d in docs if _matches(cmd.get("filter") or {}, d)]
        if cmd.get("nameOnly"):
            docs = [{"name": d["name"], "type": d["type"]} for d in docs]
        return self._cursor_reply(
            f"{db}.$cmd.listCollections", docs, (cmd.get("cursor") or {}).get("batchSize")
        )

    def _create(self, db: str, cmd: Doc) -> Doc:
        try:
            self.backend[db].create_collection(cmd["create"])
        except CollectionInvalid as exc:
            raise CommandError(48, str(exc)) from exc
        images = cmd.get("changeStreamPreAndPostImages")
        if images is not None:
            self._options[(db, cmd["create"])] = {"changeStreamPreAndPostImages": self._images(images)}
        return {"ok": 1}

    def _coll_mod(self, db: str, cmd: Doc) -> Doc:
        cname = cmd["collMod"]
        if cname not in self.backend[db].list_collection_names():
            raise CommandError(26, f"ns does not exist: {db}.{cname}")
        unknown = set(cmd) - {"collMod", "changeStreamPreAndPostImages", "$db", "lsid", "$clusterTime"}
        if unknown:
            raise CommandError(115, f"WireMongo: collMod options {sorted(unknown)} are not emulated")
        if "changeStreamPreAndPostImages" in cmd:
            images = self._images(cmd["changeStreamPreAndPostImages"])
            self._options.setdefault((db, cname), {})["changeStreamPreAndPostImages"] = images
        return {"ok": 1}

    @staticmethod
    def _images(spec: Any) -> Doc:
        if not isinstance(spec, Mapping) or set(spec) != {"enabled"} or not isinstance(spec["enabled"], bool):
            raise CommandError(2, "changeStreamPreAndPostImages must be {enabled: <bool>}")
        return {"enabled": spec["enabled"]}

    def _drop(self, db: str, cmd: Doc) -> Doc:
        self.backend[db].drop_collection(cmd["drop"])
        self._options.pop((db, cmd["drop"]), None)
        return {"ns": f"{db}.{cmd['drop']}", "ok": 1}

    def _drop_database(self, db: str, cmd: Doc) -> Doc:
        self.backend.drop_database(db)
        for key in [k for k in self._options if k[0] == db]:
            del self._options[key]
        return {"dropped": db, "ok": 1}

    def _aggregate(self, db: str, cmd: Doc) -> Doc:
        pipeline, target = list(cmd.get("pipeline") or []), cmd["aggregate"]
        batch_size = (cmd.get("cursor") or {}).get("batchSize")
        if pipeline and "$changeStream" in pipeline[0]:
            return self._open_stream(db, target, pipeline, batch_size)
        if not isinstance(target, str):
            raise CommandError(115, "WireMongo: database-level aggregate is not emulated")
        docs = list(self._coll(db, target).aggregate(pipeline))
        return self._cursor_reply(f"{db}.{target}", docs, batch_size)

    # ---------------------------------------------------------------- change streams
    def _open_stream(self, db: str, target: Any, pipeline: list[Doc], batch_size: Any) -> Doc:
        spec: Doc = dict(pipeline[0]["$changeStream"] or {})
        stages = [dict(stage) for stage in pipeline[1:]]
        split = check_stages(stages)
        full = spec.get("fullDocument", "default")
        if full not in ("default", "updateLookup"):
            raise CommandError(115, "WireMongo: post-images are not emulated")
        before = spec.get("fullDocumentBeforeChange", "off")
        if before not in ("off", "whenAvailable", "required"):
            raise CommandError(2, f"unknown fullDocumentBeforeChange mode: {before!r}")
        scope: tuple[str | None, str | None]
        if isinstance(target, str):
            scope, ns = (db, target), f"{db}.{target}"
        else:
            scope = (None, None) if spec.get("allChangesForCluster") else (db, None)
            ns = f"{db}.$cmd.aggregate"
        fragment = 0
        if "startAfter" in spec:
            pos = self._parse_token(spec["startAfter"])
        elif "resumeAfter" in spec:
            pos = self._parse_token(spec["resumeAfter"])
            if pos and self._log[pos - 1].op == "invalidate":
                raise CommandError(
                    260,
                    "Attempting to resume a change stream using 'resumeAfter' is not "
                    "allowed from an invalidate notification.",
                )
            fragment = self._token_fragment(spec["resumeAfter"])
            if fragment:
                pos -= 1  # the event is scanned again; its fragments up to this one are not resent
        elif "startAtOperationTime" in spec:
            ts = spec["startAtOperationTime"]
            pos = next((e.seq - 1 for e in self._log if e.cluster_time >= ts), len(self._log))
        else:
            pos = len(self._log)
        cur = _StreamCursor(ns, scope[0], scope[1], pos, full, stages, before, split, fragment)
        events, invalidated = self._collect(cur, batch_size)
        cid = 0 if invalidated else self._new_cursor(cur)
        return self._stream_reply(cid, cur, events, invalidated, "firstBatch")

    def _collect(self, cur: _StreamCursor, batch_size: Any) -> tuple[list[Doc], bool]:
        out: list[Doc] = []
        limit = int(batch_size) if batch_size else 1000
        while len(out) < limit:
            if cur.pending:
                out.append(cur.pending.pop(0))
                continue
            if cur.pos >= len(self._log):
                break
            ev = self._log[cur.pos]
            cur.pos += 1
            skip, cur.skip_fragments = cur.skip_fragments, 0
            if (cur.db is not None and ev.db != cur.db) or (cur.coll is not None and ev.coll != cur.coll):
                continue
            if ev.op == "invalidate":
                if cur.coll is None:
                    continue
                out.append(self._event_doc(ev, cur.full_document))
                return out, True
            try:
                event = self._event_doc(ev, cur.full_document, cur.before_change)
            except CommandError:
                cur.pos -= 1  # a getMore on this cursor meets it again, as on a server
                raise
            doc = apply_stages(cur.stages, event)
            if doc is None:
                continue
            size = bson_size(doc)
            if size <= self.max_event_bytes:
                out.append(doc)
                continue
            if not cur.split:
                cur.pos -= 1  # a getMore on this cursor meets it again, as on a server
                raise too_large(size, doc)
            token = functools.partial(self._token, ev.seq)
            cur.pending = split_event(doc, self.max_event_bytes, token)[skip:]
        return out, False

    def _stream_reply(
        self, cid: int, cur: _StreamCursor, events: list[Doc], invalidated: bool, batch_key: str
    ) -> Doc:
        pbrt = events[-1]["_id"] if events else self._token(cur.pos)
        if (invalidated or cur.killed) and cid:
            self._cursors.pop(cid, None)
            cid = 0
        return {
            "cursor": {"id": Int64(cid), "ns": cur.ns, batch_key: events, "postBatchResumeToken": pbrt},
            "operationTime": self._last_ts,
            "ok": 1,
        }

    def _event_doc(self, ev: _Event, full_document: str, before_change: str = "off") -> Doc:
        doc: Doc = {
            "_id": self._token(ev.seq),
            "operationType": ev.op,
            "clusterTime": ev.cluster_time,
            "wallTime": ev.wall_time,
        }
        if ev.op == "invalidate":
            return doc
        doc["ns"] = {"db": ev.db, "coll": ev.coll}
        doc["documentKey"] = {"_id": ev.key}
        if ev.op in ("insert", "replace"):
            doc["fullDocument"] = copy.deepcopy(ev.full)
        elif ev.op == "update":
            doc["updateDescription"] = copy.deepcopy(ev.desc)
            if full_document == "updateLookup":
                doc["fullDocument"] = self._coll(ev.db, ev.coll).find_one({"_id": ev.key})
        if before_change != "off" and ev.op in ("update", "replace", "delete"):
            if ev.pre is None and before_change == "required":
                raise CommandError(
                    47,
                    "Change stream was configured to require a pre-image for all update, delete and "
                    f"replace events, but the pre-image was not found for event: {ev.op} of "
                    f"{ev.db}.{ev.coll} _id {ev.key!r} (WireMongo)",
                )
            doc["fullDocumentBeforeChange"] = copy.deepcopy(ev.pre)
        return doc
