"""Messaging (DESIGN §11): send, receive, delivery receipts, inbox — plain values in and out.

A message is the request plaintext ``{"message_id", "text", "sent_at"}`` (canonical JSON) on
route ``messaging/send``; the receiver's answer is the delivery receipt ``{"message_id",
"received_at"}``, authenticated by the session and bound to the request's counter. Bodies are
stored only encrypted, in the log and in the inbox/outbox, under the node's message data key,
which only the jail can unwrap (:mod:`openred.modules.messaging.bodykey`), bound to the message id.
The receiver is idempotent by message id: a message sent again (after a lost answer) gets the
same receipt and is stored once.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import re
import secrets
import sqlite3
import threading
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, TypeGuard

from sqlmodel import col, select

from openred.crypto.client import JailClient
from openred.crypto.identity import b64url, from_b64url
from openred.crypto.session import EPOCH_SHIFT
from openred.errors import NodeRefused
from openred.modules.messaging import events as ev
from openred.modules.messaging.bodykey import BODY_KEY_FILE, BodyKey
from openred.node.envelope import Envelope, Route, SessionChannel
from openred.node.events import session_stream
from openred.node.p2p import Outcome, RequestContext
from openred.node.readmodels import InboxRow, OutboxRow, ReadModels
from openred.ratelimit import Allowance
from openred.store.codec import canonical_json
from openred.store.events import NewEvent
from openred.store.sqlite import SQLiteEventStore, readonly_uri

__all__ = ["MAX_TEXT", "SEND", "IdFilter", "InboxIndex", "Message", "Messaging", "PeerBudget",
           "Receipt"]

logger = logging.getLogger("openred.messaging")

SEND: Final = Route("messaging", "send")
MAX_TEXT: Final = 64 * 1024
"""Largest message text in UTF-8 bytes."""
_MESSAGE_ID = re.compile(r"[A-Za-z0-9_-]{22}")
_SAFE_INT: Final = 2**53 - 1

Transport = Callable[[Route, Envelope], Awaitable[Envelope]]
"""Send a sealed request to the peer; its sealed answer (the HTTP call in the app)."""
TransportAfter = Callable[[Route, Envelope, "asyncio.Future[Any]"], Awaitable[Envelope]]
"""A transport that sends the request only once the given future has succeeded
(:meth:`CallBatcher.call` with ``after``), so the wait for it can overlap other waits."""
Rotate = Callable[[SessionChannel], Awaitable[int]]
"""Move a channel's sending to a fresh epoch and save it (``SessionKeeper.rotate``)."""


@dataclass(frozen=True, slots=True)
class Receipt:
    message_id: str
    received_at: int


@dataclass(frozen=True, slots=True)
class Message:
    message_id: str
    session_id: str
    peer: str
    text: str
    at: str
    delivered_at: str | None = None


def _refuse(detail: str) -> NodeRefused:
    return NodeRefused(422, "invalid-message", detail)


def _object(raw: bytes) -> dict[str, Any]:
    try:
        obj = json.loads(raw)
    except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
        raise _refuse("the message is not JSON") from None
    if not isinstance(obj, dict):
        raise _refuse("the message is a JSON object")
    return obj


def _instant(value: object) -> TypeGuard[int]:
    """Whether ``value`` is Unix seconds the log can hold (an integer within I-JSON's range:
    the log's canonical JSON refuses larger ones, which would fail the append)."""
    return type(value) is int and 0 <= value <= _SAFE_INT


def _retrieved(task: asyncio.Future[Any]) -> None:
    """Mark a finished task's failure as seen (it reached, or could not reach, its caller)."""
    if not task.cancelled():
        task.exception()


def check_text(text: str) -> bytes:
    if not isinstance(text, str):
        raise _refuse("text is a string")
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: JSON text may carry one, UTF-8 cannot
        raise _refuse("text is Unicode text (no lone surrogates)") from None
    if not raw or len(raw) > MAX_TEXT:
        raise NodeRefused(413, "message-too-large", f"text is 1..{MAX_TEXT} bytes of UTF-8")
    return raw


def request_bytes(message_id: str, text: str, sent_at: int) -> bytes:
    """The request plaintext: RFC 8785 canonical JSON of the message.

    Through the store's canonical encoder (:func:`openred.store.codec.canonical_json`: the
    standard library's sorted JSON where it equals RFC 8785, the ``rfc8785`` library otherwise),
    which takes half the time of ``rfc8785.dumps`` on a 1 KiB text; the bytes are the same.
    """
    return canonical_json({"message_id": message_id, "text": text, "sent_at": sent_at})


def receipt_bytes(message_id: str, received_at: int) -> bytes:
    """The receipt plaintext, canonical JSON like the request.

    A message id of the wire format and an integer within I-JSON's range need no escaping
    and have one canonical form, so those bytes are written directly (tested against
    ``rfc8785``); anything else goes through the encoder, which refuses what it must.
    """
    if (type(received_at) is int and -_SAFE_INT <= received_at <= _SAFE_INT
            and _MESSAGE_ID.fullmatch(message_id)):
        return b'{"message_id":"%s","received_at":%d}' % (message_id.encode("ascii"), received_at)
    return canonical_json({"message_id": message_id, "received_at": received_at})


class IdFilter:
    """A Bloom filter of message ids: :meth:`may_hold` is False only for ids never added.

    Grows by adding filters twice the size of the last (a scalable Bloom filter), each sized
    for about 1 % false positives; the hash is keyed BLAKE2b with a key drawn per filter, so
    a peer cannot choose ids that collide (it could only cost lookups, never a wrong answer).
    """

    HASHES: Final = 7
    BITS_PER_ID: Final = 10

    def __init__(self, capacity: int = 1 << 16) -> None:
        self._parts: list[tuple[bytes, bytearray, int, list[int]]] = []
        self._capacity = max(capacity, 1 << 10)
        self._grow()

    def _grow(self) -> None:
        bits = 1 << max(13, (self._capacity * self.BITS_PER_ID - 1).bit_length())
        self._parts.append((secrets.token_bytes(16), bytearray(bits // 8), bits - 1, [0]))

    @classmethod
    def _positions(cls, key: bytes, mask: int, message_id: str) -> list[int]:
        digest = hashlib.blake2b(message_id.encode("utf-8"), digest_size=16, key=key).digest()
        h1, h2 = int.from_bytes(digest[:8], "little"), int.from_bytes(digest[8:], "little") | 1
        return [(h1 + i * h2) & mask for i in range(cls.HASHES)]

    def add(self, message_id: str) -> None:
        key, bits, mask, count = self._parts[-1]
        if count[0] >= self._capacity:
            self._capacity *= 2
            self._grow()
            key, bits, mask, count = self._parts[-1]
        for position in self._positions(key, mask, message_id):
            bits[position >> 3] |= 1 << (position & 7)
        count[0] += 1

    def may_hold(self, message_id: str) -> bool:
        raw = message_id.encode("utf-8")
        for key, bits, mask, _ in self._parts:
            digest = hashlib.blake2b(raw, digest_size=16, key=key).digest()
            h1 = int.from_bytes(digest[:8], "little")
            h2 = int.from_bytes(digest[8:], "little") | 1
            for i in range(self.HASHES):  # the positions of _positions, stopping at a 0 bit
                position = (h1 + i * h2) & mask
                if not bits[position >> 3] >> (position & 7) & 1:
                    break
            else:
                return True
        return False


class InboxIndex:
    """Who sent a message id we hold: an in-memory filter first, then the inbox table.

    The receive path asks this once per message, and nearly always for an id nobody sent
    before. A primary-key lookup on a read-only ``sqlite3`` connection (WAL: a reader never
    waits for the writer) is inline, but every commit resets that connection's page cache, so
    each lookup re-read the inbox b-tree's pages from the WAL: ~30-40 µs on the receiving
    node's event loop per message. Now an :class:`IdFilter` of every id in the inbox answers
    "not held" without the database; an id the filter may hold is looked up as before, so a
    false positive costs only that lookup, and every answer about an id the filter holds
    comes from the table.

    The filter never misses an id the inbox holds:

    1. it is built from one snapshot of the inbox (in a thread, the first time it is needed;
       lookups go to the table until it is ready) together with that snapshot's log size;
    2. the receive path calls :meth:`holding` for an id *before* appending its
       ``MessageReceived`` (ids held while the filter is being built are added once it is);
    3. ids another process appended are read from the log: at least every
       :attr:`CATCH_UP_EVERY` seconds, the ``MessageReceived`` entries after the size it
       has seen (the inbox projection is written in the same transaction as its entry, and
       inbox rows are never deleted or given to another id). Only a second process serving
       the same data directory appends those, so only such a set-up sees a new id of the
       other process up to a second late; while a catch-up fails, the table answers.
    """

    CATCH_UP_EVERY: Final = 1.0

    def __init__(self, database: Path, *, clock: Callable[[], float] = time.monotonic,
                 ) -> None:
        self.database = database
        self._clock = clock
        self._conn: sqlite3.Connection | None = None
        self._filter: IdFilter | None = None
        self._loading: Future[tuple[IdFilter, int]] | None = None
        self._retry_at = 0.0
        self._pending: set[str] = set()
        self._position = 0
        self._current = False
        self._catch_up_at = 0.0

    def _connect(self) -> sqlite3.Connection:
        return sqlite3.connect(readonly_uri(self.database), uri=True,
                               check_same_thread=False, timeout=5.0, isolation_level=None)

    def peer_of(self, message_id: str) -> str | None:
        ids = self._ready()
        if ids is not None and not ids.may_hold(message_id):
            return None
        if self._conn is None:
            self._conn = self._connect()
        row = self._conn.execute(
            "SELECT peer FROM inbox WHERE message_id = ?", (message_id,)).fetchone()
        return None if row is None else str(row[0])

    def holding(self, message_id: str) -> None:
        """``message_id`` is about to be appended as received (call before the append)."""
        if self._filter is not None:
            self._filter.add(message_id)
        else:
            self._pending.add(message_id)

    @property
    def ready(self) -> bool:
        """Whether the filter answers (else every lookup reads the table)."""
        return self._ready() is not None

    def _ready(self) -> IdFilter | None:
        ids = self._filter
        if ids is not None:
            if self._clock() >= self._catch_up_at:
                self._catch_up(ids)
            return ids if self._current else None
        loading = self._loading
        if loading is None:
            if self._clock() >= self._retry_at:
                self._loading = loading = Future()
                threading.Thread(target=self._load, args=(loading,), daemon=True,
                                 name="openred-inbox-index").start()
            return None
        if not loading.done():
            return None
        self._loading = None
        try:
            ids, self._position = loading.result()
        except Exception:  # whatever failed, the table answers (never the receive path's error)
            logger.warning("building the inbox index failed; the table answers meanwhile",
                           exc_info=True)
            self._retry_at = self._clock() + self.CATCH_UP_EVERY
            return None
        for message_id in self._pending:
            ids.add(message_id)
        self._pending.clear()
        self._filter = ids
        self._current = True
        self._catch_up_at = self._clock() + self.CATCH_UP_EVERY
        return ids

    def _load(self, result: Future[tuple[IdFilter, int]]) -> None:
        try:
            conn = self._connect()
            try:
                conn.execute("BEGIN")  # one snapshot for the size and the ids
                size = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events")
                           .fetchone()[0])
                (count,) = conn.execute("SELECT count(*) FROM inbox").fetchone()
                ids = IdFilter(2 * int(count))
                for (message_id,) in conn.execute("SELECT message_id FROM inbox"):
                    ids.add(str(message_id))
                conn.execute("COMMIT")
            finally:
                conn.close()
        except BaseException as exc:  # handed to the loop, which reads the table meanwhile
            result.set_exception(exc)
        else:
            result.set_result((ids, size))

    def _catch_up(self, ids: IdFilter) -> None:
        """Add the ids of ``MessageReceived`` entries after the log size seen so far."""
        if self._conn is None:
            self._conn = self._connect()
        conn = self._conn
        try:
            conn.execute("BEGIN")
            try:
                size = int(conn.execute("SELECT coalesce(max(seq), 0) FROM events")
                           .fetchone()[0])
                # The payload is canonical JSON text; SQLite's parser takes the one field
                # (half the time of decoding each 2 KiB payload in Python here).
                rows = conn.execute(
                    "SELECT json_extract(CAST(payload AS TEXT), '$.message_id') FROM events "
                    "WHERE seq > ? AND seq <= ? AND type = ?",
                    (self._position, size, ev.MESSAGE_RECEIVED)).fetchall()
            finally:
                conn.execute("COMMIT")
            for (message_id,) in rows:
                if not isinstance(message_id, str):
                    raise ValueError("a MessageReceived entry without a message id")
                if not ids.may_hold(message_id):  # this process's own are held already
                    ids.add(message_id)
        except (sqlite3.Error, ValueError):
            # Not current: the table answers until a catch-up succeeds (the filter keeps
            # taking the ids this process holds, and the position stays where it was).
            logger.warning("catching up the inbox index failed", exc_info=True)
            self._current = False
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    conn.execute("ROLLBACK")
        else:
            self._position = size
            self._current = True
        self._catch_up_at = self._clock() + self.CATCH_UP_EVERY

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class PeerBudget:
    """What one peer may have logged as messages: ``messages`` and ``text_bytes`` per ``window``.

    Each peer (node id) has a budget of both, refilled evenly over the window (an
    :class:`~openred.ratelimit.Allowance` each: two floats per peer and dimension);
    a message that does not fit is refused 429 ``too-many-messages`` with Retry-After, before
    anything is sealed or logged. A message already held is answered again without charge.
    The node's defaults (``OPENRED_PEER_MESSAGES_PER_HOUR``, ``..._BYTES_PER_HOUR``) are far
    above a person's use and what a benchmark run sends; they bound what one peer adds to the
    log and the inbox per hour. Costs two dict lookups and a little float arithmetic per message.
    """

    def __init__(self, *, messages: int, text_bytes: int, window: float) -> None:
        self.messages = Allowance(messages, window)
        self.text_bytes = Allowance(text_bytes, window)

    def charge(self, peer: str, size: int, now: float) -> None:
        """Count one message of ``size`` bytes of text for ``peer``, or refuse it (429)."""
        wait = self.messages.retry_after(peer, now)
        wait_bytes = self.text_bytes.retry_after(peer, now, size)
        if wait is not None or wait_bytes is not None:
            raise NodeRefused.over_budget("too-many-messages", (
                f"this node logs at most {self.messages.limit} messages and "
                f"{self.text_bytes.limit} bytes of text from one peer per "
                f"{self.messages.window:.0f} s"), max(wait or 0.0, wait_bytes or 0.0))
        self.messages.take(peer, now)
        self.text_bytes.take(peer, now, size)


class Messaging:
    """The messaging module's services over the node's store, jail and read models."""

    def __init__(
        self, store: SQLiteEventStore, jail: JailClient, reads: ReadModels, *,
        body_key: BodyKey | None = None, budget: PeerBudget | None = None,
    ) -> None:
        self.store = store
        self.jail = jail
        self.reads = reads
        self.bodies = body_key or BodyKey(jail, store.path.parent / BODY_KEY_FILE)
        self.index = InboxIndex(store.path)
        self.budget = budget
        """What each peer may have logged (None: unbounded)."""
        self._receiving: dict[str, tuple[str, asyncio.Event]] = {}
        """Message ids being stored by a request under way, and by which peer (until the
        append of their ``MessageReceived`` is over)."""

    def close(self) -> None:
        self.index.close()

    # -- receiving (the P2P handler of messaging/send) --

    async def receive(self, ctx: RequestContext, plaintext: bytes) -> Outcome:
        obj = _object(plaintext)
        if set(obj) != {"message_id", "text", "sent_at"}:
            raise _refuse("a message has exactly message_id, text and sent_at")
        message_id, text, sent_at = obj["message_id"], obj["text"], obj["sent_at"]
        if not isinstance(message_id, str) or not _MESSAGE_ID.fullmatch(message_id):
            raise _refuse("message_id is 16 bytes base64url")
        if not _instant(sent_at):
            raise _refuse("sent_at is Unix seconds")
        body = check_text(text)
        while True:
            seen = self.index.peer_of(message_id)
            if seen is not None:
                if seen != ctx.peer:
                    raise NodeRefused(409, "message-id-taken",
                                      "another peer used this message id")
                return Outcome(self._receipt(message_id, ctx.now))
            # Not stored yet, but maybe being stored by a request under way (the same message
            # in two calls at once): wait for that one, then look again.
            receiving = self._receiving.get(message_id)
            if receiving is None:
                break
            if receiving[0] != ctx.peer:
                raise NodeRefused(409, "message-id-taken", "another peer used this message id")
            await receiving[1].wait()
        if self.budget is not None:  # no await between its check and its charge
            self.budget.charge(ctx.peer, len(body), ctx.now)
        mine = (ctx.peer, asyncio.Event())
        self._receiving[message_id] = mine

        def settled() -> None:
            if self._receiving.get(message_id) is mine:
                del self._receiving[message_id]
            mine[1].set()

        try:
            self.index.holding(message_id)
            wrapped = await self.bodies.seal(message_id, body)
        except BaseException:
            settled()
            raise
        event = NewEvent(session_stream(ctx.session_id), ev.MESSAGE_RECEIVED, {
            "message_id": message_id, "session_id": ctx.session_id, "peer": ctx.peer,
            "size": len(body), "body": b64url(wrapped), "counter": ctx.counter,
            "sent_at": sent_at,
        })
        return Outcome(self._receipt(message_id, ctx.now), [event], settled)

    @staticmethod
    def _receipt(message_id: str, now: int) -> bytes:
        return receipt_bytes(message_id, now)

    # -- sending --

    async def send(
        self, channel: SessionChannel, text: str, *, message_id: bytes, now: int,
        transport: Transport, rotate: Rotate | None = None,
        transport_after: TransportAfter | None = None,
    ) -> Receipt:
        """Send ``text`` on ``channel``; log it, deliver it, log the receipt; the receipt.

        The request leaves only once its ``MessageSent`` is durable, so the log never misses
        a message that left. With ``transport_after`` (the node's per-peer batcher), the
        request is handed over while that append is under way and waits for it there, beside
        the requests waiting for their batch; otherwise the append is awaited first.

        A peer restarted since our last message refuses counters up to its session ledger's
        receive mark as replays (409 ``replayed-message``) although it never saw them; with
        ``rotate`` the channel then moves to a fresh epoch (counters far above any mark) and
        the message is sent once more. The receiver keeps a message id once, so a retry never
        stores a message twice.
        """
        if len(message_id) != 16:
            raise ValueError("a message id is 16 random bytes")
        mid = b64url(message_id)
        body = check_text(text)
        request = request_bytes(mid, text, now)
        wrapped = await self.bodies.seal(mid, body)
        stream = session_stream(channel.session_id)
        sent = asyncio.ensure_future(self.store.append_one(NewEvent(stream, ev.MESSAGE_SENT, {
            "message_id": mid, "session_id": channel.session_id, "peer": channel.peer,
            "size": len(body), "body": b64url(wrapped),
        })))
        sent.add_done_callback(_retrieved)  # its failure is raised below, or by the transport
        if transport_after is None:
            await sent
        for attempt in (1, 2):
            envelope = channel.seal_request(SEND, request)
            try:
                if transport_after is not None and not sent.done():
                    answer = await transport_after(SEND, envelope, sent)
                else:
                    await sent  # done: its result, or its failure (nothing was sent)
                    answer = await transport(SEND, envelope)
                plaintext = channel.open_answer(SEND, envelope.counter, answer)
            except NodeRefused as exc:
                if attempt == 1 and rotate is not None and exc.reason == "replayed-message":
                    # Once per epoch: the messages of a refused batch were sealed in the same
                    # one, and a refusal is not authenticated (anyone on the path can answer
                    # it), so each moving the sender on would push it past the epochs its
                    # peer accepts ahead (MAX_EPOCH_SKIP) at one ledger write and save each.
                    if envelope.counter >> EPOCH_SHIFT == channel.cipher.send_epoch:
                        await rotate(channel)
                    continue
                raise
            finally:
                channel.forget(envelope.counter)
            break
        receipt = _object(plaintext)
        received_at = receipt.get("received_at")
        if receipt.get("message_id") != mid or not _instant(received_at):
            raise NodeRefused(502, "bad-receipt", "the peer's receipt names another message")
        await self.store.append_one(NewEvent(stream, ev.MESSAGE_DELIVERED, {
            "message_id": mid, "session_id": channel.session_id, "received_at": received_at,
        }))
        return Receipt(mid, received_at)

    # -- reading --

    async def inbox(self, *, limit: int = 100) -> list[Message]:
        """Received messages, newest first, bodies opened."""
        query = select(InboxRow).order_by(col(InboxRow.received_at).desc()).limit(limit)
        async with self.reads.session() as s:
            rows = list((await s.exec(query)).all())
        return [
            Message(r.message_id, r.session_id, r.peer, await self._open(r.message_id, r.body),
                    r.received_at)
            for r in rows
        ]

    async def outbox(self, *, limit: int = 100) -> list[Message]:
        """Sent messages, newest first, with when their receipt arrived."""
        query = select(OutboxRow).order_by(col(OutboxRow.sent_at).desc()).limit(limit)
        async with self.reads.session() as s:
            rows = list((await s.exec(query)).all())
        return [
            Message(r.message_id, r.session_id, r.peer, await self._open(r.message_id, r.body),
                    r.sent_at, r.delivered_at)
            for r in rows
        ]

    async def _open(self, message_id: str, wrapped: str) -> str:
        raw = await self.bodies.open(message_id, from_b64url(wrapped))
        return raw.decode("utf-8")
