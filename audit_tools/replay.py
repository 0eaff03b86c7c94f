"""``audit_tools replay``: rebuild a node's state as of any position, for debugging.

Entries 1..SEQ are checked (hashes, links, signatures — the signatures on every core first, for
a big database) as they are read, copied into a fresh
database built by the same migrations as a node's, and run through the node's projections. The
result is the state the node had right after appending entry SEQ; with ``--out`` it stays on
disk as a normal OpenRed database (events 1..SEQ, their checkpoints, the projections).
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from audit_tools import verify as _verify
from audit_tools.source import LogSource, MalformedRow, SQLiteSource
from openred.errors import TamperedLog
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.chain import ChainChecker
from openred.store.checkpoint import parse_checkpoint_body, parse_signed_note
from openred.store.events import StoredEvent
from openred.store.migrate import upgrade
from openred.store.projection_sql import apply_projections
from openred.store.sqlite import connect

_INSERT = (
    "INSERT INTO events (seq, stream, stream_version, type, schema_version, recorded_at, "
    "payload, prev_hash, entry_hash, signature) VALUES (?,?,?,?,?,?,?,?,?,?)"
)


@dataclass
class ReplayState:
    position: int
    tables: dict[str, tuple[list[str], list[tuple[object, ...]]]]


def replay(
    source: LogSource,
    until: int,
    *,
    out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayState:
    """Rebuild projections from entries 1..``until``; raise TamperedLog on a bad entry."""
    with tempfile.TemporaryDirectory(prefix="openred-replay-") as tmp:
        target = out or Path(tmp) / "replay.db"
        if target.exists():
            raise FileExistsError(f"{target} exists; replay will not overwrite it")
        upgrade(target)
        conn = connect(target)
        try:
            return _replay_into(conn, source, until, progress)
        finally:
            conn.close()


def _replay_into(
    conn: sqlite3.Connection,
    source: LogSource,
    until: int,
    progress: Callable[[int, int], None] | None,
) -> ReplayState:
    projections = node_projections()
    registry = node_registry()
    checker = ChainChecker(recompute_hashes=not source.pseudonymized)
    signatures_checked = (
        isinstance(source, SQLiteSource) and until >= _verify.PARALLEL_THRESHOLD
    )
    if signatures_checked:
        assert isinstance(source, SQLiteSource)
        _verify.check_chain_parallel(source, until)
    conn.execute("BEGIN")
    batch: list[StoredEvent] = []

    def flush() -> None:
        conn.executemany(_INSERT, [e.as_row() for e in batch])
        apply_projections(conn, projections, registry, batch)
        batch.clear()

    for entry in source.rows(1, until):
        if isinstance(entry, MalformedRow):
            raise TamperedLog(entry.seq, entry.reason)
        checker.check(entry, verify_signature=not signatures_checked)
        batch.append(entry)
        if len(batch) >= 5000:
            flush()
            if progress:
                progress(checker.count, until)
    flush()
    if checker.count != until:
        raise TamperedLog(checker.count + 1, f"entry {checker.count + 1} is missing")
    for size, note in source.checkpoints():
        if size <= until:
            conn.execute(
                "INSERT INTO checkpoints (size, root_hash, note, signed_at) VALUES (?, ?, ?, ?)",
                (size, _root_of(note), note, "replayed"),
            )
    conn.execute("COMMIT")
    tables: dict[str, tuple[list[str], list[tuple[object, ...]]]] = {}
    for table in projections.tables():
        cursor = conn.execute(f"SELECT * FROM {table} ORDER BY 1")  # noqa: S608
        columns = [d[0] for d in cursor.description]
        tables[table] = (columns, [tuple(r) for r in cursor])
    return ReplayState(until, tables)


def _root_of(note: bytes) -> bytes:
    return parse_checkpoint_body(parse_signed_note(note).body).root_hash


__all__ = ["ReplayState", "replay"]
