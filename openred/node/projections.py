"""The node's projections: registration, peers, tokens, sessions, inbox (DESIGN §8).

Each is pure: it maps an event to row operations; the store runs them in the append's
transaction. Tables are created by migration 0002.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from openred.node import events as ev
from openred.store.events import RecordedEvent
from openred.store.projections import Delete, ProjectionRegistry, RowOp, Update, Upsert


@dataclass(frozen=True)
class RegistrationProjection:
    """Which directories this node is registered with, and under which URL."""

    name: str = "registration"
    tables: tuple[str, ...] = ("registration",)
    handles: frozenset[str] = field(default=frozenset({ev.NODE_REGISTERED}))

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        yield Upsert("registration", ("directory",), {
            "directory": p["directory"], "node_id": p["node_id"], "api_url": p["api_url"],
            "registered_at": event.recorded_at,
        })


@dataclass(frozen=True)
class PeersProjection:
    """Peers this node knows, with their keys and how many sessions it had with each."""

    name: str = "peers"
    tables: tuple[str, ...] = ("peers",)
    handles: frozenset[str] = field(
        default=frozenset({ev.PEER_DISCOVERED, ev.SESSION_ESTABLISHED})
    )

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        if event.type == ev.PEER_DISCOVERED:
            yield Upsert("peers", ("node_id",), {
                "node_id": p["node_id"], "api_url": p["api_url"], "sign_key": p["sign_key"],
                "box_key": p["box_key"], "updated_at": event.recorded_at,
            })
        else:
            yield Update("peers", {"node_id": p["peer"]}, {"last_session_at": event.recorded_at})


@dataclass(frozen=True)
class TokensProjection:
    """Tokens received and not yet used or expired (cleaned once consumed or expired)."""

    name: str = "tokens"
    tables: tuple[str, ...] = ("tokens",)
    handles: frozenset[str] = field(
        default=frozenset({ev.TOKEN_RECEIVED, ev.TOKEN_CONSUMED, ev.TOKEN_EXPIRED})
    )

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        if event.type == ev.TOKEN_RECEIVED:
            yield Upsert("tokens", ("grant_id",), {
                "grant_id": p["grant_id"], "peer": p["peer"], "role": p["role"],
                "suite": p["suite"], "issued_at": p["issued_at"], "expires_at": p["expires_at"],
                "grant": p["grant"], "grant_signature": p["grant_signature"],
                "sealed_token": p["sealed_token"], "received_at": event.recorded_at,
            })
        else:
            yield Delete("tokens", {"grant_id": p["grant_id"]})


@dataclass(frozen=True)
class SessionsProjection:
    """Sessions with their wrapped state, so they survive a restart."""

    name: str = "sessions"
    tables: tuple[str, ...] = ("sessions",)
    handles: frozenset[str] = field(default=frozenset(
        {ev.SESSION_ESTABLISHED, ev.SESSION_EXPIRED, ev.SESSION_CLOSED}
    ))

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        if event.type == ev.SESSION_ESTABLISHED:
            yield Upsert("sessions", ("session_id",), {
                "session_id": p["session_id"], "peer": p["peer"], "grant_id": p["grant_id"],
                "role": p["role"], "suite": p["suite"], "state": "active",
                "established_at": event.recorded_at, "expires_at": p["expires_at"],
                "wrapped_state": p["wrapped_state"],
            })
        elif event.type == ev.SESSION_EXPIRED:
            yield Update("sessions", {"session_id": p["session_id"]}, {"state": "expired"})
        else:
            yield Update("sessions", {"session_id": p["session_id"]}, {"state": "closed"})


@dataclass(frozen=True)
class InboxProjection:
    """Messages received, bodies still wrapped by the jail."""

    name: str = "inbox"
    tables: tuple[str, ...] = ("inbox",)
    handles: frozenset[str] = field(default=frozenset({ev.MESSAGE_RECEIVED}))

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        yield Upsert("inbox", ("message_id",), {
            "message_id": p["message_id"], "session_id": p["session_id"], "peer": p["peer"],
            "size": p["size"], "body": p["body"], "received_at": event.recorded_at,
        })


def node_projections() -> ProjectionRegistry:
    """Every projection a node keeps."""
    return ProjectionRegistry([
        RegistrationProjection(), PeersProjection(), TokensProjection(),
        SessionsProjection(), InboxProjection(),
    ])
