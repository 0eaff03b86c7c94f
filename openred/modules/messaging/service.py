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

import json
import re
import sqlite3
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from sqlmodel import col, select

from openred.crypto.client import JailClient
from openred.crypto.identity import b64url, from_b64url
from openred.errors import NodeRefused
from openred.modules.messaging import events as ev
from openred.modules.messaging.bodykey import BODY_KEY_FILE, BodyKey
from openred.node.envelope import Envelope, Route, SessionChannel
from openred.node.events import session_stream
from openred.node.p2p import Outcome, RequestContext
from openred.node.readmodels import InboxRow, OutboxRow, ReadModels
from openred.store.codec import canonical_json
from openred.store.events import NewEvent
from openred.store.sqlite import SQLiteEventStore

__all__ = ["MAX_TEXT", "SEND", "Message", "Messaging", "Receipt"]

SEND: Final = Route("messaging", "send")
MAX_TEXT: Final = 64 * 1024
"""Largest message text in UTF-8 bytes."""
_MESSAGE_ID = re.compile(r"[A-Za-z0-9_-]{22}")
_SAFE_INT: Final = 2**53 - 1

Transport = Callable[[Route, Envelope], Awaitable[Envelope]]
"""Send a sealed request to the peer; its sealed answer (the HTTP call in the app)."""
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
    except (ValueError, UnicodeDecodeError):
        raise _refuse("the message is not JSON") from None
    if not isinstance(obj, dict):
        raise _refuse("the message is a JSON object")
    return obj


def check_text(text: str) -> bytes:
    if not isinstance(text, str):
        raise _refuse("text is a string")
    raw = text.encode("utf-8")
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


class InboxIndex:
    """Who sent a message id we hold, read straight from the inbox table.

    The receive path asks this once per message. Through the SQLModel session it took a
    pooled aiosqlite connection, a thread hop and an ORM identity map each time; a primary-key
    lookup on one read-only sqlite3 connection takes microseconds, and in WAL mode a reader
    never waits for the writer, so it runs inline.
    """

    def __init__(self, database: Path) -> None:
        self.database = database
        self._conn: sqlite3.Connection | None = None

    def peer_of(self, message_id: str) -> str | None:
        if self._conn is None:
            self._conn = sqlite3.connect(
                f"file:{self.database}?mode=ro", uri=True, check_same_thread=False,
                timeout=5.0)
        row = self._conn.execute(
            "SELECT peer FROM inbox WHERE message_id = ?", (message_id,)).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


class Messaging:
    """The messaging module's services over the node's store, jail and read models."""

    def __init__(
        self, store: SQLiteEventStore, jail: JailClient, reads: ReadModels, *,
        body_key: BodyKey | None = None,
    ) -> None:
        self.store = store
        self.jail = jail
        self.reads = reads
        self.bodies = body_key or BodyKey(jail, store.path.parent / BODY_KEY_FILE)
        self.index = InboxIndex(store.path)

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
        if isinstance(sent_at, bool) or not isinstance(sent_at, int) or sent_at < 0:
            raise _refuse("sent_at is Unix seconds")
        body = check_text(text)
        seen = self.index.peer_of(message_id)
        if seen is not None:
            if seen != ctx.peer:
                raise NodeRefused(409, "message-id-taken", "another peer used this message id")
            return Outcome(self._receipt(message_id, ctx.now))
        wrapped = await self.bodies.seal(message_id, body)
        event = NewEvent(session_stream(ctx.session_id), ev.MESSAGE_RECEIVED, {
            "message_id": message_id, "session_id": ctx.session_id, "peer": ctx.peer,
            "size": len(body), "body": b64url(wrapped), "counter": ctx.counter,
            "sent_at": sent_at,
        })
        return Outcome(self._receipt(message_id, ctx.now), [event])

    @staticmethod
    def _receipt(message_id: str, now: int) -> bytes:
        return receipt_bytes(message_id, now)

    # -- sending --

    async def send(
        self, channel: SessionChannel, text: str, *, message_id: bytes, now: int,
        transport: Transport, rotate: Rotate | None = None,
    ) -> Receipt:
        """Send ``text`` on ``channel``; log it, deliver it, log the receipt; the receipt.

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
        await self.store.append_one(NewEvent(stream, ev.MESSAGE_SENT, {
            "message_id": mid, "session_id": channel.session_id, "peer": channel.peer,
            "size": len(body), "body": b64url(wrapped),
        }))
        for attempt in (1, 2):
            envelope = channel.seal_request(SEND, request)
            try:
                answer = await transport(SEND, envelope)
                plaintext = channel.open_answer(SEND, envelope.counter, answer)
            except NodeRefused as exc:
                if attempt == 1 and rotate is not None and exc.reason == "replayed-message":
                    await rotate(channel)
                    continue
                raise
            finally:
                channel.forget(envelope.counter)
            break
        receipt = _object(plaintext)
        received_at = receipt.get("received_at")
        if receipt.get("message_id") != mid or isinstance(received_at, bool) or not isinstance(
            received_at, int
        ):
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
