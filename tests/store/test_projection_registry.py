"""ProjectionRegistry.handlers: which projections an event type reaches, and in what order."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from openred.store.events import RecordedEvent
from openred.store.projections import ProjectionRegistry, RowOp, Upsert


@dataclass(frozen=True)
class Named:
    name: str
    handles: frozenset[str]
    tables: tuple[str, ...] = field(default=())

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        yield Upsert(f"t_{self.name}", ("k",), {"k": event.seq})


def event(type_: str) -> RecordedEvent:
    return RecordedEvent(1, "s", 1, type_, 1, "2026-12-01T00:00:00.000000Z", {})


def test_handlers_follow_registration_order_before_and_after_freezing() -> None:
    a = Named("a", frozenset({"X", "Y"}), ("ta",))
    b = Named("b", frozenset({"Y"}), ("tb",))
    registry = ProjectionRegistry([a])
    assert registry.handlers("Y") == (a,)
    registry.add(b)  # not frozen: nothing is remembered yet, b is seen at once
    assert registry.handlers("Y") == (a, b)
    registry.freeze()
    for _ in range(2):  # looked up, then remembered: the same answer
        assert registry.handlers("X") == (a,)
        assert registry.handlers("Y") == (a, b)
        assert registry.handlers("Z") == ()
    assert [op.table for op in registry.operations(event("Y"))] == ["t_a", "t_b"]
    assert registry.operations(event("Z")) == []
