"""One pure ``decide_*`` per command: every status code the directory answers is chosen here.

Each function takes the current state it needs (a :class:`NodeView` or None), the command and
``now``, and returns the events to append (with the success status) or raises
:class:`~openred.errors.RequestRefused` with the status and problem slug of DESIGN §3. Nothing
here does I/O or reads the clock, so each branch is tested directly; the service only gathers
the state, calls one of these, appends what it returns, and the route serializes the answer.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

from openred.crypto.identity import b64url
from openred.crypto.records import SignedNodeRecord, verify_signed_record
from openred.directory import events as ev
from openred.errors import CryptoError, InvalidSignature, RequestRefused
from openred.store.events import NewEvent

__all__ = [
    "ACTIVE",
    "DEREGISTERED",
    "EXPIRED",
    "REVOKED",
    "STALE",
    "NodeView",
    "decide_deregistration",
    "decide_discovery_access",
    "decide_grant",
    "decide_heartbeat",
    "decide_registration",
    "decide_revocation",
    "decide_status",
]

ACTIVE, STALE, EXPIRED, REVOKED, DEREGISTERED = (
    "active", "stale", "expired", "revoked", "deregistered"
)
LISTED_STATUSES = (ACTIVE, STALE, EXPIRED, REVOKED)
"""Statuses discovery shows (a deregistered node is gone)."""


@dataclass(frozen=True, slots=True)
class NodeView:
    """What the decisions need to know about one node (from the read model)."""

    node_id: str
    status: str
    version: int
    record_hash: str
    last_seen: int
    record_json: str
    signature: str
    sign_key: str = ""

    def signed_record(self) -> SignedNodeRecord:
        """The node's signed record exactly as it registered it."""
        return SignedNodeRecord.from_wire(
            {"record": json.loads(self.record_json), "signature": self.signature}
        )


def decide_registration(
    existing: NodeView | None, signed: SignedNodeRecord, *, signer: str, now: int, window: int,
    signature_valid: bool | None = None,
) -> tuple[int, list[NewEvent]]:
    """(201 or 200, events) for a node registering ``signed``, or RequestRefused.

    ``signature_valid``: whether the record's signature verified, when the caller had it
    checked already (off the event loop: ``records.record_signature_check``); None checks it
    here."""
    record = signed.record
    # 1. Self-certifying: only the node itself registers or moves its record.
    if signer != record.node_id:
        raise RequestRefused(403, "not-your-node",
                             f"{signer} cannot register or change node {record.node_id}")
    # 2. The record is the node's own word: node_id = id(sign_key), signed by sign_key.
    try:
        verify_signed_record(signed, signature_valid=signature_valid)
    except (InvalidSignature, CryptoError) as exc:
        raise RequestRefused(422, "invalid-record", str(exc)) from exc
    # 3. A record from the future is refused (a clock that far off breaks expiry anyway).
    if record.issued_at > now + window:
        raise RequestRefused(422, "invalid-record", "issued_at is in the future")
    if existing is None:
        return 201, [ev.record_event(ev.NODE_REGISTERED, signed, now)]
    # 4. A revoked node stays revoked.
    if existing.status == REVOKED:
        raise RequestRefused(403, "revoked", f"node {record.node_id} is revoked")
    same = existing.record_hash == _b64_hash(signed)
    # 5. Versions only grow: an older record (a replayed move) or a changed one under the same
    #    version is refused.
    if not same and record.version <= existing.version:
        raise RequestRefused(
            409, "stale-record",
            f"record version {record.version} is not newer than {existing.version}")
    if existing.status == DEREGISTERED:
        if same:
            raise RequestRefused(409, "stale-record",
                                 "a deregistered node registers again with a newer version")
        return 201, [ev.record_event(ev.NODE_REGISTERED, signed, now)]
    if same:
        # Registering the same record again is a heartbeat.
        return 200, _reactivate(existing, now)
    return 200, [ev.record_event(ev.NODE_UPDATED, signed, now)]


def _b64_hash(signed: SignedNodeRecord) -> str:
    return b64url(signed.hash)


def _reactivate(node: NodeView, now: int) -> list[NewEvent]:
    if node.status in (STALE, EXPIRED):
        return [ev.status_event(node.node_id, ACTIVE, node.status, now, now)]
    return []


def decide_heartbeat(existing: NodeView | None, *, signer: str, now: int) -> list[NewEvent]:
    """Events for a heartbeat (only a status transition is an event), or RequestRefused."""
    if existing is None or existing.status == DEREGISTERED or existing.node_id != signer:
        raise RequestRefused(404, "unknown-node", f"node {signer} is not registered")
    if existing.status == REVOKED:
        raise RequestRefused(403, "revoked", f"node {signer} is revoked")
    return _reactivate(existing, now)


def decide_deregistration(
    existing: NodeView | None, *, node_id: str, signer: str, now: int
) -> list[NewEvent]:
    """``NodeDeregistered`` when a node leaves, or RequestRefused."""
    if signer != node_id:
        raise RequestRefused(403, "not-your-node", f"{signer} cannot deregister {node_id}")
    if existing is None or existing.status == DEREGISTERED:
        raise RequestRefused(404, "unknown-node", f"node {node_id} is not registered")
    if existing.status == REVOKED:
        raise RequestRefused(403, "revoked", f"node {node_id} is revoked")
    return [ev.deregistered_event(node_id, now)]


def decide_revocation(existing: NodeView | None, *, node_id: str, reason: str,
                      now: int) -> list[NewEvent]:
    """``NodeRevoked`` (operator command), or RequestRefused."""
    if existing is None:
        raise RequestRefused(404, "unknown-node", f"node {node_id} is not known")
    if existing.status == REVOKED:
        raise RequestRefused(409, "already-revoked", f"node {node_id} is already revoked")
    return [ev.revoked_event(node_id, reason, now)]


def decide_discovery_access(requester: NodeView | None, *, signer: str) -> None:
    """Only registered, non-revoked nodes may discover others."""
    if requester is None or requester.status == DEREGISTERED:
        raise RequestRefused(401, "bad-signature", f"unknown key {signer!r}")
    if requester.status == REVOKED:
        raise RequestRefused(403, "revoked", f"node {signer} is revoked")


def decide_grant(initiator: NodeView | None, target: NodeView | None, *, signer: str,
                 target_id: str) -> None:
    """Whether ``signer`` may get a grant to ``target_id`` now; RequestRefused saying why not."""
    # 1. Not to itself.
    if target_id == signer:
        raise RequestRefused(422, "same-node", "a node cannot request a connection to itself")
    # 2. The initiator is registered, not revoked, and active.
    decide_discovery_access(initiator, signer=signer)
    assert initiator is not None
    if initiator.status != ACTIVE:
        raise RequestRefused(409, "initiator-not-active",
                             f"node {signer} is {initiator.status}: send a heartbeat first")
    # 3. The target exists, is not revoked, and is active (DESIGN §4).
    if target is None or target.status == DEREGISTERED:
        raise RequestRefused(404, "unknown-target", f"node {target_id} is not registered")
    if target.status == REVOKED:
        raise RequestRefused(403, "target-revoked", f"node {target_id} is revoked")
    if target.status == EXPIRED:
        raise RequestRefused(410, "target-expired", f"node {target_id} has expired")
    if target.status != ACTIVE:
        raise RequestRefused(409, "target-not-active", f"node {target_id} is {target.status}")


def decide_status(node: NodeView, *, last_seen: int, now: int, stale_after: int,
                  expire_after: int | None) -> list[NewEvent]:
    """The status transition a silent node is due (active → stale → expired), if any."""
    if node.status not in (ACTIVE, STALE):
        return []
    silent = now - last_seen
    if expire_after is not None and silent >= expire_after:
        return [ev.status_event(node.node_id, EXPIRED, node.status, last_seen, now)]
    if node.status == ACTIVE and silent >= stale_after:
        return [ev.status_event(node.node_id, STALE, node.status, last_seen, now)]
    return []
