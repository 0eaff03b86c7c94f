"""The directory's projections: nodes and grants (pure: an event in, row operations out)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from dataclasses import dataclass, field

from openred.crypto.identity import b64url
from openred.directory import events as ev
from openred.directory.models import DirectoryGrant, DirectoryNode
from openred.store.codec import canonical_json
from openred.store.events import RecordedEvent
from openred.store.projections import ProjectionRegistry, RowOp, SqlValue, Update, Upsert

__all__ = ["GrantsProjection", "NodesProjection", "directory_projections", "node_row"]

NODES = str(DirectoryNode.__tablename__)
GRANTS = str(DirectoryGrant.__tablename__)


def _record_columns(payload: dict[str, object]) -> dict[str, str | int]:
    record = payload["record"]
    assert isinstance(record, dict)
    canonical = canonical_json(record)  # RFC 8785, as the node signed it
    return {
        "node_id": record["node_id"], "api_url": record["api_url"],
        "sign_key": record["sign_key"], "box_key": record["box_key"],
        "version": record["version"], "issued_at": record["issued_at"],
        "record": canonical.decode("utf-8"), "signature": str(payload["signature"]),
        "record_hash": b64url(hashlib.sha256(canonical).digest()),
    }


@dataclass(frozen=True)
class NodesProjection:
    """Every node the directory knows, with its current signed record and status."""

    name: str = "directory_nodes"
    tables: tuple[str, ...] = (NODES,)
    handles: frozenset[str] = field(default=frozenset({
        ev.NODE_REGISTERED, ev.NODE_UPDATED, ev.NODE_STATUS_CHANGED, ev.NODE_DEREGISTERED,
        ev.NODE_REVOKED,
    }))

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload  # read only
        at = p["at"]
        if event.type == ev.NODE_REGISTERED:
            yield Upsert(NODES, ("node_id",), {
                **_record_columns(p), "status": "active", "last_seen": at,
                "registered_at": at, "updated_at": at,
            })
        elif event.type == ev.NODE_UPDATED:
            columns = _record_columns(p)
            node_id = columns.pop("node_id")
            yield Update(NODES, {"node_id": node_id},
                         {**columns, "status": "active", "last_seen": at, "updated_at": at})
        elif event.type == ev.NODE_STATUS_CHANGED:
            yield Update(NODES, {"node_id": p["node_id"]},
                         {"status": p["status"], "last_seen": p["last_seen"], "updated_at": at})
        elif event.type == ev.NODE_DEREGISTERED:
            yield Update(NODES, {"node_id": p["node_id"]},
                         {"status": "deregistered", "updated_at": at})
        else:
            yield Update(NODES, {"node_id": p["node_id"]},
                         {"status": "revoked", "updated_at": at})


def node_row(events: Iterable[RecordedEvent], row: dict[str, SqlValue] | None = None,
             ) -> dict[str, SqlValue] | None:
    """The ``directory_nodes`` row one node's stream gives (its events in order), or None;
    ``row``: the row its earlier events gave (not changed), when ``events`` are the rest.

    The projection's own row operations folded in memory, so the row is exactly the one a
    replay writes: the directory decides on this, read from the signed log, not on the table
    (docs/decisions.md, "The directory's log against a hostile local process").
    """
    nodes = NodesProjection()
    row = None if row is None else dict(row)
    for event in events:
        if event.type not in nodes.handles:
            continue
        for op in nodes.apply(event):
            if isinstance(op, Upsert):
                row = {**(row or {}), **op.row}
            elif isinstance(op, Update) and row is not None:
                row.update(op.values)
    return row


@dataclass(frozen=True)
class GrantsProjection:
    """Grants minted (public fields) and the ones whose delivery failed."""

    name: str = "directory_grants"
    tables: tuple[str, ...] = (GRANTS,)
    handles: frozenset[str] = field(
        default=frozenset({ev.CONNECTION_GRANTED, ev.CONNECTION_GRANT_FAILED})
    )

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        if event.type == ev.CONNECTION_GRANTED:
            yield Upsert(GRANTS, ("grant_id",), {
                "grant_id": p["grant_id"], "initiator": p["initiator"],
                "responder": p["responder"], "issued_at": p["issued_at"],
                "expires_at": p["expires_at"], "suite": p["suite"], "state": "granted",
                "failure": None,
            })
        else:
            yield Update(GRANTS, {"grant_id": p["grant_id"]}, {
                "state": "failed",
                "failure": f"{','.join(p['undelivered'])}: {p['reason']}",
            })


def directory_projections() -> ProjectionRegistry:
    """Every projection the directory keeps."""
    return ProjectionRegistry([NodesProjection(), GrantsProjection()])
