"""The node's projections: registration, peers, tokens, grant outcomes, sessions (DESIGN §8).

Each is pure: it maps an event to row operations; the store runs them in the append's
transaction. Tables are created by migrations 0002 and 0004. :func:`node_projections` is the
node kind's whole set: these plus the built-in modules' projections (the messaging inbox and
outbox), which every node keeps whether or not the module's routes are enabled, so a log always
replays to the same tables.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from openred.node import events as ev
from openred.store.events import RecordedEvent
from openred.store.projections import (
    Delete,
    Projection,
    ProjectionRegistry,
    RowOp,
    Update,
    Upsert,
)


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
class GrantOutcomesProjection:
    """How each grant ended (consumed or expired), kept after its token row is cleaned."""

    name: str = "grant_outcomes"
    tables: tuple[str, ...] = ("grant_outcomes",)
    handles: frozenset[str] = field(
        default=frozenset({ev.TOKEN_CONSUMED, ev.TOKEN_EXPIRED})
    )

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        consumed = event.type == ev.TOKEN_CONSUMED
        yield Upsert("grant_outcomes", ("grant_id",), {
            "grant_id": p["grant_id"], "outcome": "consumed" if consumed else "expired",
            "session_id": p.get("session_id") if consumed else None,
            "recorded_at": event.recorded_at,
        })


@dataclass(frozen=True)
class DirectoryCheckpointProjection:
    """The newest directory checkpoint a received grant was verified against."""

    name: str = "directory_checkpoint"
    tables: tuple[str, ...] = ("directory_checkpoint",)
    handles: frozenset[str] = field(default=frozenset({ev.TOKEN_RECEIVED}))

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        held = p.get("directory_checkpoint")
        if held is not None:
            # Only a larger one replaces it: two deliveries decided at once may be logged in
            # either order, and the checkpoint held must never go back (decisions, tattack).
            yield Upsert("directory_checkpoint", ("origin",), {
                "origin": held["origin"], "size": held["size"], "checkpoint": held["note"],
            }, grows="size")


@dataclass(frozen=True)
class SessionsProjection:
    """Sessions with their wrapped state, so they survive a restart."""

    name: str = "sessions"
    tables: tuple[str, ...] = ("sessions",)
    handles: frozenset[str] = field(default=frozenset({
        ev.SESSION_ESTABLISHED, ev.SESSION_EXPIRED, ev.SESSION_CLOSED, ev.SESSION_RENEWED,
        ev.SESSION_STATE_SAVED,
    }))

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        if event.type == ev.SESSION_ESTABLISHED:
            yield Upsert("sessions", ("session_id",), {
                "session_id": p["session_id"], "peer": p["peer"], "grant_id": p["grant_id"],
                "role": p["role"], "suite": p["suite"], "state": "active",
                "established_at": event.recorded_at, "expires_at": p["expires_at"],
                "wrapped_state": p["wrapped_state"], "renew_at": p.get("renew_at"),
                "renewed_by": None,
            })
        elif event.type == ev.SESSION_EXPIRED:
            yield Update("sessions", {"session_id": p["session_id"]}, {"state": "expired"})
        elif event.type == ev.SESSION_STATE_SAVED:
            yield Update("sessions", {"session_id": p["session_id"]},
                         {"wrapped_state": p["wrapped_state"]})
        elif event.type == ev.SESSION_RENEWED:
            yield Update("sessions", {"session_id": p["session_id"]},
                         {"state": "closed", "renewed_by": p["renewed_by"]})
        else:
            yield Update("sessions", {"session_id": p["session_id"]}, {"state": "closed"})


def core_projections() -> list[Projection]:
    """The node's own projections (without the built-in modules')."""
    return [
        RegistrationProjection(), PeersProjection(), TokensProjection(),
        GrantOutcomesProjection(), SessionsProjection(), DirectoryCheckpointProjection(),
    ]


def node_projections() -> ProjectionRegistry:
    """Every projection a node keeps: its own and the built-in modules' (see module doc)."""
    from openred.modules.builtin import builtin_projections
    from openred.node.cleaning import with_cleaning

    return ProjectionRegistry(with_cleaning([*core_projections(), *builtin_projections()]))
