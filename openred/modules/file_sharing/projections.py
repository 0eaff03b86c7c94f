"""The file_sharing module's projections: offers sent and received, and transfer progress.

``file_offers`` has one row per offer on each side (``direction`` ``sent`` or ``received``)
with its state (``offered``, ``revoked``, ``declined``, ``expired``); ``file_transfers`` one row
per fetch on the receiver with its state (``running``, ``completed``, ``failed``), the verified
bytes when it last started or stopped, where the file went and why it failed. Tables are created
by migration 0005.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from openred.modules.file_sharing import events as ev
from openred.store.events import RecordedEvent
from openred.store.projections import Projection, RowOp, Update, Upsert

_STATES = {
    ev.FILE_OFFER_REVOKED: "revoked",
    ev.FILE_OFFER_DECLINED: "declined",
    ev.FILE_OFFER_EXPIRED: "expired",
}


@dataclass(frozen=True)
class FileOffersProjection:
    """Offers this node made and received, with their state."""

    name: str = "file_offers"
    tables: tuple[str, ...] = ("file_offers",)
    handles: frozenset[str] = field(default=frozenset({
        ev.FILE_OFFERED, ev.FILE_OFFER_RECEIVED, *_STATES,
    }))

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        if event.type in (ev.FILE_OFFERED, ev.FILE_OFFER_RECEIVED):
            sent = event.type == ev.FILE_OFFERED
            yield Upsert("file_offers", ("offer_id",), {
                "offer_id": p["offer_id"], "direction": "sent" if sent else "received",
                "peer": p["peer"], "session_id": p["session_id"], "name": p["name"],
                "size": p["size"], "digest": p["digest"], "root": p["root"],
                "chunk_size": p["chunk_size"], "expires_at": p["expires_at"],
                "state": "offered", "source": p["source"] if sent else None,
                "mtime_ns": p["mtime_ns"] if sent else None, "offered_at": event.recorded_at,
            })
        else:
            yield Update("file_offers", {"offer_id": p["offer_id"]},
                         {"state": _STATES[event.type]})


@dataclass(frozen=True)
class FileTransfersProjection:
    """Fetches on the receiver: running, completed or failed, and how far they got."""

    name: str = "file_transfers"
    tables: tuple[str, ...] = ("file_transfers",)
    handles: frozenset[str] = field(default=frozenset({
        ev.FILE_TRANSFER_STARTED, ev.FILE_TRANSFER_COMPLETED, ev.FILE_TRANSFER_FAILED,
    }))

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        if event.type == ev.FILE_TRANSFER_STARTED:
            yield Upsert("file_transfers", ("offer_id",), {
                "offer_id": p["offer_id"], "state": "running",
                "verified_bytes": p["resumed_from"], "path": None, "reason": None,
                "detail": None, "started_at": event.recorded_at,
                "updated_at": event.recorded_at,
            })
        elif event.type == ev.FILE_TRANSFER_COMPLETED:
            yield Update("file_transfers", {"offer_id": p["offer_id"]}, {
                "state": "completed", "verified_bytes": p["size"], "path": p["path"],
                "updated_at": event.recorded_at,
            })
        else:
            yield Update("file_transfers", {"offer_id": p["offer_id"]}, {
                "state": "failed", "verified_bytes": p["verified_bytes"],
                "reason": p["reason"], "detail": p["detail"],
                "updated_at": event.recorded_at,
            })


def file_sharing_projections() -> list[Projection]:
    """The file_sharing module's projections."""
    return [FileOffersProjection(), FileTransfersProjection()]
