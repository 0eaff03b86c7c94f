"""The SQL side of projections: row operations turned into statements, planned and executed.

Projections themselves are pure (:mod:`openred.store.projections`); this module is where their
operations meet SQLite. Statement text is built once per shape of operation, and every table
and column name is checked against a strict identifier pattern before it reaches SQL; values are
always bound parameters.
"""

from __future__ import annotations

import functools
import re
import sqlite3
from collections.abc import Iterable, Sequence
from typing import Any

from openred.errors import StoreError
from openred.store.events import EntryFields, EventRegistry
from openred.store.projections import Delete, ProjectionRegistry, RowOp, Update, Upsert

_IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


@functools.lru_cache(maxsize=1024)
def _statement(kind: type[RowOp], table: str, columns: tuple[str, ...],
               key: tuple[str, ...], grows: str | None = None) -> str:
    """The SQL text of one shape of row operation, built and checked once per shape.

    ``columns`` are the Upsert's row columns or the Update's SET columns; ``key`` the Upsert's
    conflict key or the WHERE columns; ``grows`` the Upsert's column that must grow for an
    existing row to be replaced.
    """
    for name in (table, *columns, *key, *([grows] if grows is not None else [])):
        if not _IDENT.fullmatch(name):
            raise StoreError(f"projection used an invalid SQL identifier: {name!r}")
    if kind is Upsert:
        updates = [c for c in columns if c not in key]
        if grows is not None and (grows not in updates):
            raise StoreError(f"projection's growing column {grows!r} is not one it sets")
        guard = f" WHERE excluded.{grows} > {table}.{grows}" if grows is not None else ""
        return (
            f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({', '.join('?' * len(columns))}) "
            f"ON CONFLICT({', '.join(key)}) DO "
            + (f"UPDATE SET {', '.join(f'{c}=excluded.{c}' for c in updates)}{guard}" if updates
               else "NOTHING")
        )
    where = " AND ".join(f"{c}=?" for c in key)
    if kind is Update:
        return f"UPDATE {table} SET {', '.join(f'{c}=?' for c in columns)} WHERE {where}"
    return f"DELETE FROM {table} WHERE {where}"


def _sql_for(op: RowOp) -> tuple[str, tuple[Any, ...]]:
    if isinstance(op, Upsert):
        return (_statement(Upsert, op.table, tuple(op.row), tuple(op.key), op.grows),
                tuple(op.row.values()))
    if isinstance(op, Update):
        return (_statement(Update, op.table, tuple(op.values), tuple(op.where)),
                (*op.values.values(), *op.where.values()))
    assert isinstance(op, Delete)
    return _statement(Delete, op.table, (), tuple(op.where)), tuple(op.where.values())


ProjectionPlan = list[tuple[str, list[tuple[Any, ...]]]]
"""Grouped projection statements: (SQL, parameter rows), in the order they must run."""


def plan_projections(
    projections: ProjectionRegistry,
    registry: EventRegistry,
    entries: Sequence[EntryFields],
) -> ProjectionPlan:
    """The SQL every projection needs for ``entries`` (pure: no database is touched)."""
    plan: ProjectionPlan = []
    if not entries or not len(projections):
        return plan
    # Consecutive operations of the same shape go to SQLite in one executemany: same statements,
    # same order, a fraction of the per-statement overhead.
    pending = ""
    rows: list[tuple[Any, ...]] = []
    handlers = projections.handlers
    for entry in entries:
        if not handlers(entry.type):
            continue
        for op in projections.operations(registry.decode(entry)):
            sql, params = _sql_for(op)
            if sql != pending:
                if rows:
                    plan.append((pending, rows))
                pending, rows = sql, []
            rows.append(params)
    if rows:
        plan.append((pending, rows))
    return plan


def execute_plan(
    conn: sqlite3.Connection, projections: ProjectionRegistry, plan: ProjectionPlan, last: int
) -> None:
    """Run a plan and advance every projection to ``last`` (the caller holds the transaction)."""
    for sql, rows in plan:
        conn.executemany(sql, rows)
    if len(projections):
        conn.executemany(
            "INSERT INTO projection_positions (name, position) VALUES (?, ?) "
            "ON CONFLICT(name) DO UPDATE SET position=excluded.position",
            [(name, last) for name in projections.names],
        )


def apply_projections(
    conn: sqlite3.Connection,
    projections: ProjectionRegistry,
    registry: EventRegistry,
    entries: Sequence[EntryFields],
) -> None:
    """Run every projection over ``entries`` and advance its position (caller holds the tx)."""
    if entries:
        execute_plan(conn, projections, plan_projections(projections, registry, entries),
                     entries[-1].seq)


def project_events(
    conn: sqlite3.Connection,
    projections: ProjectionRegistry,
    registry: EventRegistry,
    events: Iterable[EntryFields],
    *,
    batch_size: int = 5000,
) -> int:
    """Apply ``projections`` to a stream of events in batches; return how many were read."""
    count = 0
    batch: list[EntryFields] = []
    for event in events:
        batch.append(event)
        count += 1
        if len(batch) >= batch_size:
            apply_projections(conn, projections, registry, batch)
            batch = []
    apply_projections(conn, projections, registry, batch)
    return count
