"""The SQLite event store: one database per node, WAL, ``synchronous=FULL`` (DESIGN §8).

All database work runs in one dedicated thread per store (the model aiosqlite uses), and a
whole unit of work — a batch append with its projection updates — is one call into that thread,
so the event loop never blocks and never pays one thread hand-off per row.

Appending a batch:

1. chain the events after the cached head (seq, prev_hash, stream versions);
2. sign all entry hashes in one call to the :class:`Signer` (no lock on the database meanwhile);
3. in the database thread, ``BEGIN IMMEDIATE``, check the head has not moved (another process
   may share the file), insert the rows with one ``executemany``, apply every projection's row
   operations and positions, ``COMMIT``;
4. advance the in-memory Merkle frontier, and sign a checkpoint when one is due.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, ParamSpec, TypeVar

from openred.crypto.identity import EntryHash, SignKey
from openred.errors import (
    ConcurrencyConflict,
    ConfigurationError,
    OpenRedError,
    SchemaError,
    StoreClosed,
    StoreError,
)
from openred.store import merkle
from openred.store.chain import (
    DEFAULT_KIND,
    UnsignedEntry,
    chain_entries,
    genesis_event,
    log_kind,
    origin_for,
    rotation_event,
)
from openred.store.checkpoint import Checkpoint, sign_checkpoint
from openred.store.codec import GENESIS_PREV_HASH, decode_payload
from openred.store.events import (
    KEY_ROTATED,
    LOG_OPENED,
    EventRegistry,
    NewEvent,
    RecordedEvent,
    StoredEvent,
)
from openred.store.projection_sql import (
    ProjectionPlan,
    execute_plan,
    plan_projections,
    project_events,
)
from openred.store.projections import ProjectionRegistry
from openred.store.signer import Signer

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("openred.store")

DATABASE_NAME = "openred.db"
_EVENT_COLUMNS = (
    "seq, stream, stream_version, type, schema_version, recorded_at, "
    "payload, prev_hash, entry_hash, signature"
)
_INSERT_EVENT = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
_STREAM_CACHE_SIZE = 100_000
_READ_CHUNK = 5_000


def utc_timestamp(now: datetime) -> str:
    """RFC 3339 UTC with microseconds, the ``recorded_at`` format."""
    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def system_clock() -> datetime:
    return datetime.now(UTC)


def connect(path: Path, *, readonly: bool = False) -> sqlite3.Connection:
    """Open a SQLite connection with the log's durability settings."""
    if readonly:
        conn = sqlite3.connect(
            f"file:{path}?mode=ro", uri=True, isolation_level=None, check_same_thread=False
        )
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=10000")
    return conn


class _HeadMoved(Exception):
    """Another writer appended between chaining and committing; chain again."""


class _StaleVersions(Exception):
    """Streams this process had not seen were not at the assumed versions; chain again."""

    def __init__(self, found: dict[str, int]) -> None:
        super().__init__("stream versions differ from the assumption")
        self.found = found


@dataclass(frozen=True, slots=True)
class Head:
    """The newest entry: the log's size and the hash every next entry links to."""

    size: int
    entry_hash: bytes


class _Frontier:
    """Head, Merkle frontier and stream versions as this process last saw them."""

    def __init__(self, size: int, entry_hash: bytes, tree: merkle.CompactRange) -> None:
        self.size = size
        self.entry_hash = entry_hash
        self.tree = tree
        self.versions: OrderedDict[str, int] = OrderedDict()

    def remember(self, stream: str, version: int) -> None:
        self.versions[stream] = version
        self.versions.move_to_end(stream)
        if len(self.versions) > _STREAM_CACHE_SIZE:
            self.versions.popitem(last=False)


def row_to_event(row: Sequence[Any]) -> StoredEvent:
    return StoredEvent(
        int(row[0]), str(row[1]), int(row[2]), str(row[3]), int(row[4]), str(row[5]),
        bytes(row[6]), bytes(row[7]), bytes(row[8]), bytes(row[9]),
    )


def read_events(
    conn: sqlite3.Connection, from_seq: int = 1, to_seq: int | None = None
) -> Iterable[StoredEvent]:
    """Stream stored events ``from_seq``..``to_seq`` in chunks (synchronous)."""
    seq = from_seq
    while to_seq is None or seq <= to_seq:
        upper = seq + _READ_CHUNK - 1 if to_seq is None else min(to_seq, seq + _READ_CHUNK - 1)
        rows = conn.execute(
            f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq",
            (seq, upper),
        ).fetchall()
        if not rows:
            return
        for row in rows:
            yield row_to_event(row)
        seq = upper + 1


def entry_hashes(conn: sqlite3.Connection, size: int | None = None) -> list[bytes]:
    """The entry hashes of seq 1..size (all when size is None), in order."""
    sql = "SELECT entry_hash FROM events ORDER BY seq"
    if size is not None:
        sql = f"SELECT entry_hash FROM events WHERE seq <= {int(size)} ORDER BY seq"
    return [bytes(r[0]) for r in conn.execute(sql)]


def key_history(conn: sqlite3.Connection) -> list[tuple[int, SignKey]]:
    """(first seq, key) for the genesis key and each rotation, from the stored payloads."""
    history: list[tuple[int, SignKey]] = []
    rows = conn.execute(
        "SELECT seq, type, payload FROM events WHERE type IN (?, ?) ORDER BY seq",
        (LOG_OPENED, KEY_ROTATED),
    )
    from openred.crypto.identity import from_b64url

    for seq, type_, payload in rows:
        data = decode_payload(bytes(payload))
        if type_ == LOG_OPENED:
            history.append((int(seq), SignKey(from_b64url(data["sign_key"]))))
        else:
            history.append((int(seq) + 1, SignKey(from_b64url(data["new_key"]))))
    return history


class SQLiteEventStore:
    """The node's append-only, hash-chained, signed log in one SQLite file."""

    def __init__(
        self,
        path: Path,
        signer: Signer,
        *,
        registry: EventRegistry,
        projections: ProjectionRegistry,
        checkpoint_every: int,
        checkpoint_interval: float,
        clock: Callable[[], datetime],
        kind: str = DEFAULT_KIND,
    ) -> None:
        self.path = path
        self.kind = kind
        self._signer = signer
        self.registry = registry
        self.projections = projections
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        self._clock = clock
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="openred-store")
        self._conn: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._frontier = _Frontier(0, GENESIS_PREV_HASH, merkle.CompactRange())
        self._origin = ""
        self._last_checkpoint_size = 0
        self._last_checkpoint_time = time.monotonic()
        self._ticker: asyncio.Task[None] | None = None
        self._closed = False

    # -- lifecycle ---------------------------------------------------------------------------

    @classmethod
    async def open(
        cls,
        path: Path | str,
        signer: Signer,
        *,
        registry: EventRegistry | None = None,
        projections: ProjectionRegistry | None = None,
        kind: str = DEFAULT_KIND,
        checkpoint_every: int = 100,
        checkpoint_interval: float = 60.0,
        clock: Callable[[], datetime] = system_clock,
    ) -> SQLiteEventStore:
        """Open (creating and migrating if needed) the log at ``path`` signed by ``signer``.

        ``path`` is a database file or a data directory holding ``openred.db``. ``kind`` is the
        kind of log (``node``, ``directory``...): the database is migrated to ``kind@head``, and
        a new log starts with a ``LogOpened`` entry naming the signer's key and the kind. An
        existing log must be of the same kind (logs from before kinds are nodes') and signed by
        the same key as its newest entry, or opening fails with ConfigurationError.
        """
        path = Path(path)
        if path.is_dir():
            path = path / DATABASE_NAME
        if not path.parent.is_dir():
            raise ConfigurationError(f"directory {path.parent} does not exist")
        store = cls(
            path, signer, registry=registry or EventRegistry(),
            projections=projections or ProjectionRegistry(),
            checkpoint_every=checkpoint_every, checkpoint_interval=checkpoint_interval,
            clock=clock, kind=kind,
        )
        try:
            await store._run(store._open_sync)
            if store._frontier.size == 0:
                await store._append([genesis_event(signer.sign_key, kind)], internal=True)
            await store._checkpoint_if_due()
        except BaseException:
            await store.close()
            raise
        if checkpoint_interval > 0:
            store._ticker = asyncio.get_running_loop().create_task(store._tick())
        return store

    def _open_sync(self) -> None:
        # Alembic is imported only here: readers of a log (audit_tools workers) never need it.
        from openred.store.migrate import check_kind, upgrade

        check_kind(self.kind)
        try:
            self._check_log_kind()
            upgrade(self.path, self.kind)
            conn = connect(self.path)
        except sqlite3.DatabaseError as exc:
            raise SchemaError(f"cannot open {self.path}: {exc}") from exc
        self._conn = conn
        hashes = entry_hashes(conn)
        tree = merkle.CompactRange.from_entry_hashes(hashes)
        self._frontier = _Frontier(len(hashes), hashes[-1] if hashes else GENESIS_PREV_HASH, tree)
        if hashes:
            history = key_history(conn)
            if not history:
                raise SchemaError(f"{self.path}: the log has entries but no LogOpened")
            current = history[-1][1]
            if current != self._signer.sign_key:
                raise ConfigurationError(
                    f"{self.path} is signed by key {current.b64url()}, but the signer holds "
                    f"{self._signer.sign_key.b64url()}"
                )
            self._origin = origin_for(history[0][1].node_id)
        else:
            self._origin = origin_for(self._signer.sign_key.node_id)
        row = conn.execute("SELECT max(size) FROM checkpoints").fetchone()
        self._last_checkpoint_size = int(row[0] or 0)
        self._catch_up_projections(conn)

    def _check_log_kind(self) -> None:
        """Refuse an existing log of another kind before any migration touches it."""
        if not self.path.exists():
            return
        with contextlib.closing(sqlite3.connect(self.path)) as probe:
            try:
                row = probe.execute(
                    "SELECT type, payload FROM events WHERE seq = 1"
                ).fetchone()
            except sqlite3.OperationalError:
                return  # not migrated yet: no log, no kind
        if row is None:
            return
        if str(row[0]) != LOG_OPENED:
            raise SchemaError(f"{self.path}: the first entry is not LogOpened")
        try:
            kind = log_kind(decode_payload(bytes(row[1])))
        except ValueError as exc:
            raise SchemaError(f"{self.path}: the LogOpened entry is malformed: {exc}") from exc
        if kind != self.kind:
            raise ConfigurationError(
                f"{self.path} is a {kind} log; it cannot be opened as a {self.kind} log"
            )

    def _catch_up_projections(self, conn: sqlite3.Connection) -> None:
        """Bring projections registered after events were written up to the head."""
        positions = dict(conn.execute("SELECT name, position FROM projection_positions"))
        for projection in self.projections:
            position = int(positions.get(projection.name, 0))
            if position > self._frontier.size:
                raise SchemaError(
                    f"projection {projection.name} is at {position}, past the log's head "
                    f"{self._frontier.size}"
                )
            if position == self._frontier.size and projection.name in positions:
                continue
            single = ProjectionRegistry([projection])
            conn.execute("BEGIN IMMEDIATE")
            try:
                project_events(conn, single, self.registry, read_events(conn, position + 1))
                conn.execute(
                    "INSERT INTO projection_positions (name, position) VALUES (?, ?) "
                    "ON CONFLICT(name) DO UPDATE SET position=excluded.position",
                    (projection.name, self._frontier.size),
                )
                conn.execute("COMMIT")
            except BaseException:
                conn.execute("ROLLBACK")
                raise

    async def close(self) -> None:
        """Sign a final checkpoint if entries are unsigned by one, then close the database."""
        if self._closed:
            return
        if self._ticker is not None:
            self._ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._ticker
        try:
            if self._conn is not None and self._frontier.size > self._last_checkpoint_size:
                await self.checkpoint()
        finally:
            self._closed = True
            if self._conn is not None:
                await self._run_any(self._conn.close)
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> SQLiteEventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        if self._closed:
            raise StoreClosed("the event store is closed")
        return await self._run_any(fn, *args, **kwargs)

    async def _run_any(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, lambda: fn(*args, **kwargs))

    @property
    def conn(self) -> sqlite3.Connection:
        if self._conn is None or self._closed:
            raise StoreClosed("the event store is closed")
        return self._conn

    # -- appending ---------------------------------------------------------------------------

    @property
    def origin(self) -> str:
        """The checkpoint origin of this log, ``openred/<node_id of the genesis key>``."""
        return self._origin

    @property
    def head(self) -> Head:
        return Head(self._frontier.size, self._frontier.entry_hash)

    @property
    def sign_key(self) -> SignKey:
        return self._signer.sign_key

    async def append(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        """Append ``events`` atomically (one transaction, one signing call); return the rows."""
        for event in events:
            if event.type in (LOG_OPENED, KEY_ROTATED):
                raise StoreError(f"{event.type} is written by the store itself")
        if not events:
            return []
        return await self._append(events)

    async def append_one(self, event: NewEvent) -> StoredEvent:
        """Append a single event."""
        return (await self.append([event]))[0]

    async def _append(
        self, events: Sequence[NewEvent], *, internal: bool = False,
        sign: Callable[[list[UnsignedEntry]], Awaitable[list[bytes]]] | None = None,
    ) -> list[StoredEvent]:
        async with self._write_lock:
            for _attempt in range(5):
                frontier = self._frontier
                # Streams this process has not seen are assumed to be at the version the writer
                # expects, or new; the commit checks the assumption under the write lock, so the
                # usual append (fresh grant:/session: streams) costs one database hand-off.
                versions: dict[str, int] = {}
                assumed: dict[str, int] = {}
                for e in events:
                    if e.stream in versions:
                        continue
                    known = frontier.versions.get(e.stream)
                    if known is None:
                        known = assumed[e.stream] = e.expected_version or 0
                    versions[e.stream] = known
                unsigned = chain_entries(
                    events,
                    next_seq=frontier.size + 1,
                    prev_hash=frontier.entry_hash,
                    stream_versions=versions,
                    recorded_at=utc_timestamp(self._clock()),
                )
                if sign is None:
                    signatures: list[bytes] = list(
                        await self._signer.sign_entry_hashes([u.entry_hash for u in unsigned])
                    )
                else:
                    signatures = await sign(unsigned)
                # Planned after signing, not during: Python work holding the GIL starves the
                # signing threads, which need it between every signature (measured slower).
                plan = plan_projections(self.projections, self.registry, unsigned)
                stored = [u.signed(s) for u, s in zip(unsigned, signatures, strict=True)]
                try:
                    await self._run(self._commit_sync, stored, plan, frontier.size,
                                    frontier.entry_hash, assumed)
                except _HeadMoved:
                    await self._run(self._reload_sync)
                    continue
                except _StaleVersions as stale:
                    for stream, version in stale.found.items():
                        frontier.remember(stream, version)
                    continue
                except ConcurrencyConflict:
                    frontier.versions.clear()
                    raise
                frontier.tree.extend(e.entry_hash for e in stored)
                frontier.size = stored[-1].seq
                frontier.entry_hash = stored[-1].entry_hash
                for stream, version in versions.items():
                    frontier.remember(stream, version)
                break
            else:
                raise StoreError("another writer keeps moving the head; append abandoned")
        if not internal:
            await self._checkpoint_if_due()
        return stored

    def _stream_versions_sync(self, streams: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for i in range(0, len(streams), 500):
            chunk = streams[i:i + 500]
            rows = self.conn.execute(
                "SELECT stream, max(stream_version) FROM events WHERE stream IN "
                f"({', '.join('?' * len(chunk))}) GROUP BY stream",
                chunk,
            )
            found.update((str(s), int(v)) for s, v in rows)
        return found

    def _commit_sync(
        self, stored: list[StoredEvent], plan: ProjectionPlan, head_size: int, head_hash: bytes,
        assumed: dict[str, int],
    ) -> None:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT seq, entry_hash FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            current = (0, GENESIS_PREV_HASH) if row is None else (int(row[0]), bytes(row[1]))
            if current != (head_size, head_hash):
                raise _HeadMoved
            if assumed:
                found = self._stream_versions_sync(list(assumed))
                actual = {stream: found.get(stream, 0) for stream in assumed}
                if actual != assumed:
                    raise _StaleVersions(actual)
            conn.executemany(_INSERT_EVENT, stored)
            execute_plan(conn, self.projections, plan, stored[-1].seq)
            conn.execute("COMMIT")
        except sqlite3.IntegrityError as exc:
            conn.execute("ROLLBACK")
            if "UNIQUE" in str(exc) and "stream" in str(exc):
                raise ConcurrencyConflict(
                    "another writer already appended at that stream version"
                ) from exc
            raise StoreError(f"append refused by the database: {exc}") from exc
        except sqlite3.DatabaseError as exc:
            conn.execute("ROLLBACK")
            raise StoreError(f"append failed: {exc}") from exc
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _reload_sync(self) -> None:
        conn = self.conn
        known = self._frontier.size
        rows = conn.execute(
            "SELECT seq, entry_hash FROM events WHERE seq > ? ORDER BY seq", (known,)
        ).fetchall()
        for _seq, digest in rows:
            self._frontier.tree.append(bytes(digest))
        if rows:
            self._frontier.size = int(rows[-1][0])
            self._frontier.entry_hash = bytes(rows[-1][1])
        self._frontier.versions.clear()

    async def rotate_key(self, new_signer: Signer) -> StoredEvent:
        """Hand the log to ``new_signer``: a ``KeyRotated`` entry signed by old and new key."""
        old_signer = self._signer
        if new_signer.sign_key == old_signer.sign_key:
            raise StoreError("the new key is the key in force")
        event = rotation_event(old_signer.sign_key, new_signer.sign_key)

        async def both(unsigned: list[UnsignedEntry]) -> list[bytes]:
            hashes = [EntryHash(u.entry_hash) for u in unsigned]
            old = await old_signer.sign_entry_hashes(hashes)
            new = await new_signer.sign_entry_hashes(hashes)
            return [a + b for a, b in zip(old, new, strict=True)]

        (stored,) = await self._append([event], internal=True, sign=both)
        self._signer = new_signer
        await self._checkpoint_if_due()
        return stored

    # -- checkpoints -------------------------------------------------------------------------

    async def checkpoint(self) -> bytes:
        """Sign (or return the already signed) checkpoint of the current head; the note text."""
        async with self._write_lock:
            size = self._frontier.size
            existing = await self._run(self._checkpoint_note_sync, size)
            if existing is not None:
                return existing
            root = self._frontier.tree.root()
            body = Checkpoint(origin=self._origin, size=size, root_hash=root)
            note = await sign_checkpoint(body, self._origin, self._signer)
            signed_at = utc_timestamp(self._clock())
            await self._run(self._store_checkpoint_sync, size, root, note, signed_at)
            self._last_checkpoint_size = size
            self._last_checkpoint_time = time.monotonic()
            return note

    def _checkpoint_note_sync(self, size: int) -> bytes | None:
        row = self.conn.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        return None if row is None else bytes(row[0])

    def _store_checkpoint_sync(self, size: int, root: bytes, note: bytes, signed_at: str) -> None:
        self.conn.execute(
            "INSERT OR IGNORE INTO checkpoints (size, root_hash, note, signed_at) "
            "VALUES (?, ?, ?, ?)",
            (size, root, note, signed_at),
        )

    async def _checkpoint_if_due(self) -> None:
        pending = self._frontier.size - self._last_checkpoint_size
        if pending <= 0:
            return
        overdue = (
            self._checkpoint_interval > 0
            and time.monotonic() - self._last_checkpoint_time >= self._checkpoint_interval
        )
        if pending >= self._checkpoint_every or overdue or self._last_checkpoint_size == 0:
            await self.checkpoint()

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self._checkpoint_interval)
            if self._frontier.size > self._last_checkpoint_size:
                try:
                    await self.checkpoint()
                except OpenRedError as exc:
                    # A signer that is briefly away (the jail restarting) must not end the timer;
                    # the entries stay pending and the next tick or append signs them.
                    logger.warning("periodic checkpoint failed, will retry: %s", exc)

    async def latest_checkpoint(self) -> bytes | None:
        """The newest signed checkpoint note, if any."""
        return await self._run(self._latest_checkpoint_sync)

    def _latest_checkpoint_sync(self) -> bytes | None:
        row = self.conn.execute(
            "SELECT note FROM checkpoints ORDER BY size DESC LIMIT 1"
        ).fetchone()
        return None if row is None else bytes(row[0])

    # -- reading -----------------------------------------------------------------------------

    async def read(self, from_seq: int = 1, to_seq: int | None = None) -> list[StoredEvent]:
        """Stored events ``from_seq``..``to_seq`` (inclusive)."""
        return await self._run(lambda: list(read_events(self.conn, from_seq, to_seq)))

    async def read_stream(self, stream: str) -> list[RecordedEvent]:
        """The decoded, upcast events of one stream, in order."""
        rows = await self._run(
            lambda: self.conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE stream = ? ORDER BY stream_version",
                (stream,),
            ).fetchall()
        )
        return [self.registry.decode(row_to_event(r)) for r in rows]

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Read rows from projection tables (read-only statements)."""
        if not sql.lstrip().upper().startswith("SELECT"):
            raise StoreError("query() only runs SELECT statements")
        return await self._run(lambda: [tuple(r) for r in self.conn.execute(sql, params)])

    async def root(self) -> bytes:
        """The Merkle tree root over every entry."""
        return self._frontier.tree.root()

    async def inclusion_proof(self, seq: int) -> tuple[int, list[bytes]]:
        """(tree size, audit path) proving entry ``seq`` is in the current tree."""
        hashes = await self._run(entry_hashes, self.conn)
        if not 1 <= seq <= len(hashes):
            raise StoreError(f"no entry {seq}: the log has {len(hashes)} entries")
        return len(hashes), merkle.inclusion_proof(seq - 1, hashes)

    async def consistency_proof(self, old_size: int) -> tuple[int, list[bytes]]:
        """(tree size, proof) that the tree of ``old_size`` is a prefix of the current one."""
        hashes = await self._run(entry_hashes, self.conn)
        if not 0 <= old_size <= len(hashes):
            raise StoreError(f"cannot prove size {old_size}: the log has {len(hashes)} entries")
        return len(hashes), merkle.consistency_proof(old_size, hashes)

    async def rebuild_projections(self) -> int:
        """Drop every projection's rows and rebuild them by replaying the log; events replayed."""
        async with self._write_lock:
            return await self._run(self._rebuild_sync)

    def _rebuild_sync(self) -> int:
        conn = self.conn
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in self.projections.tables():
                conn.execute(f"DELETE FROM {table}")
            conn.execute("DELETE FROM projection_positions")
            count = project_events(conn, self.projections, self.registry, read_events(conn))
            conn.executemany(
                "INSERT INTO projection_positions (name, position) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET position=excluded.position",
                [(name, count) for name in self.projections.names],
            )
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
        return count
