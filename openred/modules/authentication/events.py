"""The authentication module's event types (written by the challenger).

* ``PeerAuthenticated {peer, session_id, purpose, nonce, signature}`` — the peer's jail signed
  this challenge; the signature is kept, so the log itself proves it (anyone can rebuild the
  challenge bytes from the payload and check it under the peer's key).
* ``PeerAuthenticationFailed {peer, session_id, purpose, reason}`` — an answer was refused
  (``unknown-challenge``, ``challenge-expired``, ``session-expired``, ``unknown-peer``,
  ``peer-authentication-failed``, ``bad-answer`` — the answer is no JSON object —, or the
  peer's own refusal slug when it has a slug's shape, ``peer-refused`` when not).
"""

from __future__ import annotations

from openred.store.events import EventRegistry

__all__ = ["PEER_AUTHENTICATED", "PEER_AUTHENTICATION_FAILED", "auth_stream", "register_events"]

PEER_AUTHENTICATED = "PeerAuthenticated"
PEER_AUTHENTICATION_FAILED = "PeerAuthenticationFailed"


def auth_stream(peer: str) -> str:
    return f"authentication:{peer}"


def register_events(registry: EventRegistry) -> None:
    for event_type in (PEER_AUTHENTICATED, PEER_AUTHENTICATION_FAILED):
        registry.register(event_type)
