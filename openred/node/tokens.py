"""Token manager (DESIGN §5): the pure decisions on received grants, and their state.

``decide_receive(state, command, now)`` is the functional core of ``POST
/api/v3/tokens/receive``: it runs after the delivery's signatures and transparency proofs were
checked (:mod:`openred.node.token_service`) and returns the events to append, or a
:class:`Refusal`. A grant id is idempotent: the same delivery again changes nothing; the same
id with other contents is a conflict. A grant is used at most once, ever: its outcome
(consumed or expired) is kept in ``grant_outcomes`` after the token row is cleaned, so the
handshake can tell unknown (404) from used (409) from expired (410).
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from openred.crypto.grants import Grant
from openred.crypto.identity import BoxKey, NodeId, SignKey, b64url
from openred.errors import NodeRefused
from openred.node import events as ev
from openred.store.events import NewEvent

__all__ = [
    "DIRECTORY_STREAM",
    "HeldCheckpoint",
    "HeldToken",
    "PeerInfo",
    "ReceiveToken",
    "Refusal",
    "TokenState",
    "TokenStatus",
    "decide_expiry",
    "decide_receive",
]

DIRECTORY_STREAM = "directory"


@dataclass(frozen=True, slots=True)
class Refusal:
    """A decision's "no": the HTTP status, a stable reason slug and a human detail."""

    status: int
    reason: str
    detail: str

    def error(self) -> NodeRefused:
        return NodeRefused(self.status, self.reason, self.detail)


class TokenStatus(StrEnum):
    UNKNOWN = "unknown"
    RECEIVED = "received"
    CONSUMED = "consumed"
    EXPIRED = "expired"


@dataclass(frozen=True, slots=True)
class HeldToken:
    """A received token as the node keeps it: the grant, its signature, the sealed token."""

    grant: Grant
    grant_signature: bytes
    sealed_token: bytes
    role: str

    @property
    def peer(self) -> NodeId:
        return self.grant.responder if self.role == "initiator" else self.grant.initiator


@dataclass(frozen=True, slots=True)
class TokenState:
    """What the node knows of one grant id; ``version`` is its stream's version."""

    status: TokenStatus
    token: HeldToken | None = None
    version: int = 0

    def at(self, now: int) -> TokenStatus:
        """The status at ``now``: a received token past its expiry counts as expired."""
        if self.status is TokenStatus.RECEIVED and self.token and self.token.grant.expired(now):
            return TokenStatus.EXPIRED
        return self.status


UNKNOWN = TokenState(TokenStatus.UNKNOWN)


@dataclass(frozen=True, slots=True)
class PeerInfo:
    """The other party as its verified signed node record describes it.

    ``version`` is the record's own version (0 when unknown: a ``PeerDiscovered`` logged before
    versions were kept); a record is never replaced by one of the same or a lower version.
    """

    node_id: NodeId
    api_url: str
    sign_key: SignKey
    box_key: BoxKey
    version: int = 0

    def payload(self) -> dict[str, Any]:
        return {
            "node_id": str(self.node_id), "api_url": self.api_url,
            "sign_key": self.sign_key.b64url(), "box_key": self.box_key.b64url(),
            "version": self.version,
        }

    def same_record(self, other: PeerInfo) -> bool:
        """Whether ``other`` says the same of the peer as this (its version aside)."""
        return (self.node_id, self.api_url, self.sign_key, self.box_key) == (
            other.node_id, other.api_url, other.sign_key, other.box_key)


@dataclass(frozen=True, slots=True)
class HeldCheckpoint:
    """A directory checkpoint (C2SP signed note text) and the tree size it commits to."""

    origin: str
    size: int
    note: str


@dataclass(frozen=True, slots=True)
class ReceiveToken:
    """A delivery whose grant signature, peer record and log inclusion were verified."""

    grant: Grant
    grant_signature: bytes
    sealed_token: bytes
    peer: PeerInfo
    checkpoint: HeldCheckpoint


def decide_receive(
    state: TokenState,
    command: ReceiveToken,
    *,
    me: NodeId,
    known_peer: PeerInfo | None,
    held: HeldCheckpoint | None,
    now: int,
    peer_stream_version: int | None = None,
) -> list[NewEvent] | Refusal:
    """Events for a verified delivery, or why it is refused (see module doc).

    The peer's record is logged (``PeerDiscovered``) when none is known, or when it differs
    from the known one and is of a higher version: a grant naming an older record of the peer
    (a directory may name any record the peer ever signed) is accepted, but its record does
    not replace the newer one, so the node never goes back to a peer's old URL or keys.
    ``peer_stream_version`` is the peer's stream version the known record was read at (the
    append then fails if another record was logged meanwhile).
    """
    grant = command.grant
    if not grant.involves(me):
        return Refusal(403, "not-a-party", "this node is neither initiator nor responder")
    if grant.initiator == grant.responder:
        return Refusal(422, "invalid-grant", "a grant joins two different nodes")
    role = "initiator" if grant.initiator == me else "responder"
    peer_id = grant.responder if role == "initiator" else grant.initiator
    if command.peer.node_id != peer_id:
        return Refusal(422, "wrong-peer-record", "the peer record is not the other party's")
    if state.status is not TokenStatus.UNKNOWN:
        token = state.token
        same = token is None or (
            token.grant == grant
            and hmac.compare_digest(token.sealed_token, command.sealed_token)
            and hmac.compare_digest(token.grant_signature, command.grant_signature)
        )
        if token is not None and not same:
            return Refusal(409, "grant-conflict", "this grant id came before with other contents")
        return []  # idempotent: the same delivery again changes nothing
    if grant.expired(now):
        return Refusal(410, "grant-expired", "the grant expired before it arrived")
    payload: dict[str, Any] = {
        "grant_id": grant.grant_id, "peer": str(peer_id), "role": role, "suite": grant.suite,
        "issued_at": grant.issued_at, "expires_at": grant.expires_at,
        "grant": b64url(grant.canonical_bytes()),
        "grant_signature": b64url(command.grant_signature),
        "sealed_token": b64url(command.sealed_token),
    }
    checkpoint = command.checkpoint
    if held is None or checkpoint.size > held.size:
        payload["directory_checkpoint"] = {
            "origin": checkpoint.origin, "size": checkpoint.size, "note": checkpoint.note,
        }
    events = [NewEvent(ev.grant_stream(grant.grant_id), ev.TOKEN_RECEIVED, payload,
                       expected_version=0)]
    if known_peer is None or (not known_peer.same_record(command.peer)
                              and command.peer.version > known_peer.version):
        events.append(NewEvent(ev.node_stream(str(peer_id)), ev.PEER_DISCOVERED,
                               command.peer.payload(), expected_version=peer_stream_version))
    return events


def decide_expiry(tokens: list[TokenState], now: int) -> list[NewEvent]:
    """``TokenExpired`` for every received token whose grant has expired at ``now``."""
    out: list[NewEvent] = []
    for state in tokens:
        if state.status is TokenStatus.RECEIVED and state.at(now) is TokenStatus.EXPIRED:
            assert state.token is not None
            grant_id = state.token.grant.grant_id
            out.append(NewEvent(ev.grant_stream(grant_id), ev.TOKEN_EXPIRED,
                                {"grant_id": grant_id}, expected_version=state.version))
    return out


def fork_evidence(grant_id: str, held: HeldCheckpoint, received: str) -> NewEvent:
    """The event that keeps a directory fork as evidence (both checkpoints, verbatim)."""
    return NewEvent(DIRECTORY_STREAM, ev.DIRECTORY_FORK_DETECTED, {
        "grant_id": grant_id, "held_checkpoint": held.note, "received_checkpoint": received,
    })
