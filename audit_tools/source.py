"""Where a log is read from: a node's SQLite database (read-only) or an exported bundle.

Both sources hand out the same :class:`~openred.store.events.StoredEvent` rows. Reading is
defensive: whatever bytes are on disk, a malformed row becomes a :class:`MalformedRow` naming
its position, never a crash.

A database is opened read-only through a ``file:`` URI whose path is percent-encoded, so a
name holding ``?``, ``#`` or ``%`` opens exactly that file and never creates one. Every row is
read from the table itself (``NOT INDEXED``; the ``seq`` key is the table's own rowid), never
through an index, and one read transaction holds the whole verification to one snapshot.
"""

from __future__ import annotations

import json
import sqlite3
import urllib.parse
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from openred.crypto.identity import from_b64url
from openred.errors import OpenRedError
from openred.store.events import StoredEvent
from openred.store.sqlite import DATABASE_NAME

BUNDLE_FORMAT = "openred-log-bundle/1"
_CHUNK = 4096
_EVENT_COLUMNS = (
    "seq", "stream", "stream_version", "type", "schema_version", "recorded_at",
    "payload", "prev_hash", "entry_hash", "signature",
)


class SourceError(OpenRedError):
    """The log cannot be read at all (missing file, not a database, I/O error): exit 2."""


class CorruptLog(OpenRedError):
    """The storage itself is damaged or is not an OpenRed log: exit 1 (fail closed)."""


@dataclass(frozen=True, slots=True)
class MalformedRow:
    """A row whose columns do not have the types a log entry must have."""

    seq: int
    reason: str


def _blob(value: Any, name: str) -> bytes:
    if isinstance(value, bytes):
        return value
    raise ValueError(f"{name} is {type(value).__name__}, not a blob")


def _int(value: Any, name: str) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise ValueError(f"{name} is {type(value).__name__}, not an integer")


def _text(value: Any, name: str) -> str:
    if isinstance(value, str):
        return value
    raise ValueError(f"{name} is {type(value).__name__}, not text")


def parse_row(row: tuple[Any, ...], position: int) -> StoredEvent | MalformedRow:
    """Turn raw column values into a StoredEvent, or say what is wrong with them."""
    try:
        return StoredEvent(
            _int(row[0], "seq"), _text(row[1], "stream"), _int(row[2], "stream_version"),
            _text(row[3], "type"), _int(row[4], "schema_version"), _text(row[5], "recorded_at"),
            _blob(row[6], "payload"), _blob(row[7], "prev_hash"), _blob(row[8], "entry_hash"),
            _blob(row[9], "signature"),
        )
    except (ValueError, IndexError) as exc:
        seq = row[0] if row and isinstance(row[0], int) else position
        return MalformedRow(int(seq), f"malformed row: {exc}")


class LogSource:
    """What every source offers the verifier."""

    origin_hint: str | None = None
    pseudonymized: bool = False

    def size(self) -> tuple[int, int]:
        """(number of rows, largest seq)."""
        raise NotImplementedError

    def rows(self, first: int | None, last: int | None) -> Iterator[StoredEvent | MalformedRow]:
        """Rows with first <= seq <= last (None: unbounded) in seq order."""
        raise NotImplementedError

    def checkpoints(self) -> list[tuple[int, bytes]]:
        """Stored (size, note) checkpoints, newest last."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the source."""


class SQLiteSource(LogSource):
    """A node's database, opened read-only."""

    def __init__(self, path: Path) -> None:
        db = path / DATABASE_NAME if path.is_dir() else path
        if not db.exists():
            raise SourceError(f"no such file: {db}")
        if not db.is_file():
            raise SourceError(f"not a file: {db}")
        try:
            with db.open("rb"):
                pass
        except OSError as exc:
            raise SourceError(f"cannot read {db}: {exc.strerror or exc}") from exc
        self.path = db
        try:
            self.conn = open_readonly(db)
            # One snapshot for every read of this connection: a writer appending meanwhile
            # cannot make the count, the chain and the replay see different logs.
            self.conn.execute("BEGIN")
            objects = {(r[0], r[1]) for r in self.conn.execute(
                "SELECT name, type FROM sqlite_master")}
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise CorruptLog(f"{db} is not a readable SQLite database: {exc}") from exc
        tables = {name for name, type_ in objects if type_ == "table"}
        if "events" not in tables:
            shadow = [type_ for name, type_ in objects if name == "events"]
            if shadow:
                raise CorruptLog(f"{db}: events is a {shadow[0]}, not the log's table: the "
                                 "schema is not the store's own")
            raise CorruptLog(f"{db} has no events table: not an OpenRed log")
        self.tables = tables

    def check_structure(self) -> None:
        """Raise CorruptLog unless SQLite finds every page and b-tree of the file sound."""
        self._pragma_check("quick_check", "")

    def check_indexes(self) -> None:
        """Raise CorruptLog unless every index holds exactly its table's rows.

        ``quick_check`` does not compare an index with its table. The rows verify reads are the
        table's own (``NOT INDEXED``), but the store reads a stream, a session or a peer through
        an index: one whose entries point at other rows (a b-tree swapped in through
        ``writable_schema``, or written while a row briefly said something else) hands the
        node another entry than the one verify proved. ``integrity_check`` walks every index
        against its table.
        """
        self._pragma_check("integrity_check(20)", "an index disagrees with its table: ")

    def _pragma_check(self, pragma: str, what: str) -> None:
        """Run SQLite's ``PRAGMA`` check; CorruptLog naming its first problem after ``what``."""
        try:
            problems = [str(r[0]) for r in self.conn.execute(f"PRAGMA {pragma}")]
        except (sqlite3.DatabaseError, UnicodeDecodeError) as exc:
            raise CorruptLog(f"{self.path} is damaged: {exc}") from exc
        if problems != ["ok"]:
            lines = [line for p in problems for line in p.splitlines() if not line.startswith("*")]
            raise CorruptLog(f"{self.path} is damaged: {what}{(lines or problems)[0]}")

    def size(self) -> tuple[int, int]:
        """(rows, largest seq): only to plan the work; the chain pass counts what it reads."""
        try:
            count, top = self.conn.execute(
                "SELECT count(*), max(seq) FROM events NOT INDEXED").fetchone()
        except sqlite3.DatabaseError as exc:
            raise CorruptLog(f"the events table cannot be read: {exc}") from exc
        return int(count), int(top or 0) if isinstance(top, int) else int(count)

    def rows(self, first: int | None, last: int | None) -> Iterator[StoredEvent | MalformedRow]:
        """Rows with first <= seq <= last (None: unbounded) in seq order, from the table itself.

        An unbounded start also reads every row whose seq is not a number (NULL), an unbounded
        end every row above: a row outside 1..n is then met by the chain pass as the sequence
        break it is. Rows whose seq is not an integer come last, after the numbered ones, so
        the first gap they leave is what gets reported.
        """
        where, params = [], []
        if first is not None:
            where.append("seq >= ?")
            params.append(first)
        if last is not None:
            where.append("(seq <= ? OR seq IS NULL)" if first is None else "seq <= ?")
            params.append(last)
        sql = (f"SELECT {', '.join(_EVENT_COLUMNS)} FROM events NOT INDEXED"  # noqa: S608
               + (f" WHERE {' AND '.join(where)}" if where else "") + " ORDER BY seq")
        position = first if first is not None else 1
        unnumbered: list[tuple[Any, ...]] = []
        try:
            cursor = self.conn.execute(sql, params)
            while chunk := cursor.fetchmany(_CHUNK):
                for row in chunk:
                    if not isinstance(row[0], int):
                        unnumbered.append(tuple(row))
                        continue
                    yield parse_row(tuple(row), position)
                    position += 1
        except sqlite3.DatabaseError as exc:
            raise CorruptLog(f"events from {position} on cannot be read: {exc}") from exc
        for row in unnumbered:
            yield parse_row(row, position)
            position += 1

    def genesis(self) -> StoredEvent | MalformedRow | None:
        """The row at seq 1 (read from the table), or None when there is none."""
        return next(self.rows(1, 1), None)

    def checkpoints(self) -> list[tuple[int, bytes]]:
        if "checkpoints" not in self.tables:
            return []
        try:
            rows = self.conn.execute(
                "SELECT size, note FROM checkpoints NOT INDEXED ORDER BY size").fetchall()
        except sqlite3.DatabaseError as exc:
            raise CorruptLog(f"the checkpoints table cannot be read: {exc}") from exc
        out = []
        for size, note in rows:
            if not isinstance(size, int) or not isinstance(note, bytes):
                raise CorruptLog("the checkpoints table holds a malformed row")
            out.append((size, note))
        return out

    def checkpoint_roots(self) -> dict[int, object]:
        """The ``root_hash`` column of each stored checkpoint (a copy of what its note signs)."""
        if "checkpoints" not in self.tables:
            return {}
        try:
            rows = self.conn.execute(
                "SELECT size, root_hash FROM checkpoints NOT INDEXED").fetchall()
        except sqlite3.DatabaseError as exc:
            raise CorruptLog(f"the checkpoints table cannot be read: {exc}") from exc
        return {size: root for size, root in rows if isinstance(size, int)}

    def close(self) -> None:
        self.conn.close()


class BundleSource(LogSource):
    """An exported bundle: a header line, then one JSON line per entry (see export.py)."""

    def __init__(self, path: Path) -> None:
        try:
            lines = path.read_bytes().splitlines()
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if not lines:
            raise CorruptLog(f"{path} is empty")
        try:
            header = json.loads(lines[0])
            if header.get("format") != BUNDLE_FORMAT:
                raise ValueError("unknown bundle format")
            self.header: dict[str, Any] = header
            self.pseudonymized = bool(header.get("pseudonymized", False))
            self.origin_hint = str(header["origin"])
            self._checkpoints = [
                (int(c["size"]), str(c["note"]).encode("utf-8")) for c in header["checkpoints"]
            ]
        except RecursionError:
            raise CorruptLog(f"{path} does not start with a valid bundle header: "
                             "JSON nested too deeply") from None
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise CorruptLog(f"{path} does not start with a valid bundle header: {exc}") from exc
        self._entries: list[StoredEvent | MalformedRow] = []
        for i, line in enumerate(lines[1:], start=1):
            self._entries.append(self._parse_line(line, i))

    @staticmethod
    def _parse_line(line: bytes, position: int) -> StoredEvent | MalformedRow:
        try:
            d = json.loads(line)
            row = (
                d["seq"], d["stream"], d["stream_version"], d["type"], d["schema_version"],
                d["recorded_at"], from_b64url(d["payload"]), from_b64url(d["prev_hash"]),
                from_b64url(d["entry_hash"]), from_b64url(d["signature"]),
            )
        except RecursionError:
            return MalformedRow(position, "malformed bundle line: JSON nested too deeply")
        except (ValueError, KeyError, TypeError) as exc:
            return MalformedRow(position, f"malformed bundle line: {exc}")
        return parse_row(row, position)

    def size(self) -> tuple[int, int]:
        seqs = [e.seq for e in self._entries]
        return len(seqs), max(seqs, default=0)

    def rows(self, first: int | None, last: int | None) -> Iterator[StoredEvent | MalformedRow]:
        for entry in self._entries:
            if (first is None or first <= entry.seq) and (last is None or entry.seq <= last):
                yield entry

    def checkpoints(self) -> list[tuple[int, bytes]]:
        return list(self._checkpoints)


def open_readonly(db: Path) -> sqlite3.Connection:
    """Open exactly the file ``db``, read-only; never create it (percent-encoded URI path)."""
    uri = f"file:{urllib.parse.quote(str(db.absolute()))}?mode=ro"
    return sqlite3.connect(uri, uri=True, isolation_level=None, check_same_thread=False)


def open_source(path: Path) -> LogSource:
    """A data directory or database file → SQLiteSource; a ``.jsonl`` bundle → BundleSource."""
    if not path.exists():
        raise SourceError(f"no such file or directory: {path}")
    if path.is_file():
        try:
            with path.open("rb") as f:
                head = f.read(32)
        except OSError as exc:
            raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
        if head.startswith(b"{"):
            return BundleSource(path)
    return SQLiteSource(path)
