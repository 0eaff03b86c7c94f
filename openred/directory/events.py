"""The directory's event types and payloads (issue 7 §4).

Every action the directory takes is one of these, in its own signed log; nothing secret is ever
in a payload (no token, no token secret). Instants are Unix seconds chosen by the decision that
produced the event, so replaying the log rebuilds the same rows.

=========================  ==================================================================
``NodeRegistered``         ``{record, signature, at}`` — a node's first (or renewed) record
``NodeUpdated``            ``{record, signature, at}`` — a newer version of its record
``NodeStatusChanged``      ``{node_id, status, previous, last_seen, at}`` — active/stale/expired
``NodeDeregistered``       ``{node_id, at}`` — the node asked to leave
``NodeRevoked``            ``{node_id, reason, at}`` — the operator banned it
``ConnectionGranted``      the grant's public fields and hash (``transparency``)
``ConnectionGrantFailed``  ``{grant_id, undelivered, reason, at}`` — a push did not arrive
=========================  ==================================================================
"""

from __future__ import annotations

from typing import Any

from openred.crypto.records import SignedNodeRecord
from openred.crypto.transparency import CONNECTION_GRANTED
from openred.store.events import EventRegistry, NewEvent

__all__ = [
    "CONNECTION_GRANTED",
    "CONNECTION_GRANT_FAILED",
    "DIRECTORY_EVENT_TYPES",
    "NODE_DEREGISTERED",
    "NODE_REGISTERED",
    "NODE_REVOKED",
    "NODE_STATUS_CHANGED",
    "NODE_UPDATED",
    "directory_registry",
    "grant_stream",
    "node_stream",
]

NODE_REGISTERED = "NodeRegistered"
NODE_UPDATED = "NodeUpdated"
NODE_STATUS_CHANGED = "NodeStatusChanged"
NODE_DEREGISTERED = "NodeDeregistered"
NODE_REVOKED = "NodeRevoked"
CONNECTION_GRANT_FAILED = "ConnectionGrantFailed"

DIRECTORY_EVENT_TYPES = (
    NODE_REGISTERED, NODE_UPDATED, NODE_STATUS_CHANGED, NODE_DEREGISTERED, NODE_REVOKED,
    CONNECTION_GRANTED, CONNECTION_GRANT_FAILED,
)


def directory_registry() -> EventRegistry:
    """An event registry that knows every directory event type at its current version."""
    registry = EventRegistry()
    for event_type in DIRECTORY_EVENT_TYPES:
        registry.register(event_type)
    return registry


def node_stream(node_id: str) -> str:
    return f"node:{node_id}"


def grant_stream(grant_id: str) -> str:
    return f"grant:{grant_id}"


def record_event(event_type: str, signed: SignedNodeRecord, at: int) -> NewEvent:
    """``NodeRegistered`` or ``NodeUpdated`` carrying the signed record verbatim."""
    payload: dict[str, Any] = {**signed.to_wire(), "at": at}
    return NewEvent(node_stream(str(signed.record.node_id)), event_type, payload)


def status_event(node_id: str, status: str, previous: str, last_seen: int, at: int) -> NewEvent:
    return NewEvent(node_stream(node_id), NODE_STATUS_CHANGED, {
        "node_id": node_id, "status": status, "previous": previous, "last_seen": last_seen,
        "at": at,
    })


def deregistered_event(node_id: str, at: int) -> NewEvent:
    return NewEvent(node_stream(node_id), NODE_DEREGISTERED, {"node_id": node_id, "at": at})


def revoked_event(node_id: str, reason: str, at: int) -> NewEvent:
    return NewEvent(node_stream(node_id), NODE_REVOKED,
                    {"node_id": node_id, "reason": reason, "at": at})


def grant_failed_event(grant_id: str, undelivered: list[str], reason: str, at: int) -> NewEvent:
    return NewEvent(grant_stream(grant_id), CONNECTION_GRANT_FAILED, {
        "grant_id": grant_id, "undelivered": sorted(undelivered), "reason": reason, "at": at,
    })
