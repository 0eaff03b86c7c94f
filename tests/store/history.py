"""Small synthetic node histories for store tests and the store benchmarks."""

from __future__ import annotations

import hashlib
import sqlite3
from collections.abc import Sequence
from typing import Any

from openred.crypto.identity import b64url
from openred.node import events as ev
from openred.store.events import NewEvent
from openred.store.sqlite import SQLiteEventStore


def fake_id(i: int, kind: str = "peer") -> str:
    """A deterministic 32-character base32 node id."""
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    digest = hashlib.sha256(f"{kind}{i}".encode()).digest()
    return "".join(alphabet[b % 32] for b in digest[:32])


def peer_payload(i: int) -> dict[str, Any]:
    node_id = fake_id(i)
    return {
        "node_id": node_id, "api_url": f"https://peer{i}.example:8443",
        "sign_key": b64url(hashlib.sha256(b"s%d" % i).digest()),
        "box_key": b64url(hashlib.sha256(b"b%d" % i).digest()),
    }


def peer_event(i: int, stream: str | None = None) -> NewEvent:
    payload = peer_payload(i)
    return NewEvent(stream or ev.node_stream(payload["node_id"]), ev.PEER_DISCOVERED, payload)


def session_events(i: int, *, expire: bool = False) -> list[NewEvent]:
    """A token received, consumed by a handshake, a session, a message — optionally expiry."""
    grant_id = b64url(hashlib.sha256(b"g%d" % i).digest()[:16])
    session_id = b64url(hashlib.sha256(b"sess%d" % i).digest()[:16])
    peer = fake_id(i)
    out = [
        NewEvent(ev.grant_stream(grant_id), ev.TOKEN_RECEIVED, {
            "grant_id": grant_id, "peer": peer, "role": "responder",
            "suite": "25519_ChaChaPoly_SHA256", "issued_at": 1_790_000_000 + i,
            "expires_at": 1_790_000_300 + i, "grant": b64url(b"{}"),
            "grant_signature": b64url(bytes(64)), "sealed_token": b64url(bytes(80)),
        }),
        NewEvent(ev.grant_stream(grant_id), ev.TOKEN_CONSUMED,
                 {"grant_id": grant_id, "session_id": session_id}),
        NewEvent(ev.session_stream(session_id), ev.SESSION_ESTABLISHED, {
            "session_id": session_id, "peer": peer, "grant_id": grant_id,
            "role": "responder", "suite": "25519_ChaChaPoly_SHA256",
            "expires_at": 1_790_086_400 + i, "wrapped_state": b64url(bytes(100)),
        }),
        NewEvent(ev.session_stream(session_id), ev.MESSAGE_RECEIVED, {
            "message_id": b64url(hashlib.sha256(b"m%d" % i).digest()[:16]),
            "session_id": session_id, "peer": peer, "size": 12, "body": b64url(bytes(40)),
        }),
    ]
    if expire:
        out.append(NewEvent(ev.session_stream(session_id), ev.SESSION_EXPIRED,
                            {"session_id": session_id}))
    return out


def table_dump(
    conn: sqlite3.Connection, tables: Sequence[str]
) -> dict[str, list[tuple[object, ...]]]:
    """Every row of ``tables`` in a stable order, for byte-for-byte comparison."""
    return {
        t: [tuple(r) for r in conn.execute(f"SELECT * FROM {t} ORDER BY 1")] for t in tables
    }


async def store_tables(
    store: SQLiteEventStore, tables: Sequence[str]
) -> dict[str, list[tuple[object, ...]]]:
    """:func:`table_dump` through the store's read side (its read-only connections)."""
    return {t: await store.query(f"SELECT * FROM {t} ORDER BY 1") for t in tables}
