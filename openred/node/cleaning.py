"""Cleaning projections (DESIGN §10 "clean projections"): ended rows go, by a logged event.

Projections must always equal a replay of the log (``audit_tools verify``, step 7), so rows are
never deleted behind the log's back. Instead the lifecycle's sweep
(:class:`~openred.node.lifecycle.Housekeeper`) picks the rows that ended longer than the
retention ago and appends one ``ProjectionsCleaned`` event naming them::

    ProjectionsCleaned {before, retention, rows: {table: [key, ...], ...}}

``before`` is the cut-off (Unix seconds) the sweep used, ``rows`` lists the keys per table (every
cleanable table present, sorted, possibly empty). The event is pure data: replaying it deletes
exactly the rows it names, whatever the clock says at replay time.

Each cleanable table is cleaned by the projection that owns it (:func:`with_cleaning` wraps it),
never by another one: a projection's rows depend only on the events it handles itself, so
rebuilding or catching up one projection alone stays exact.

What is cleanable, and when a row is "ended long enough" (the sweep's rule, not the replay's):

============== ============ ==============================================================
table          key          cleaned when
============== ============ ==============================================================
sessions       session_id   ``expired`` or ``closed`` (renewed), and ``expires_at < before``
grant_outcomes grant_id     the outcome (consumed/expired) was recorded before ``before``
file_offers    offer_id     ``revoked``, ``declined`` or ``expired``, ``expires_at < before``
file_transfers offer_id     with its offer
============== ============ ==============================================================

What the node keeps outside the log for cleaned rows goes after the event is logged, by the
sweep and never by a replay (:meth:`~openred.node.lifecycle.Housekeeper.release`): cleaned
sessions leave the session ledger (``FileSessionLedger.forget``), cleaned offers' working files
leave ``DATA_DIR/files`` (:mod:`openred.modules.file_sharing.cleanup`).

Tokens need nothing here: their row is already removed by ``TokenConsumed``/``TokenExpired``.
A grant whose outcome was cleaned still cannot be used twice: its ``grant:`` stream in the log
already has entries, and ``TokenReceived`` is only ever appended at stream version 0.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from openred.node.events import PROJECTIONS_CLEANED
from openred.store.events import NewEvent, RecordedEvent
from openred.store.projections import Delete, Projection, RowOp

__all__ = [
    "CLEANABLE",
    "MAX_ROWS_PER_EVENT",
    "PROJECTIONS_CLEANED",
    "CleaningWrapper",
    "cleaned_events",
    "with_cleaning",
]

CLEANABLE: Mapping[str, str] = {
    "sessions": "session_id",
    "grant_outcomes": "grant_id",
    "file_offers": "offer_id",
    "file_transfers": "offer_id",
}
"""Every table a sweep may clean, with its key column."""

MAX_ROWS_PER_EVENT = 500
"""Keys one ``ProjectionsCleaned`` names at most; a larger sweep appends several together."""


@dataclass(frozen=True)
class CleaningWrapper:
    """A projection that also deletes its own rows named by ``ProjectionsCleaned``."""

    inner: Projection
    name: str = ""
    tables: tuple[str, ...] = ()
    handles: frozenset[str] = field(default_factory=frozenset)

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        if event.type != PROJECTIONS_CLEANED:
            return self.inner.apply(event)
        return list(_deletes(event.payload, self.tables))


def _deletes(payload: Mapping[str, Any], tables: Sequence[str]) -> Iterable[RowOp]:
    rows = payload["rows"]
    for table in tables:
        key = CLEANABLE[table]
        for value in rows.get(table, ()):
            yield Delete(table, {key: value})


def with_cleaning(projections: Iterable[Projection]) -> list[Projection]:
    """``projections``, each owning a cleanable table wrapped so it handles the cleaning."""
    out: list[Projection] = []
    for projection in projections:
        tables = tuple(projection.tables)
        if any(t in CLEANABLE for t in tables):
            out.append(CleaningWrapper(projection, projection.name, tables,
                                       frozenset(projection.handles) | {PROJECTIONS_CLEANED}))
        else:
            out.append(projection)
    return out


def cleaned_events(stream: str, due: Mapping[str, Sequence[str]], *, before: int,
                   retention: int) -> list[NewEvent]:
    """``ProjectionsCleaned`` events naming every key in ``due`` (none when nothing is due)."""
    pending = [(table, key) for table in CLEANABLE for key in sorted(set(due.get(table, ())))]
    events: list[NewEvent] = []
    for start in range(0, len(pending), MAX_ROWS_PER_EVENT):
        rows: dict[str, list[str]] = {table: [] for table in CLEANABLE}
        for table, key in pending[start:start + MAX_ROWS_PER_EVENT]:
            rows[table].append(key)
        events.append(NewEvent(stream, PROJECTIONS_CLEANED,
                               {"before": before, "retention": retention, "rows": rows}))
    return events
