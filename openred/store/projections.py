"""Projections: current state derived from events, as tables updated with every append.

A projection is pure: ``apply(event)`` looks only at the event and returns row operations
(:class:`Upsert`, :class:`Update`, :class:`Delete`). The store executes them in the same
transaction as the append and advances the projection's position, so a projection never lags
or runs ahead of the log, and rebuilding it by replay gives the same rows byte for byte.
Projection tables are created by migrations, never by the projection.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeAlias

from openred.errors import SchemaError
from openred.store.events import RecordedEvent

SqlValue: TypeAlias = str | int | bytes | None


@dataclass(frozen=True, slots=True)
class Upsert:
    """Insert ``row``; if a row with the same ``key`` columns exists, replace its other columns.

    With ``grows`` (a column of ``row``), an existing row is replaced only when ``row``'s value
    of that column is larger: a row that must never go back (the newest checkpoint held)
    stays the largest one whatever order the log holds its events in.
    """

    table: str
    key: tuple[str, ...]
    row: Mapping[str, SqlValue]
    grows: str | None = None


@dataclass(frozen=True, slots=True)
class Update:
    """Set ``values`` on the rows matching ``where`` (no row matching is not an error)."""

    table: str
    where: Mapping[str, SqlValue]
    values: Mapping[str, SqlValue]


@dataclass(frozen=True, slots=True)
class Delete:
    """Delete the rows matching ``where``."""

    table: str
    where: Mapping[str, SqlValue]


RowOp: TypeAlias = Upsert | Update | Delete


class Projection(Protocol):
    """A named view of the log; owns ``tables``; reacts to the event types in ``handles``."""

    @property
    def name(self) -> str: ...

    @property
    def tables(self) -> Sequence[str]: ...

    @property
    def handles(self) -> frozenset[str]: ...

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        """The row operations this event causes (pure: no I/O, no clock)."""
        ...


class ProjectionRegistry:
    """The projections a store keeps up to date."""

    def __init__(self, projections: Iterable[Projection] = ()) -> None:
        self._by_name: dict[str, Projection] = {}
        self._frozen = False
        # Once frozen: event type -> the projections handling it, in registration order.
        self._by_type: dict[str, tuple[Projection, ...]] = {}
        for projection in projections:
            self.add(projection)

    def freeze(self) -> None:
        """Refuse every later change (the store freezes its projections when it opens)."""
        self._frozen = True

    @property
    def frozen(self) -> bool:
        return self._frozen

    def add(self, projection: Projection) -> None:
        if self._frozen:
            raise SchemaError("the projection registry is frozen: a store is open on it")
        if projection.name in self._by_name:
            raise ValueError(f"projection {projection.name!r} is registered twice")
        owned = {t for p in self._by_name.values() for t in p.tables}
        clash = owned.intersection(projection.tables)
        if clash:
            raise ValueError(f"tables {sorted(clash)} already belong to another projection")
        self._by_name[projection.name] = projection

    def __iter__(self) -> Iterator[Projection]:
        return iter(self._by_name.values())

    def __len__(self) -> int:
        return len(self._by_name)

    @property
    def names(self) -> list[str]:
        return list(self._by_name)

    def tables(self) -> list[str]:
        return [t for p in self._by_name.values() for t in p.tables]

    def handlers(self, event_type: str) -> tuple[Projection, ...]:
        """The projections handling ``event_type``, in registration order.

        Looked up once per type after :meth:`freeze` (nothing can be added any more), on every
        call before it.
        """
        found = self._by_type.get(event_type)
        if found is None:
            found = tuple(p for p in self._by_name.values() if event_type in p.handles)
            if self._frozen:
                self._by_type[event_type] = found
        return found

    def operations(self, event: RecordedEvent) -> list[RowOp]:
        """All row operations ``event`` causes across projections, in registration order."""
        ops: list[RowOp] = []
        for projection in self.handlers(event.type):
            ops.extend(projection.apply(event))
        return ops
