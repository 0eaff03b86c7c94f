"""The messaging module's projections: the inbox and the outbox with delivery receipts.

Bodies stay wrapped by the jail in both tables (DESIGN §8: message bodies are stored
encrypted); the inbox is keyed by message id, so a message delivered twice is one row.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from openred.modules.messaging import events as ev
from openred.store.events import RecordedEvent
from openred.store.projections import Projection, RowOp, Update, Upsert


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


@dataclass(frozen=True)
class OutboxProjection:
    """Messages sent (bodies wrapped) and when the peer's delivery receipt arrived."""

    name: str = "outbox"
    tables: tuple[str, ...] = ("outbox",)
    handles: frozenset[str] = field(
        default=frozenset({ev.MESSAGE_SENT, ev.MESSAGE_DELIVERED})
    )

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        p = event.payload
        if event.type == ev.MESSAGE_SENT:
            yield Upsert("outbox", ("message_id",), {
                "message_id": p["message_id"], "session_id": p["session_id"],
                "peer": p["peer"], "size": p["size"], "body": p["body"],
                "sent_at": event.recorded_at, "delivered_at": None,
            })
        else:
            yield Update("outbox", {"message_id": p["message_id"]},
                         {"delivered_at": event.recorded_at})


def messaging_projections() -> list[Projection]:
    """The messaging module's projections."""
    return [InboxProjection(), OutboxProjection()]
