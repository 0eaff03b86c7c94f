"""``audit_tools replay``: rebuild a log's state as of any position, for debugging.

Entries 1..SEQ are checked (hashes, links, signatures — the signatures on every core first, for
a big database) as they are read, copied into a fresh database built by the migrations of the
log's kind (named by its genesis entry), and run through that kind's projections. The result is
the state the log's owner had right after appending entry SEQ; with ``--out`` it stays on disk
as a normal OpenRed database (events 1..SEQ, their checkpoints, the projections).
"""

from __future__ import annotations

import sqlite3
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from audit_tools import verify as _verify
from audit_tools.schema import fresh_database
from audit_tools.source import LogSource, MalformedRow, SQLiteSource
from openred import kinds
from openred.errors import TamperedLog
from openred.store.chain import ChainChecker
from openred.store.checkpoint import parse_checkpoint_body, parse_signed_note
from openred.store.codec import decode_payload
from openred.store.events import StoredEvent
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
    kind: str = "node"


def replay(
    source: LogSource,
    until: int,
    *,
    out: Path | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayState:
    """Rebuild projections from entries 1..``until``; raise TamperedLog on a bad entry."""
    if out is not None and out.exists():
        raise FileExistsError(f"{out} exists; replay will not overwrite it")
    signatures_checked = (
        isinstance(source, SQLiteSource) and until >= _verify.PARALLEL_THRESHOLD
    )
    if signatures_checked:
        assert isinstance(source, SQLiteSource)
        _verify.check_chain_parallel(source, until)
    # Every hash is recomputed: by the checker, or in a pseudonymized bundle by hash_check,
    # which lets only rewritten peer entries differ.
    checker = ChainChecker(recompute_hashes=not source.pseudonymized)
    entries = iter(source.rows(None, until))
    first = _checked(next(entries, None), checker, source, signatures_checked, until)
    try:
        kind = _verify.log_kind(decode_payload(first.payload))
    except _verify.StepFailed as exc:
        raise TamperedLog(1, exc.reason) from None
    with tempfile.TemporaryDirectory(prefix="openred-replay-") as tmp:
        target = out or Path(tmp) / "replay.db"
        fresh_database(target, kind)
        conn = connect(target)
        try:
            tables = _replay_into(conn, source, kind, first, entries, checker,
                                  signatures_checked, until, progress)
        finally:
            conn.close()
    return ReplayState(until, tables, kind)


def _checked(
    entry: StoredEvent | MalformedRow | None, checker: ChainChecker, source: LogSource,
    signatures_checked: bool, until: int,
) -> StoredEvent:
    if entry is None:
        raise TamperedLog(checker.count + 1, f"entry {checker.count + 1} is missing")
    if isinstance(entry, MalformedRow):
        raise TamperedLog(entry.seq, entry.reason)
    try:
        if source.pseudonymized:
            _verify.hash_check(entry, checker, True)
        checker.check(entry, verify_signature=not signatures_checked)
    except RecursionError:
        raise TamperedLog(checker.count + 1, "malformed entry: JSON nested too deeply") from None
    return entry


def _replay_into(
    conn: sqlite3.Connection,
    source: LogSource,
    kind: str,
    first: StoredEvent,
    entries: Iterator[StoredEvent | MalformedRow],
    checker: ChainChecker,
    signatures_checked: bool,
    until: int,
    progress: Callable[[int, int], None] | None,
) -> dict[str, tuple[list[str], list[tuple[object, ...]]]]:
    projections = kinds.projections_for(kind)
    registry = kinds.registry_for(kind)
    conn.execute("BEGIN")
    batch: list[StoredEvent] = [first]

    def flush() -> None:
        conn.executemany(_INSERT, [e.as_row() for e in batch])
        apply_projections(conn, projections, registry, batch)
        batch.clear()

    for entry in entries:
        batch.append(_checked(entry, checker, source, signatures_checked, until))
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
    return tables


def _root_of(note: bytes) -> bytes:
    return parse_checkpoint_body(parse_signed_note(note).body).root_hash


__all__ = ["ReplayState", "replay"]
