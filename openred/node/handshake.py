"""Handshake decisions (DESIGN §6): the pure core of ``POST /api/v3/p2p/handshake``.

The responder decides in two steps around the jail's ``noise_respond``:

1. :func:`decide_handshake` — before any cryptography: unknown grant 404, used 409, expired
   410, a grant this node holds as initiator 403. A refusal becomes exactly one
   ``HandshakeRejected{reason}`` event (:func:`rejected`) and nothing else.
2. :func:`decide_established` — after Noise accepted message 1 (or, on the initiator, message
   2): ``TokenConsumed`` (expected at the grant stream's version, so two handshakes racing for
   one grant cannot both win) and ``SessionEstablished``; with ``SessionRenewed`` when the new
   session replaces one due for renewal. If Noise refused the message, the tokens do not match
   (401, :data:`TOKENS_DO_NOT_MATCH`).

A renewal names the session it renews by a *proof*: an envelope sealed on that old session
(route ``session/renew``) whose plaintext is :func:`renewal_claim` — the new grant id and the
SHA-256 of Noise message 1. Only the two ends of the old session can seal it, and it names
this very handshake, so nobody on the path can point the renewal at another session.

A replayed message 1 finds the grant consumed: 409. The session id is derived from the Noise
handshake hash, so both sides name the session alike without trusting each other's word.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from typing import Final

import rfc8785

from openred.crypto.identity import b64url, from_b64url
from openred.errors import NodeRefused
from openred.node import events as ev
from openred.node.envelope import Envelope, Route
from openred.node.tokens import HeldToken, Refusal, TokenState, TokenStatus
from openred.store.events import NewEvent

__all__ = [
    "DEFAULT_SESSION_LIFETIME",
    "RENEW_ROUTE",
    "TOKENS_DO_NOT_MATCH",
    "decide_established",
    "decide_handshake",
    "parse_handshake",
    "rejected",
    "renew_at",
    "renewal_claim",
    "session_id_for",
]

DEFAULT_SESSION_LIFETIME: Final = 24 * 3600
RENEW_NUMERATOR: Final = 4
RENEW_DENOMINATOR: Final = 5
TOKENS_DO_NOT_MATCH: Final = Refusal(
    401, "tokens-do-not-match", "the handshake does not prove the other half of this grant"
)
_SESSION_ID_LABEL: Final = b"openred/v3 session id\x00"
RENEW_ROUTE: Final = Route("session", "renew")
"""The route bound into a renewal proof's associated data (no P2P action serves it)."""
MAX_MESSAGE: Final = 1024
"""Largest Noise message 1 accepted (KKpsk0's is 48 bytes plus an empty payload's tag)."""
_GRANT_ID = re.compile(r"[A-Za-z0-9_-]{22}")


def renewal_claim(grant_id: str, message: bytes) -> bytes:
    """The plaintext of a renewal proof: this grant and this Noise message 1, canonical JSON."""
    return bytes(rfc8785.dumps({
        "grant_id": grant_id, "message_hash": b64url(hashlib.sha256(message).digest()),
    }))


def parse_handshake(body: object) -> tuple[str, bytes, Envelope | None]:
    """``(grant_id, message, renews)`` from a handshake body, or NodeRefused 400/413.

    ``renews`` (optional) is the renewal proof: an envelope sealed on the session this
    handshake renews (DESIGN §6, 80 % of life), whose ``session_id`` names it.
    """
    if not isinstance(body, Mapping) or not (
        {"grant_id", "message"} <= set(body) <= {"grant_id", "message", "renews"}
    ):
        raise NodeRefused(400, "malformed-handshake", "the body is {grant_id, message, renews?}")
    grant_id, message, renews = body["grant_id"], body["message"], body.get("renews")
    proof: Envelope | None = None
    if renews is not None:
        try:
            proof = Envelope.from_json(renews)
        except NodeRefused as exc:
            raise NodeRefused(400, "malformed-handshake",
                              f"renews is an envelope sealed on the renewed session: "
                              f"{exc.detail}") from None
    if not isinstance(grant_id, str) or not _GRANT_ID.fullmatch(grant_id):
        raise NodeRefused(400, "malformed-handshake", "grant_id is 16 bytes base64url")
    if not isinstance(message, str):
        raise NodeRefused(400, "malformed-handshake", "message is base64url")
    if len(message) > (MAX_MESSAGE * 4 + 2) // 3:
        raise NodeRefused(413, "handshake-too-large", f"message exceeds {MAX_MESSAGE} bytes")
    try:
        raw = from_b64url(message)
    except ValueError:
        raise NodeRefused(400, "malformed-handshake", "message is base64url") from None
    if not raw:
        raise NodeRefused(400, "malformed-handshake", "message is empty")
    return grant_id, raw, proof


def decide_handshake(
    state: TokenState, *, role: str, now: int
) -> HeldToken | Refusal:
    """The token to shake hands with as ``role``, or why not (before any cryptography)."""
    status = state.at(now)
    if status is TokenStatus.UNKNOWN:
        return Refusal(404, "unknown-grant", "this node holds no token for that grant")
    if status is TokenStatus.CONSUMED:
        return Refusal(409, "grant-used", "the grant was already used for a handshake")
    if status is TokenStatus.EXPIRED:
        return Refusal(410, "grant-expired", "the grant has expired")
    token = state.token
    assert token is not None
    if token.role != role:
        return Refusal(403, "wrong-role", f"this node is not the grant's {role}")
    return token


def rejected(grant_id: str, refusal: Refusal) -> NewEvent:
    """The one event a refused handshake writes."""
    return NewEvent(ev.handshake_stream(grant_id), ev.HANDSHAKE_REJECTED, {
        "grant_id": grant_id, "reason": refusal.reason, "status": refusal.status,
    })


def session_id_for(handshake_hash: bytes) -> str:
    """The session id both sides derive from the Noise handshake hash (16 bytes, base64url)."""
    return b64url(hashlib.sha256(_SESSION_ID_LABEL + handshake_hash).digest()[:16])


def renew_at(established_at: int, expires_at: int) -> int:
    """When renewal is due: at 80 % of the session's life."""
    return established_at + (expires_at - established_at) * RENEW_NUMERATOR // RENEW_DENOMINATOR


def decide_established(
    token: HeldToken,
    *,
    grant_version: int,
    session_id: str,
    wrapped_state: bytes,
    now: int,
    lifetime: int = DEFAULT_SESSION_LIFETIME,
    renews: str | None = None,
) -> list[NewEvent]:
    """``TokenConsumed`` + ``SessionEstablished`` (+ ``SessionRenewed`` for the old session)."""
    if lifetime <= 0:
        raise ValueError("a session lives a positive number of seconds")
    grant_id = token.grant.grant_id
    expires_at = now + lifetime
    events = [
        NewEvent(ev.grant_stream(grant_id), ev.TOKEN_CONSUMED,
                 {"grant_id": grant_id, "session_id": session_id},
                 expected_version=grant_version),
        NewEvent(ev.session_stream(session_id), ev.SESSION_ESTABLISHED, {
            "session_id": session_id, "peer": str(token.peer), "grant_id": grant_id,
            "role": token.role, "suite": token.grant.suite, "established_at": now,
            "expires_at": expires_at, "renew_at": renew_at(now, expires_at),
            "wrapped_state": b64url(wrapped_state),
        }, expected_version=0),
    ]
    if renews is not None:
        events.append(NewEvent(ev.session_stream(renews), ev.SESSION_RENEWED,
                               {"session_id": renews, "renewed_by": session_id}))
    return events
