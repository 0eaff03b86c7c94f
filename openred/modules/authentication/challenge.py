"""Peer challenges (issue 10, authentication §1): the signed structure and the decision on an
answer — pure functions, no I/O, no clock (``now`` is passed in).

A challenger asks a peer, on one session, to sign::

    OpenRed peer challenge v1
    purpose: <purpose>
    challenger: <challenger's node id>
    responder: <responder's node id>
    session: <session id>
    nonce: <32 random bytes, base64url>

(six lines, no trailing newline; ``crypto_jail.structures.is_peer_challenge`` recognizes
exactly this shape, disjoint from everything else the jail signs). Binding both node ids, the
session and the purpose means an answer proves nothing outside that one question; the fresh
nonce, kept by the challenger until answered once, means it proves it *now*.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from openred.crypto.identity import SignKey, b64url
from openred.errors import InvalidSignature

__all__ = [
    "CHALLENGE_HEADER",
    "PURPOSE",
    "PeerChallenge",
    "Pending",
    "Proof",
    "decide_answer",
]

CHALLENGE_HEADER = "OpenRed peer challenge v1"
PURPOSE = re.compile(r"[a-z0-9][a-z0-9_.:-]{0,63}")
NONCE_BYTES = 32


@dataclass(frozen=True, slots=True)
class PeerChallenge:
    """One question: does ``responder`` hold its key, on ``session_id``, for ``purpose``?"""

    purpose: str
    challenger: str
    responder: str
    session_id: str
    nonce: str

    def signable(self) -> bytes:
        """The exact bytes the responder's jail signs (kind ``peer_challenge``)."""
        return "\n".join((
            CHALLENGE_HEADER,
            f"purpose: {self.purpose}",
            f"challenger: {self.challenger}",
            f"responder: {self.responder}",
            f"session: {self.session_id}",
            f"nonce: {self.nonce}",
        )).encode("ascii")

    @classmethod
    def fresh(cls, purpose: str, challenger: str, responder: str, session_id: str,
              nonce: bytes) -> PeerChallenge:
        if not PURPOSE.fullmatch(purpose):
            raise ValueError("a purpose is 1-64 characters of [a-z0-9_.:-], starting with a "
                             "letter or digit")
        if len(nonce) != NONCE_BYTES:
            raise ValueError(f"a challenge nonce is {NONCE_BYTES} random bytes")
        return cls(purpose, challenger, responder, session_id, b64url(nonce))


@dataclass(frozen=True, slots=True)
class Pending:
    """A challenge sent and not yet answered, until ``expires_at``."""

    challenge: PeerChallenge
    expires_at: int


@dataclass(frozen=True, slots=True)
class Proof:
    """A peer proved it holds its key, on a session, for a purpose, at ``at``."""

    peer: str
    session_id: str
    purpose: str
    at: int


@dataclass(frozen=True, slots=True)
class Failure:
    status: int
    reason: str
    detail: str


def decide_answer(
    pending: Pending | None, *, session_usable: bool, peer_key: SignKey | None,
    signature: bytes, now: int,
) -> Failure | None:
    """None if ``signature`` answers ``pending`` now; otherwise why not.

    1. the challenge must be pending (never sent, or already answered once: 409);
    2. it must not have expired (410);
    3. its session must still be usable (410);
    4. the peer's verified key must be known (404);
    5. the signature must verify over the challenge's exact bytes under that key (401).
    """
    if pending is None:  # 1
        return Failure(409, "unknown-challenge", "no such challenge is waiting for an answer")
    if now >= pending.expires_at:  # 2
        return Failure(410, "challenge-expired", "the challenge expired before its answer")
    if not session_usable:  # 3
        return Failure(410, "session-expired", "the challenge's session is no longer active")
    if peer_key is None:  # 4
        return Failure(404, "unknown-peer", "no verified record of the peer")
    try:  # 5
        peer_key.verify(signature, pending.challenge.signable())
    except InvalidSignature:
        return Failure(401, "peer-authentication-failed",
                       "the answer is not the peer's signature over this challenge")
    return None
