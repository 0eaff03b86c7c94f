"""The schema a log's database must have: exactly what the migrations of its kind build.

A SQLite file can carry objects that change what a read returns without touching a row: a
trigger that rewrites rows as they are inserted, a view or a renamed table answering in place of
``events``, an index the planner prefers to the table, a table whose definition dropped a
``CHECK``. Verification trusts none of them: the expected schema is built by running the kind's
migrations (Alembic branch ``f"{kind}@head"``) in a fresh database, and every ``sqlite_master``
entry of the file under test must be one of those, with the same definition — nothing extra,
nothing missing. TEMP objects live only in the connection that made them and never reach a file.

Definitions are compared after normalizing white space outside quoted text, so a migration
reformatted in the source still matches the files its earlier text created.

Two readers use it: ``audit_tools verify`` (step 1), and the store each time it opens a log. A
trigger runs on every write the node itself makes, so one planted in the file by a process that
once had the node's uid would keep acting for it after the node is cleaned up (rewriting a
peer's keys or address as the node records them, forgetting the directory checkpoint a fork is
detected against); the store refuses such a file instead of running it (``foreign_code`` before
the migrations touch it, ``schema_differences`` after).
"""

from __future__ import annotations

import os
import re
import sqlite3
import tempfile
import threading
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

from openred.errors import OpenRedError


class UnknownKind(OpenRedError):
    """The log names a kind this code has no migrations for."""


@dataclass(frozen=True, order=True, slots=True)
class SchemaObject:
    """One ``sqlite_master`` entry: what it is, its name, its table and its normalized SQL."""

    type: str
    name: str
    table: str
    sql: str | None

    def describe(self) -> str:
        return f"{self.type} {self.name}" + (
            f" on {self.table}" if self.type in ("index", "trigger") else "")


_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def normalize_sql(sql: str | None) -> str | None:
    """Collapse runs of white space outside quotes to one space, strip the ends, and unquote
    plain identifiers (``"events"`` is ``events``: SQLite quotes a table's name in every
    definition naming it when the table is renamed, even back to its own name)."""
    if sql is None:
        return None
    out: list[str] = []
    quote: str | None = None
    closing = {"'": "'", '"': '"', "`": "`", "[": "]"}
    start = 0
    pending_space = False
    for char in sql.strip():
        if quote is not None:
            out.append(char)
            if char == quote:
                inner = "".join(out[start + 1:-1])
                if quote != "'" and _IDENTIFIER.fullmatch(inner):
                    del out[start:]
                    out.append(inner)
                quote = None
            continue
        if char.isspace():
            pending_space = True
            continue
        if pending_space and out:
            out.append(" ")
        pending_space = False
        if char in closing:
            quote = closing[char]
            start = len(out)
        out.append(char)
    return "".join(out)


def read_schema(conn: sqlite3.Connection) -> list[SchemaObject]:
    """Every persistent schema object of the database behind ``conn``."""
    rows = conn.execute("SELECT type, name, tbl_name, sql FROM main.sqlite_master").fetchall()
    return sorted(
        SchemaObject(str(t), str(n), str(tbl), normalize_sql(sql) if isinstance(sql, str)
                     else None)
        for t, n, tbl, sql in rows
    )


def migrate_fresh(path: Path, kind: str) -> None:
    """Build a new database at ``path`` with the migrations of ``kind`` (its branch head)."""
    from openred.store.migrate import kinds, upgrade

    if kind not in kinds():
        raise UnknownKind(f"no migrations for a log of kind {kind!r}")
    upgrade(path, kind)  # to f"{kind}@head"


_BUILDING = threading.Lock()  # verify may prepare the schema in a thread while it waits


def _template(kind: str) -> bytes:
    """The bytes of a new database the migrations of ``kind`` built (migrated once per kind)."""
    with _BUILDING:
        return _built(kind)


@lru_cache(maxsize=8)
def _built(kind: str) -> bytes:
    with tempfile.TemporaryDirectory(prefix="openred-schema-") as tmp:
        db = Path(tmp) / "fresh.db"
        migrate_fresh(db, kind)
        return db.read_bytes()


def fresh_database(path: Path, kind: str) -> None:
    """Write at ``path`` a new, empty database with the schema of a ``kind`` log.

    Created exclusively (an existing file or link there, even a dangling one, is an error) and
    readable by this user only: a replayed state holds what the log holds.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(_template(kind))


@lru_cache(maxsize=8)
def expected_schema(kind: str) -> tuple[SchemaObject, ...]:
    """The schema the migrations of ``kind`` build in a fresh database."""
    with tempfile.TemporaryDirectory(prefix="openred-schema-") as tmp:
        db = Path(tmp) / "expected.db"
        fresh_database(db, kind)
        conn = sqlite3.connect(db)
        try:
            return tuple(read_schema(conn))
        finally:
            conn.close()


def schema_differences(conn: sqlite3.Connection, kind: str) -> list[str]:
    """What in the database behind ``conn`` is not the schema of a ``kind`` log, first first.

    Objects that are not the store's own come first (they can change what reads return), then
    changed definitions, then objects the migrations create that are missing.
    """
    expected = {(o.type, o.name): o for o in expected_schema(kind)}
    objects = read_schema(conn)
    actual = {(o.type, o.name): o for o in objects}
    foreign, changed, missing = [], [], []
    if len(actual) != len(objects):
        seen: set[tuple[str, str]] = set()
        for obj in objects:
            if (obj.type, obj.name) in seen:
                foreign.append(f"{obj.describe()} is defined twice")
            seen.add((obj.type, obj.name))
    order = {"table": 0, "view": 1, "index": 2, "trigger": 3}
    for key, obj in sorted(actual.items(), key=lambda item: (order.get(item[0][0], 4), item[0])):
        if key not in expected:
            foreign.append(f"{obj.describe()} is not part of the {kind} log's schema")
        elif expected[key] != obj:
            changed.append(f"{obj.describe()} differs from the definition the migrations create")
    for key, obj in sorted(expected.items()):
        if key not in actual:
            missing.append(f"{obj.describe()} of the {kind} log's schema is missing")
    return foreign + changed + missing


def foreign_code(conn: sqlite3.Connection, kind: str) -> list[str]:
    """The triggers and views of the database behind ``conn`` that a ``kind`` log's migrations
    do not create (by name and definition): what would run, or answer, in place of the store's
    own SQL. For a database not migrated to the head yet, whose tables may still differ: the
    migrations never change a trigger or a view, so at every revision each one must be the
    head's."""
    expected = {(o.type, o.name): o for o in expected_schema(kind)}
    return [
        f"{obj.describe()} is not part of the {kind} log's schema"
        for obj in read_schema(conn)
        if obj.type in ("trigger", "view") and expected.get((obj.type, obj.name)) != obj
    ]


__all__ = [
    "SchemaObject", "UnknownKind", "expected_schema", "foreign_code", "fresh_database",
    "migrate_fresh", "normalize_sql", "read_schema", "schema_differences",
]
