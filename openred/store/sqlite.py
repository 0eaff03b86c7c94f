"""The SQLite event store: one database per log, WAL, ``synchronous=FULL`` (DESIGN §8).

Threads. All writing runs in one dedicated thread per store, on the one write connection (the
model aiosqlite uses); reads run on read-only connections in a small pool of reader threads, so
a query never waits behind an append. Everything CPU-bound — validating, canonical encoding,
chaining, projection planning, Merkle hashing and proofs — runs in those threads, never on the
event loop; the store lowers CPython's switch interval to 1 ms, so the loop's thread never
waits long for the GIL while those threads work.

Group commit. Appends are queued; one writer task takes everything queued so far as a *group*:

1. in the write thread: check each request's events against the registry, chain them after the
   head (seq, prev_hash, stream versions) and plan their projection rows — a request that fails
   here (a stale ``expected_version``, an unknown type) fails alone and takes no seq;
2. sign every entry hash of the group in one call to the :class:`Signer`;
3. in the write thread: ``BEGIN IMMEDIATE``, check the head has not moved (another process may
   share the file), insert the rows, read them back and compare, apply the projections'
   rows and positions, ``COMMIT``;
4. hand each caller its own rows (or its own error), then sign a checkpoint if one is due.

Once the commit is durable the caller gets its rows: anything that fails afterwards (the
checkpoint's signature, the jail briefly away) is logged and retried by the checkpoint timer and
the next append, never raised into a caller who would retry and append twice.

Several processes may write one log: a writer whose head is stale re-reads the entries written
since (honouring a ``KeyRotated`` among them: it then refuses to sign with a key no longer in
force) and chains again, backing off while the head keeps moving.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import random
import sqlite3
import sys
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, NamedTuple, ParamSpec, TypeVar

from openred.crypto.identity import EntryHash, SignKey, from_b64url
from openred.errors import (
    CheckpointError,
    ConcurrencyConflict,
    ConfigurationError,
    OpenRedError,
    ProofError,
    SchemaError,
    StoreClosed,
    StoreError,
    StoreUnavailable,
    TamperedLog,
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
from openred.store.checkpoint import Checkpoint, verify_checkpoint
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
from openred.store.signer import Signer, SignInThreadUnavailable, WitnessedSigner
from openred.store.witnessing import CheckpointWitness, Prover, RootAt, WitnessAhead

P = ParamSpec("P")
T = TypeVar("T")

logger = logging.getLogger("openred.store")

DATABASE_NAME = "openred.db"
_EVENT_COLUMNS = (
    "seq, stream, stream_version, type, schema_version, recorded_at, "
    "payload, prev_hash, entry_hash, signature"
)
EVENT_COLUMNS = _EVENT_COLUMNS
"""The events table's columns in :func:`row_to_event`'s order."""
_INSERT_EVENT = f"INSERT INTO events ({_EVENT_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?)"
_STREAM_CACHE_SIZE = 100_000
_READ_CHUNK = 5_000
# The longest a thread waiting for the GIL waits before CPython makes the holder hand it over
# (sys.setswitchinterval; CPython's default is 5 ms). The store lowers the process's interval
# to this when it opens, so the event loop's thread waits at most about a millisecond while
# the store's threads chain, plan and hash; a thread nobody waits for pays nothing for it.
SWITCH_INTERVAL = 0.001
# Contended writers (another process keeps moving the head) back off exponentially with jitter.
_BACKOFF_FIRST = 0.001
_BACKOFF_MAX = 0.1

# Proofs hash at most one block of this many leaves (2**10) in one go; block roots are cached.
_PROOF_BLOCK_LEVEL = 10

# SQLite result codes (primary code: the low byte of the extended code) meaning "not now": the
# database is busy or locked, the disk is full, I/O failed or memory ran out.
_UNAVAILABLE_CODES = frozenset({
    5,   # SQLITE_BUSY
    6,   # SQLITE_LOCKED
    7,   # SQLITE_NOMEM
    9,   # SQLITE_INTERRUPT
    10,  # SQLITE_IOERR
    13,  # SQLITE_FULL
    14,  # SQLITE_CANTOPEN
    15,  # SQLITE_PROTOCOL
})
_SCHEMA_CODES = frozenset({
    11,  # SQLITE_CORRUPT
    17,  # SQLITE_SCHEMA
    26,  # SQLITE_NOTADB
})


def utc_timestamp(now: datetime) -> str:
    """RFC 3339 UTC with microseconds, the ``recorded_at`` format.

    ``strftime("%Y-%m-%dT%H:%M:%S.%fZ")``'s string, formatted directly: the C library's
    ``strftime`` stats ``/etc/localtime`` on every call when ``TZ`` is not set (one system
    call per group commit). Years before 1000, which ``%Y`` does not pad, go through it.
    """
    t = now.astimezone(UTC)
    if t.year < 1000:
        return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    return (f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:"
            f"{t.second:02d}.{t.microsecond:06d}Z")


def system_clock() -> datetime:
    return datetime.now(UTC)


def database_uri(path: Path | str, mode: str = "ro") -> str:
    """A ``file:`` URI naming exactly ``path`` (absolute, percent-escaped) with ``mode``.

    SQLite reads an unescaped ``#`` as the start of a fragment and ``?`` as the query: a
    data directory named ``node#2`` would open ``node`` instead, read-write and created,
    since ``?mode=ro`` went into the fragment. Every URI the code opens is built here.
    """
    return f"{Path(path).absolute().as_uri()}?mode={mode}"


def readonly_uri(path: Path | str) -> str:
    """:func:`database_uri` read-only: never writes, never creates the file."""
    return database_uri(path, "ro")


def connect(
    path: Path, *, readonly: bool = False, busy_timeout: float = 10.0
) -> sqlite3.Connection:
    """Open a SQLite connection with the log's durability settings.

    A read-only connection opens exactly the file named (its path is URI-escaped, so ``#``,
    ``?`` or ``%`` in it are plain characters) and never creates one.
    """
    if readonly:
        conn = sqlite3.connect(readonly_uri(path), uri=True, isolation_level=None,
                               check_same_thread=False)
        conn.execute("PRAGMA query_only=1")
    else:
        conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute(f"PRAGMA busy_timeout={int(busy_timeout * 1000)}")
    return conn


def store_error(exc: sqlite3.Error, what: str) -> StoreError:
    """The project's error for a SQLite error (raise it ``from exc`` to keep the cause).

    Busy, locked, disk full, I/O errors: StoreUnavailable (nothing was acknowledged; try again
    later). A damaged or foreign database: SchemaError. Anything else: StoreError.
    """
    code = getattr(exc, "sqlite_errorcode", None)
    name = getattr(exc, "sqlite_errorname", None) or type(exc).__name__
    message = f"{what}: {exc} ({name})"
    primary = code & 0xFF if isinstance(code, int) else None
    if primary in _UNAVAILABLE_CODES:
        return StoreUnavailable(message)
    if primary in _SCHEMA_CODES:
        return SchemaError(message)
    return StoreError(message)


class _HeadMoved(Exception):
    """Another writer appended between chaining and committing; chain again."""


class _StaleVersions(Exception):
    """Streams this process had not seen were not at the assumed versions; chain again."""

    def __init__(self, found: dict[str, int]) -> None:
        super().__init__("stream versions differ from the assumption")
        self.found = found


class _NotStored(Exception):
    """The database did not store exactly the rows the append inserted."""


@dataclass(frozen=True, slots=True)
class Head:
    """The newest entry: the log's size and the hash every next entry links to."""

    size: int
    entry_hash: bytes


class StreamState(NamedTuple):
    """One stream read in one snapshot: its current version and its decoded events."""

    version: int
    events: list[RecordedEvent]


class _Frontier:
    """Head, Merkle frontier, block index and stream versions as this process last saw them.

    Changed only by the write thread, while the store's write lock is held.
    """

    def __init__(
        self, size: int, entry_hash: bytes, tree: merkle.CompactRange, blocks: merkle.BlockIndex
    ) -> None:
        self.size = size
        self.entry_hash = entry_hash
        self.tree = tree
        self.blocks = blocks
        self.versions: OrderedDict[str, int] = OrderedDict()

    def remember(self, stream: str, version: int) -> None:
        self.versions[stream] = version
        self.versions.move_to_end(stream)
        if len(self.versions) > _STREAM_CACHE_SIZE:
            self.versions.popitem(last=False)


def _extend_tree(frontier: _Frontier, hashes: Sequence[bytes]) -> tuple[
    merkle.CompactRange, merkle.BlockIndex
]:
    """The frontier's Merkle structures with ``hashes`` appended (new objects)."""
    leaves = merkle.leaf_hashes(hashes)
    tree = frontier.tree.copy()
    tree.extend_leaf_hashes(leaves)
    return tree, frontier.blocks.extended_leaf_hashes(leaves)


def _signs_in_thread(
    signer: Signer,
) -> Callable[[Sequence[EntryHash]], Sequence[bytes]] | None:
    """The signer's synchronous signing call, if its class offers one, else None.

    A signer whose class defines ``sign_entry_hashes_sync`` next to its async
    ``sign_entry_hashes`` (:class:`InProcessSigner`, the jail's ``JailSigner``) can sign in the
    store's write thread between chaining and committing: one hand-off to the thread per group
    instead of two, and no trip through the event loop. A subclass that overrides the async
    call only (a test's flaky signer) keeps its override: it is used instead.
    """
    for cls in type(signer).__mro__:
        if "sign_entry_hashes" in vars(cls):
            if "sign_entry_hashes_sync" not in vars(cls):
                return None
            sync: Callable[[Sequence[EntryHash]], Sequence[bytes]] = (
                signer.sign_entry_hashes_sync  # type: ignore[attr-defined]
            )
            return sync
    return None


def lower_switch_interval() -> None:
    """Make CPython hand the GIL to a waiting thread within :data:`SWITCH_INTERVAL`."""
    if sys.getswitchinterval() > SWITCH_INTERVAL:
        sys.setswitchinterval(SWITCH_INTERVAL)


@dataclass(slots=True)
class _Request:
    """One caller's append: its events, and the future its rows (or its error) arrive on."""

    events: Sequence[NewEvent]
    future: asyncio.Future[list[StoredEvent]]


@dataclass(slots=True)
class _Prepared:
    """A group chained and planned: the entries of the requests that could be chained."""

    entries: list[UnsignedEntry]
    plan: ProjectionPlan
    outcomes: list[tuple[int, int] | BaseException]  # per request: its slice, or its error
    versions: dict[str, int]
    assumed: dict[str, int]

    def results(self, stored: list[StoredEvent]) -> list[list[StoredEvent] | BaseException]:
        """Each request's rows out of the group's ``stored`` rows, or its own error."""
        return [o if isinstance(o, BaseException) else stored[o[0]:o[1]] for o in self.outcomes]


def _merge_plan(plan: ProjectionPlan, more: ProjectionPlan) -> None:
    """Append ``more`` to ``plan``, joining neighbours that run the same statement."""
    for sql, rows in more:
        if plan and plan[-1][0] == sql:
            plan[-1][1].extend(rows)
        else:
            plan.append((sql, rows))


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


def _entry_hash_range(conn: sqlite3.Connection, start: int, end: int) -> list[bytes]:
    """Entry hashes of leaves ``start``..``end - 1`` (seq ``start + 1``..``end``)."""
    rows = conn.execute(
        "SELECT entry_hash FROM events WHERE seq BETWEEN ? AND ? ORDER BY seq", (start + 1, end)
    )
    return [bytes(r[0]) for r in rows]


def key_history(conn: sqlite3.Connection) -> list[tuple[int, SignKey]]:
    """(first seq, key) for the genesis key and each rotation, from the stored payloads."""
    history: list[tuple[int, SignKey]] = []
    rows = conn.execute(
        "SELECT seq, type, payload FROM events WHERE type IN (?, ?) ORDER BY seq",
        (LOG_OPENED, KEY_ROTATED),
    )
    for seq, type_, payload in rows:
        data = decode_payload(bytes(payload))
        if type_ == LOG_OPENED:
            history.append((int(seq), SignKey(from_b64url(data["sign_key"]))))
        else:
            history.append((int(seq) + 1, SignKey(from_b64url(data["new_key"]))))
    return history


_Job = tuple[Callable[[], Any], asyncio.AbstractEventLoop | None, "asyncio.Future[Any] | None"]


class _WriteThread:
    """The store's one write thread: runs jobs in order and hands each result to its loop.

    ``loop.run_in_executor`` on a ThreadPoolExecutor costs, per call, a concurrent Future with
    its condition lock, a work item, two futures chained by callbacks and their state copied
    across; a group commit needs none of it: a queue of (function, future) and one
    ``call_soon_threadsafe`` that settles the future. Like the executor, a job whose future
    was cancelled before it started is skipped, and nothing is accepted after
    :meth:`shutdown` (RuntimeError, as the executor raises).
    """

    def __init__(self, name: str) -> None:
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._shutdown = False
        # A daemon thread: a store nobody closed must not keep the interpreter alive. A
        # commit cut short at exit was never acknowledged, and SQLite rolls it back.
        self._thread = threading.Thread(target=self._main, name=name, daemon=True)
        self._thread.start()

    def run(self, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Queue ``fn``; the future its result or exception arrives on (in the running loop)."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[T] = loop.create_future()
        self._put((fn, loop, future))
        return future

    def submit(self, fn: Callable[[], object]) -> None:
        """Queue ``fn`` without waiting for it (its exception, if any, is dropped)."""
        self._put((fn, None, None))

    def _put(self, job: _Job) -> None:
        with self._lock:
            if self._shutdown:
                raise RuntimeError("cannot schedule new futures after shutdown")
            self._jobs.put(job)

    def shutdown(self, wait: bool = True) -> None:
        """Run what is queued, then stop the thread (and wait for it)."""
        with self._lock:
            if not self._shutdown:
                self._shutdown = True
                self._jobs.put(None)
        if wait and threading.current_thread() is not self._thread:
            self._thread.join()

    def _main(self) -> None:
        while (job := self._jobs.get()) is not None:
            fn, loop, future = job
            if future is not None and future.cancelled():
                continue
            try:
                result = fn()
            except BaseException as exc:  # delivered to the caller, as the executor does
                if loop is not None:
                    _post(loop, future, None, exc)
            else:
                if loop is not None:
                    if type(result) is _AndSettle:  # the job's result and its callers' at once
                        settled = list(result.settled)
                        if future is not None:
                            settled.append((future, result.value))
                        with contextlib.suppress(RuntimeError):  # the loop is closed
                            loop.call_soon_threadsafe(_settle_all, settled)
                    else:
                        _post(loop, future, result, None)
            del job, fn, loop, future  # nothing of a finished job stays referenced


class _AndSettle(NamedTuple):
    """A write-thread job's result ``value`` and other futures to settle in the same turn."""

    value: Any
    settled: list[tuple[asyncio.Future[Any], object]]


def _post(loop: asyncio.AbstractEventLoop, future: asyncio.Future[Any] | None, result: object,
          exc: BaseException | None) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: nobody waits any more
        loop.call_soon_threadsafe(_settle, future, result, exc)


def _settle_all(settled: list[tuple[asyncio.Future[Any], object]]) -> None:
    """Give each caller of a committed group its rows or its own error (in the loop)."""
    for future, outcome in settled:
        if future.done():
            continue
        if isinstance(outcome, BaseException):
            future.set_exception(outcome)
        else:
            future.set_result(outcome)


def _settle(future: asyncio.Future[Any] | None, result: object,
            exc: BaseException | None) -> None:
    if future is None or future.done():
        return
    if exc is None:
        future.set_result(result)
    elif isinstance(exc, StopIteration):  # a future cannot carry it
        future.set_exception(RuntimeError(f"StopIteration raised in the store thread: {exc!r}"))
    else:
        future.set_exception(exc)


class _Readers:
    """Read-only connections, one per reader thread, so reads never queue behind appends."""

    def __init__(self, path: Path, threads: int) -> None:
        self._path = path
        self._executor = ThreadPoolExecutor(max_workers=threads,
                                            thread_name_prefix="openred-store-read")
        self._local = threading.local()
        self._conns: list[sqlite3.Connection] = []
        self._lock = threading.Lock()

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self._path, readonly=True)
            with self._lock:
                self._conns.append(conn)
            self._local.conn = conn
        return conn

    async def run(self, fn: Callable[[sqlite3.Connection], T], what: str) -> T:
        loop = asyncio.get_running_loop()
        try:
            return await loop.run_in_executor(self._executor, lambda: fn(self._conn()))
        except sqlite3.Error as exc:
            raise store_error(exc, what) from exc
        except RuntimeError as exc:  # the pool was shut down: the store is closed
            if "shutdown" in str(exc):
                raise StoreClosed("the event store is closed") from exc
            raise

    def close(self) -> None:
        self._executor.shutdown(wait=True)
        with self._lock:
            conns, self._conns = self._conns, []
        for conn in conns:
            with contextlib.suppress(sqlite3.Error):
                conn.close()


class SQLiteEventStore:
    """An append-only, hash-chained, signed log in one SQLite file, with its projections."""

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
        readers: int = 2,
        contention_timeout: float = 30.0,
        busy_timeout: float = 10.0,
    ) -> None:
        self.path = path
        self.kind = kind
        self._signer = signer
        self._registry = registry
        self._projections = projections
        self._current_versions: dict[str, int] = {}
        self._checkpoint_every = checkpoint_every
        self._checkpoint_interval = checkpoint_interval
        self._contention_timeout = contention_timeout
        self._busy_timeout = busy_timeout
        self._clock = clock
        self._executor = _WriteThread("openred-store")
        self._readers = _Readers(path, max(1, readers))
        self._conn: sqlite3.Connection | None = None
        self._write_lock = asyncio.Lock()
        self._queue: deque[_Request] = deque()
        self._wakeup = asyncio.Event()
        self._writer: asyncio.Task[None] | None = None
        self._frontier = _Frontier(0, GENESIS_PREV_HASH, merkle.CompactRange(),
                                   merkle.BlockIndex(_PROOF_BLOCK_LEVEL))
        self._key_in_force: SignKey | None = None
        self._origin = ""
        # The checkpoint the signer witnessed (a WitnessedSigner), and the one way this
        # process signs checkpoints of this log (the directory's per-grant ones too).
        self._witness = CheckpointWitness()
        self._last_checkpoint_size = 0
        self._last_checkpoint_time = time.monotonic()
        self._checkpoint_idle = asyncio.Event()
        self._checkpoint_idle.set()
        self._ticker: asyncio.Task[None] | None = None
        self._closing = False
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
        readers: int = 2,
        contention_timeout: float = 30.0,
        busy_timeout: float = 10.0,
    ) -> SQLiteEventStore:
        """Open (creating and migrating if needed) the log at ``path`` signed by ``signer``.

        ``path`` is a database file or a data directory holding ``openred.db``. ``kind`` is the
        kind of log (``node``, ``directory``...): the database is migrated to ``kind@head``, and
        a new log starts with a ``LogOpened`` entry naming the signer's key and the kind. An
        existing log must be of the same kind (logs from before kinds are nodes') and signed by
        the same key as its newest entry, or opening fails with ConfigurationError.

        ``registry`` and ``projections`` are frozen: what the log accepts and maintains cannot
        change while it is open. ``readers`` read-only connections serve the read methods.
        ``contention_timeout`` bounds how long an append retries while other processes keep
        moving the head; ``busy_timeout`` how long one wait for SQLite's write lock lasts
        (then the append fails with StoreUnavailable, nothing written).
        """
        path = Path(path)
        if path.is_dir():
            path = path / DATABASE_NAME
        if not path.parent.is_dir():
            raise ConfigurationError(f"directory {path.parent} does not exist")
        lower_switch_interval()
        registry = registry or EventRegistry()
        projections = projections or ProjectionRegistry()
        registry.freeze()
        projections.freeze()
        store = cls(
            path, signer, registry=registry, projections=projections,
            checkpoint_every=checkpoint_every, checkpoint_interval=checkpoint_interval,
            clock=clock, kind=kind, readers=readers, contention_timeout=contention_timeout,
            busy_timeout=busy_timeout,
        )
        store._current_versions = registry.current_versions()
        try:
            await store._run(store._open_sync)
            await store._check_witness()
            if store._frontier.size == 0:
                await store._write_alone([genesis_event(signer.sign_key, kind)])
            await store._checkpoint_if_due()
        except BaseException:
            await store.close()
            raise
        loop = asyncio.get_running_loop()
        store._writer = loop.create_task(store._write_loop(), name=f"openred-store {path}")
        if checkpoint_interval > 0:
            store._ticker = loop.create_task(store._tick())
        return store

    def _open_sync(self) -> None:
        # Alembic is imported only here: readers of a log (audit_tools workers) never need it.
        from openred.store.migrate import check_kind, upgrade
        from openred.store.schema import schema_differences

        check_kind(self.kind)
        try:
            self._check_log_kind()
            upgrade(self.path, self.kind)
            conn = connect(self.path, busy_timeout=self._busy_timeout)
        except sqlite3.DatabaseError as exc:
            raise SchemaError(f"cannot open {self.path}: {exc}") from exc
        self._conn = conn
        # The file's schema must be exactly the migrations' (about a millisecond: one read of
        # sqlite_master; the expected schema is built once per process and kind). A trigger,
        # view or index planted in the file would otherwise act on every write the node makes.
        try:
            differences = schema_differences(conn, self.kind)
        except sqlite3.DatabaseError as exc:
            raise SchemaError(f"cannot read the schema of {self.path}: {exc}") from exc
        if differences:
            more = f" (and {len(differences) - 1} more)" if len(differences) > 1 else ""
            raise SchemaError(
                f"{self.path}: {differences[0]}{more}; the store does not open a log whose "
                "schema is not the one its migrations build (audit_tools verify names every "
                "difference)"
            )
        hashes = entry_hashes(conn)
        # Whole at once (aligned blocks, the fast path): opening is not serving yet.
        tree = merkle.CompactRange.from_entry_hashes(hashes)
        blocks = merkle.BlockIndex(_PROOF_BLOCK_LEVEL).extended(hashes)
        self._frontier = _Frontier(len(hashes), hashes[-1] if hashes else GENESIS_PREV_HASH,
                                   tree, blocks)
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
            self._key_in_force = current
            self._origin = origin_for(history[0][1].node_id)
        else:
            self._key_in_force = self._signer.sign_key
            self._origin = origin_for(self._signer.sign_key.node_id)
        # Only a row the log has reached counts: one planted at a size beyond the head (the
        # checkpoints table takes INSERTs) would otherwise stop the store's checkpoints until
        # the log grows that far.
        row = conn.execute("SELECT max(size) FROM checkpoints WHERE size <= ?",
                           (self._frontier.size,)).fetchone()
        self._last_checkpoint_size = int(row[0] or 0)
        self._catch_up_projections(conn)

    async def _check_witness(self) -> None:
        """Refuse a log that no longer holds the newest checkpoint its signer signed.

        A jail with a witness remembers, outside this file, the newest checkpoint it signed for
        this log (crypto_jail/witness.py). A log rolled back to a backup, truncated, replaced
        or rewritten while the node was stopped shows here: it is shorter than that checkpoint,
        or its first entries are no longer the tree the checkpoint signed. Costs one jail call
        and one consistency proof (a few cached block roots) per open.
        """
        signer = self._signer
        if not isinstance(signer, WitnessedSigner):
            return
        witnessed = await self._witness.ask(signer, self._origin)
        if witnessed is None:
            return
        held, held_root = witnessed
        size, root = self._frontier.size, self._frontier.tree.root()
        if held > size:
            raise TamperedLog(size + 1, (
                f"{self.path} holds {size} entries, but its signer signed a checkpoint of "
                f"{held}: the log was truncated, rolled back or replaced"))
        blocks = self._frontier.blocks
        proof = await self._read(
            lambda conn: blocks.consistency_proof(held, partial(_entry_hash_range, conn)),
            "proving the witnessed checkpoint",
        )
        try:
            merkle.verify_consistency(held, size, held_root, root, proof)
        except ProofError:
            raise TamperedLog(held, (
                f"the first {held} entries of {self.path} are not the ones its signer "
                "signed a checkpoint of: the log was rewritten")) from None

    def _check_log_kind(self) -> None:
        """Refuse an existing log of another kind, or one carrying triggers or views of its
        own, before any migration touches it."""
        from openred.store.schema import foreign_code

        if not self.path.exists():
            return
        with contextlib.closing(sqlite3.connect(self.path)) as probe:
            # Before any migration writes to the file: none of its triggers may be foreign.
            foreign = foreign_code(probe, self.kind)
            if foreign:
                raise SchemaError(
                    f"{self.path}: {foreign[0]}; the store does not run SQL a log's file "
                    "brings with it"
                )
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
        for projection in self._projections:
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
                project_events(conn, single, self._registry, read_events(conn, position + 1))
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
        """Finish queued appends, sign a final checkpoint if one is due, close the database.

        Always closes: a failure on the way (the final checkpoint's signer away, the database
        failing) is logged, and the connections, threads and tasks are released regardless.
        """
        if self._closed or self._closing:
            return
        self._closing = True
        try:
            if self._writer is not None:
                self._wakeup.set()
                try:
                    await self._writer
                except Exception:
                    logger.exception("the store's writer task failed")
            if self._ticker is not None:
                self._ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await self._ticker
            # Not after a failed open (no writer yet): a log its witness refused gets no
            # checkpoint, and one that did not open has nothing new to sign.
            if (self._writer is not None and self._conn is not None
                    and self._frontier.size > self._last_checkpoint_size):
                try:
                    await self.checkpoint()
                except Exception as exc:
                    logger.warning("final checkpoint of %s failed; the next open signs it: %r",
                                   self.path, exc)
        finally:
            self._closed = True
            for task in (self._writer, self._ticker):
                if task is not None and not task.done():  # close() itself was cancelled
                    task.cancel()
            self._fail_queued(StoreClosed("the event store was closed before this append"))
            # Readers first: the last connection to close checkpoints the WAL into the
            # database and removes it, which only the write connection can do.
            self._readers.close()
            conn, self._conn = self._conn, None
            if conn is not None:
                try:
                    await self._executor.run(conn.close)
                except Exception:
                    with contextlib.suppress(Exception):
                        conn.close()
            self._executor.shutdown(wait=True)

    async def __aenter__(self) -> SQLiteEventStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def _run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` in the write thread; SQLite errors become the project's store errors."""
        if self._closed:
            raise StoreClosed("the event store is closed")
        try:
            return await self._executor.run(partial(fn, *args, **kwargs))
        except sqlite3.Error as exc:
            raise store_error(exc, f"{getattr(fn, '__name__', 'store')} failed") from exc
        except RuntimeError as exc:
            if "shutdown" in str(exc):
                raise StoreClosed("the event store is closed") from exc
            raise

    @property
    def _db(self) -> sqlite3.Connection:
        """The write connection: used only in the write thread, never outside this class."""
        if self._conn is None or self._closed:
            raise StoreClosed("the event store is closed")
        return self._conn

    # -- what the store is -------------------------------------------------------------------

    @property
    def registry(self) -> EventRegistry:
        """The event types this log accepts (frozen)."""
        return self._registry

    @property
    def projections(self) -> ProjectionRegistry:
        """The projections this store keeps (frozen)."""
        return self._projections

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

    # -- appending ---------------------------------------------------------------------------

    async def append(self, events: Sequence[NewEvent]) -> list[StoredEvent]:
        """Append ``events`` atomically and return their rows.

        Appends from concurrent callers are committed together (one signing call, one
        transaction) but each is all-or-nothing on its own, and each caller gets its own rows
        or its own error. Raises ConcurrencyConflict (a stale ``expected_version``), SchemaError
        (an event the registry refuses), StoreUnavailable (busy, disk full, I/O error: nothing
        was appended) or another StoreError.
        """
        events = list(events)
        for event in events:
            if event.type in (LOG_OPENED, KEY_ROTATED):
                raise StoreError(f"{event.type} is written by the store itself")
        if not events:
            return []
        if self._closing or self._closed:
            raise StoreClosed("the event store is closed")
        future: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        self._queue.append(_Request(events, future))
        self._wakeup.set()
        return await future

    async def append_one(self, event: NewEvent) -> StoredEvent:
        """Append a single event (merged with concurrent appends into one commit)."""
        return (await self.append([event]))[0]

    async def _write_loop(self) -> None:
        """The writer task: commit everything queued so far as one group, until closed."""
        while True:
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                await self._wakeup.wait()
                continue
            group = [r for r in self._queue if not r.future.done()]
            self._queue.clear()
            if not group:
                continue
            try:
                async with self._write_lock:
                    await self._write_group(group)
                    # The callers have their rows already; a checkpoint that fails now is
                    # logged and retried, never theirs to handle.
                    await self._checkpoint_if_due(locked=True)
            except asyncio.CancelledError:
                _fail(group, StoreClosed("the event store was closed during this append"))
                raise
            except BaseException as exc:  # the writer must outlive every error
                logger.exception("append group failed unexpectedly")
                _fail(group, exc)

    def _fail_queued(self, exc: BaseException) -> None:
        queued = list(self._queue)
        self._queue.clear()
        _fail(queued, exc)

    async def _write_alone(
        self, events: Sequence[NewEvent],
        sign: Callable[[list[UnsignedEntry]], Awaitable[list[bytes]]] | None = None,
    ) -> list[StoredEvent]:
        """Append ``events`` in a group of their own (genesis, rotation); caller holds no lock."""
        future: asyncio.Future[list[StoredEvent]] = asyncio.get_running_loop().create_future()
        async with self._write_lock:
            await self._write_group([_Request(events, future)], sign=sign)
        return future.result()

    async def _write_group(
        self, group: list[_Request],
        sign: Callable[[list[UnsignedEntry]], Awaitable[list[bytes]]] | None = None,
    ) -> None:
        """Chain, sign and commit ``group``; resolve every request's future (never raises)."""
        try:
            outcomes = await self._commit_group(group, sign)
        except asyncio.CancelledError:
            _fail(group, StoreClosed("the event store was closed during this append"))
            raise
        except BaseException as exc:
            _fail(group, exc)
            return
        for request, outcome in zip(group, outcomes, strict=True):
            if request.future.done():
                continue
            if isinstance(outcome, BaseException):
                request.future.set_exception(outcome)
            else:
                request.future.set_result(outcome)

    async def _commit_group(
        self, group: list[_Request],
        sign: Callable[[list[UnsignedEntry]], Awaitable[list[bytes]]] | None,
    ) -> list[list[StoredEvent] | BaseException]:
        """Each request's rows or error; raises what fails the whole group (signer, database).

        The first attempt is optimistic: chain and sign without holding the database, and
        check in the commit that the head has not moved. If another process moved it, the
        next attempts take the database's write lock first (``BEGIN IMMEDIATE``, waiting for
        it as long as ``busy_timeout``), catch up and chain under it, so they cannot lose the
        race again however busy the other writers are.
        """
        deadline = time.monotonic() + self._contention_timeout
        delay = _BACKOFF_FIRST
        moves = 0
        while True:
            hold = moves > 0
            if hold:
                if time.monotonic() >= deadline:
                    raise StoreUnavailable(
                        f"other writers kept {self.path} busy for "
                        f"{self._contention_timeout:g} s; nothing was appended"
                    )
                await self._run(self._begin_sync)
            try:
                return await self._attempt(group, sign)
            except _HeadMoved:
                await self._run(self._reload_sync)
                moves += 1
                logger.debug("head of %s moved (attempt %d): now at %d", self.path, moves,
                             self._frontier.size)
                if moves > 1:
                    await asyncio.sleep(delay * random.uniform(0.5, 1.5))
                    delay = min(delay * 2, _BACKOFF_MAX)
            except _StaleVersions as stale:
                for stream, version in stale.found.items():
                    self._frontier.remember(stream, version)
            except ConcurrencyConflict:
                self._frontier.versions.clear()
                if len(group) <= 1 or sign is not None:
                    raise
                # A stream was not at the version this process knew: commit each request on
                # its own, so the conflict fails only the request it belongs to.
                for request in group:
                    await self._write_group([request])
                return [r.future.exception() or r.future.result() for r in group]
            finally:
                if hold:
                    # Whatever happened, the write lock is not kept (a no-op after COMMIT).
                    with contextlib.suppress(RuntimeError):  # the store was closed meanwhile
                        self._executor.submit(self._rollback_if_open)

    async def _attempt(
        self, group: list[_Request],
        sign: Callable[[list[UnsignedEntry]], Awaitable[list[bytes]]] | None,
    ) -> list[list[StoredEvent] | BaseException]:
        await self._ensure_key_in_force()
        frontier = self._frontier
        recorded_at = utc_timestamp(self._clock())
        sign_here = _signs_in_thread(self._signer) if sign is None else None
        stored: list[StoredEvent] | None = None
        if sign_here is not None:
            # A signer that can sign in the write thread: chain, sign and commit in one
            # hand-off. If it cannot sign there right now (the jail unreachable from the
            # thread), the chained group comes back unsigned and is signed the async way.
            prepared, stored = await self._run(
                self._prepare_sign_commit_sync, group, frontier, recorded_at, sign_here,
            )
        else:
            prepared = await self._run(self._prepare_sync, group, frontier, recorded_at)
        if stored is None:
            if not prepared.entries:
                return prepared.results([])
            if sign is None:
                signatures: list[bytes] = list(await self._signer.sign_entry_hashes(
                    [u.entry_hash for u in prepared.entries]
                ))
            else:
                signatures = await sign(prepared.entries)
            stored = await self._run(self._commit_sync, prepared, signatures, frontier)
        return prepared.results(stored)

    def _prepare_sign_commit_sync(
        self, group: list[_Request], frontier: _Frontier, recorded_at: str,
        sign: Callable[[Sequence[EntryHash]], Sequence[bytes]],
    ) -> tuple[_Prepared, list[StoredEvent] | None]:
        """Chain, sign and commit in the write thread; rows None: sign it the async way.

        Once the group is committed, its callers' futures are settled from the write thread
        together with this job's own (:class:`_AndSettle`), through one
        ``call_soon_threadsafe``: a caller resumes one loop iteration after the commit instead
        of three (this job's future, the writer task, then the caller), which on a busy loop
        was most of an append's wait after its fsync. Only a committed group is settled
        early; every error still travels the usual way (:meth:`_write_group`), which skips
        the futures already settled.
        """
        prepared = self._prepare_sync(group, frontier, recorded_at)
        if not prepared.entries:
            return prepared, []
        try:
            signatures = list(sign([u.entry_hash for u in prepared.entries]))
        except SignInThreadUnavailable as exc:
            logger.debug("signing %d entries in the write thread failed (%s); signing them "
                         "through the event loop", len(prepared.entries), exc)
            return prepared, None
        stored = self._commit_sync(prepared, signatures, frontier)
        settled: list[tuple[asyncio.Future[Any], object]] = [
            (r.future, result) for r, result in zip(group, prepared.results(stored), strict=True)
        ]
        # One wake-up of the loop for the callers and this job's own future (callers first);
        # the write thread hands this job's caller ``value`` (_WriteThread._main).
        return _AndSettle((prepared, stored), settled)  # type: ignore[return-value]

    def _begin_sync(self) -> None:
        """Take the write lock and catch up with what other processes wrote (write thread)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._reload_sync()
        except BaseException:
            self._rollback()
            raise

    def _rollback_if_open(self) -> None:
        conn = self._conn
        if conn is not None and conn.in_transaction:
            self._rollback()

    async def _ensure_key_in_force(self) -> None:
        """Refuse to sign unless the signer holds the key in force at the newest entry.

        When they differ, this process may simply not have seen a rotation another process
        wrote (and a signer that follows the rotation, like a jail, already holds the new key):
        catch up with the database first, then decide.
        """
        if self._key_in_force is not None and self._signer.sign_key != self._key_in_force:
            await self._run(self._reload_sync)
        self._check_key_in_force()

    def _check_key_in_force(self) -> None:
        if self._key_in_force is not None and self._signer.sign_key != self._key_in_force:
            raise ConfigurationError(
                f"the key in force for {self.path} is {self._key_in_force.b64url()} (rotated "
                f"by another writer); this store's signer holds {self._signer.sign_key.b64url()}"
            )

    def _prepare_sync(
        self, group: list[_Request], frontier: _Frontier, recorded_at: str
    ) -> _Prepared:
        """Validate, chain and plan each request after the last one that could be chained."""
        registry, projections = self._registry, self._projections
        current = self._current_versions
        next_seq, prev_hash = frontier.size + 1, frontier.entry_hash
        versions: dict[str, int] = {}
        assumed: dict[str, int] = {}
        entries: list[UnsignedEntry] = []
        plan: ProjectionPlan = []
        outcomes: list[tuple[int, int] | BaseException] = []
        for request in group:
            # Streams this process has not seen are assumed to be at the version the writer
            # expects, or new; the commit checks the assumption inside its transaction, so the
            # usual append (fresh grant:/session: streams) costs no extra database round.
            mine: dict[str, int] = {}
            guessed: dict[str, int] = {}
            try:
                for event in request.events:
                    registry.check_new(event)
                    if event.stream in mine:
                        continue
                    known = versions.get(event.stream)
                    if known is None:
                        known = frontier.versions.get(event.stream)
                    if known is None:
                        known = guessed[event.stream] = event.expected_version or 0
                    mine[event.stream] = known
                chained = chain_entries(
                    request.events, next_seq=next_seq, prev_hash=prev_hash,
                    stream_versions=mine, recorded_at=recorded_at, current_versions=current,
                )
                request_plan = plan_projections(projections, registry, chained)
            except OpenRedError as exc:
                outcomes.append(exc)
                continue
            except Exception as exc:  # a payload JSON cannot encode, a projection that fails
                error = StoreError(f"cannot append {request.events[0].type}: {exc!r}")
                error.__cause__ = exc
                outcomes.append(error)
                continue
            outcomes.append((len(entries), len(entries) + len(chained)))
            entries.extend(chained)
            _merge_plan(plan, request_plan)
            versions.update(mine)
            for stream, version in guessed.items():
                assumed.setdefault(stream, version)
            next_seq += len(chained)
            prev_hash = chained[-1].entry_hash
        return _Prepared(entries, plan, outcomes, versions, assumed)

    def _stream_versions_sync(self, streams: list[str]) -> dict[str, int]:
        found: dict[str, int] = {}
        for i in range(0, len(streams), 500):
            chunk = streams[i:i + 500]
            rows = self._db.execute(
                "SELECT stream, max(stream_version) FROM events WHERE stream IN "
                f"({', '.join('?' * len(chunk))}) GROUP BY stream",
                chunk,
            )
            found.update((str(s), int(v)) for s, v in rows)
        return found

    def _commit_sync(
        self, prepared: _Prepared, signatures: list[bytes], frontier: _Frontier
    ) -> list[StoredEvent]:
        """Insert, check and commit a signed group; then advance the frontier (write thread)."""
        if len(signatures) != len(prepared.entries):
            raise StoreError(f"the signer returned {len(signatures)} signatures for "
                             f"{len(prepared.entries)} entries")
        stored = [u.signed(s) for u, s in zip(prepared.entries, signatures, strict=True)]
        conn = self._db
        if not conn.in_transaction:  # a retry holds the write lock already (_begin_sync)
            conn.execute("BEGIN IMMEDIATE")
        try:
            row = conn.execute(
                "SELECT seq, entry_hash FROM events ORDER BY seq DESC LIMIT 1"
            ).fetchone()
            current = (0, GENESIS_PREV_HASH) if row is None else (int(row[0]), bytes(row[1]))
            if current != (frontier.size, frontier.entry_hash):
                raise _HeadMoved
            if prepared.assumed:
                found = self._stream_versions_sync(list(prepared.assumed))
                actual = {stream: found.get(stream, 0) for stream in prepared.assumed}
                if actual != prepared.assumed:
                    raise _StaleVersions(actual)
            cursor = conn.executemany(_INSERT_EVENT, stored)
            if cursor.rowcount != len(stored):
                raise _NotStored(f"{cursor.rowcount} of {len(stored)} rows were inserted")
            # Read the rows back: whatever the reason (a trigger that ignores or rewrites
            # rows, a changed table), nothing is acknowledged that is not stored as signed.
            back = conn.execute(
                f"SELECT {_EVENT_COLUMNS} FROM events WHERE seq >= ? ORDER BY seq",
                (stored[0].seq,),
            ).fetchall()
            if back != stored:
                raise _NotStored("the rows read back differ from the rows inserted")
            execute_plan(conn, self._projections, prepared.plan, stored[-1].seq)
        except sqlite3.IntegrityError as exc:
            self._rollback()
            if "UNIQUE" in str(exc) and "stream" in str(exc):
                raise ConcurrencyConflict(
                    "another writer already appended at that stream version"
                ) from exc
            raise StoreError(f"append refused by the database: {exc}") from exc
        except _NotStored as exc:
            self._rollback()
            raise StoreError(
                f"the database did not store the append ({exc}); nothing was appended"
            ) from None
        except sqlite3.Error as exc:
            self._rollback()
            raise store_error(exc, "append failed; nothing was appended") from exc
        except BaseException:
            self._rollback()
            raise
        try:
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            self._rollback()
            # COMMIT can report an error for a transaction that is durable after all (an I/O
            # error after the WAL frame was synced): acknowledge exactly what is stored.
            if not self._is_stored(stored[-1]):
                raise store_error(exc, "commit failed; nothing was appended") from exc
            logger.warning("COMMIT reported %r but the append is stored", exc)
        try:
            self._advance(frontier, stored, prepared.versions)
        except Exception:
            # Durable, so acknowledged; the frontier is left behind and the next append finds
            # the head moved and re-reads these entries from the database.
            logger.exception("advancing the in-memory head after a commit failed")
        return stored

    def _rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._db.execute("ROLLBACK")

    def _is_stored(self, entry: StoredEvent) -> bool:
        try:
            row = self._db.execute(
                "SELECT entry_hash FROM events WHERE seq = ?", (entry.seq,)
            ).fetchone()
        except sqlite3.Error:
            return False
        return row is not None and bytes(row[0]) == entry.entry_hash

    def _advance(
        self, frontier: _Frontier, stored: list[StoredEvent], versions: dict[str, int]
    ) -> None:
        """Move the in-memory head past ``stored`` (committed by this process)."""
        tree, blocks = _extend_tree(frontier, [e.entry_hash for e in stored])
        for entry in stored:
            if entry.type == KEY_ROTATED:
                self._key_in_force = SignKey(from_b64url(decode_payload(entry.payload)["new_key"]))
        frontier.tree, frontier.blocks = tree, blocks
        frontier.size = stored[-1].seq
        frontier.entry_hash = stored[-1].entry_hash
        for stream, version in versions.items():
            frontier.remember(stream, version)

    def _reload_sync(self) -> None:
        """Catch up with entries other processes appended, honouring their key rotations."""
        conn = self._db
        frontier = self._frontier
        known = frontier.size
        # One snapshot for both reads (inside the caller's transaction if it holds one).
        own = not conn.in_transaction
        if own:
            conn.execute("BEGIN")
        try:
            rows = conn.execute(
                "SELECT seq, entry_hash, stream, stream_version FROM events WHERE seq > ? "
                "ORDER BY seq", (known,)
            ).fetchall()
            rotations = conn.execute(
                "SELECT payload FROM events WHERE seq > ? AND type = ? ORDER BY seq",
                (known, KEY_ROTATED),
            ).fetchall()
        finally:
            if own:
                conn.execute("COMMIT")
        if [int(r[0]) for r in rows] != list(range(known + 1, known + 1 + len(rows))):
            raise SchemaError(f"{self.path}: the entries after {known} are not contiguous")
        if not rows:
            return
        # The streams other writers appended to are now at the versions they wrote.
        for _seq, _hash, stream, version in rows:
            frontier.remember(str(stream), int(version))
        hashes = [bytes(r[1]) for r in rows]
        tree, blocks = _extend_tree(frontier, hashes)
        for (payload,) in rotations:
            self._key_in_force = SignKey(from_b64url(decode_payload(bytes(payload))["new_key"]))
            logger.info("%s: another writer rotated the key to %s", self.path,
                        self._key_in_force.b64url())
        frontier.tree, frontier.blocks = tree, blocks
        frontier.size = int(rows[-1][0])
        frontier.entry_hash = hashes[-1]

    async def rotate_key(self, new_signer: Signer) -> StoredEvent:
        """Hand the log to ``new_signer``: a ``KeyRotated`` entry signed by old and new key."""
        if self._closing or self._closed:
            raise StoreClosed("the event store is closed")
        async with self._write_lock:
            old_signer = self._signer
            if new_signer.sign_key == old_signer.sign_key:
                raise StoreError("the new key is the key in force")
            event = rotation_event(old_signer.sign_key, new_signer.sign_key)

            async def both(unsigned: list[UnsignedEntry]) -> list[bytes]:
                hashes = [EntryHash(u.entry_hash) for u in unsigned]
                old = await old_signer.sign_entry_hashes(hashes)
                new = await new_signer.sign_entry_hashes(hashes)
                return [a + b for a, b in zip(old, new, strict=True)]

            future: asyncio.Future[list[StoredEvent]] = (
                asyncio.get_running_loop().create_future()
            )
            await self._write_group([_Request([event], future)], sign=both)
            (stored,) = future.result()
            self._signer = new_signer
        await self._checkpoint_if_due()
        return stored

    # -- checkpoints -------------------------------------------------------------------------

    async def checkpoint(self) -> bytes:
        """Sign (or return the already signed) checkpoint of the current head; the note text."""
        async with self._write_lock:
            return await self._checkpoint_locked()

    async def _checkpoint_locked(self) -> bytes:
        for attempt in (1, 2):
            size = self._frontier.size
            existing = await self._run(self._checkpoint_note_sync, size)
            # A stored checkpoint the signer's witness is behind (it was moved aside to
            # restore a backup on purpose, or the log predates it) is signed again: the
            # witness then holds the log as it is now, not only from the next checkpoint on.
            if existing is not None and not self._witness_behind(size):
                break
            await self._ensure_key_in_force()
            frontier = self._frontier
            if frontier.size != size:
                size = frontier.size
                existing = await self._run(self._checkpoint_note_sync, size)
            root = frontier.tree.root()
            body = Checkpoint(origin=self._origin, size=size, root_hash=root)
            try:
                note = await self._sign_checkpoint(body, frontier)
            except WitnessAhead:
                if attempt == 2:
                    raise
                # Another writer process had a checkpoint beyond this process's head signed:
                # read its entries, then sign the head that includes them.
                await self._run(self._reload_sync)
                continue
            if existing is None:
                signed_at = utc_timestamp(self._clock())
                await self._run(self._store_checkpoint_sync, size, root, note, signed_at)
                existing = note
            break
        assert existing is not None
        self._last_checkpoint_size = max(self._last_checkpoint_size, size)
        self._last_checkpoint_time = time.monotonic()
        return existing

    def _witness_behind(self, size: int) -> bool:
        held = self._witness.held
        return isinstance(self._signer, WitnessedSigner) and (held is None or held[0] < size)

    async def _sign_checkpoint(self, checkpoint: Checkpoint, frontier: _Frontier) -> bytes:
        """The signed note of ``checkpoint`` (the frontier's head).

        A witnessed signer is sent a consistency proof from the checkpoint it witnessed (about
        a millisecond: cached block roots, a few hashes; one checkpoint per 100 entries or
        60 s), through :class:`~openred.store.witnessing.CheckpointWitness`.
        """
        blocks = frontier.blocks

        async def prove(old: int) -> list[bytes]:
            return await self._read(
                lambda conn: blocks.consistency_proof(old, partial(_entry_hash_range, conn)),
                "proving the new checkpoint extends the witnessed one",
            )

        _, note = await self._witness.sign(checkpoint, self._signer, prove)
        return note

    async def sign_checkpoint_of(
        self, checkpoint: Checkpoint, signer: Signer, prove: Prover, *,
        newer: RootAt | None = None,
    ) -> tuple[Checkpoint, bytes]:
        """Sign a checkpoint of this log that the caller computed and can prove (the
        directory's proof tree), with ``signer`` (this log's key), one at a time with the
        store's own; (the checkpoint signed, its note). Not stored.

        ``prove(old)`` is the consistency proof from the tree of size ``old`` to
        ``checkpoint``; when the signer witnessed a larger checkpoint meanwhile, ``newer``
        gives the caller's root at that size and that one is signed instead
        (:meth:`CheckpointWitness.sign <openred.store.witnessing.CheckpointWitness.sign>`).
        """
        if checkpoint.origin != self._origin:
            raise StoreError(f"a checkpoint of {checkpoint.origin} is not one of this log")
        return await self._witness.sign(checkpoint, signer, prove, newer=newer)

    def _checkpoint_note_sync(self, size: int) -> bytes | None:
        """The stored note of ``size``, if it is this log's checkpoint of its head at that
        size (one signature check); a row another program inserted is ignored, with a warning
        (the fresh note is then returned and the row left for ``audit_tools verify``)."""
        row = self._db.execute("SELECT note FROM checkpoints WHERE size = ?", (size,)).fetchone()
        if row is None:
            return None
        note = bytes(row[0])
        try:
            checkpoint = verify_checkpoint(note, self._origin,
                                           self._key_in_force or self._signer.sign_key,
                                           origin=self._origin)
        except CheckpointError:
            checkpoint = None
        if (checkpoint is None or checkpoint.size != size
                or (size == self._frontier.size
                    and checkpoint.root_hash != self._frontier.tree.root())):
            logger.warning("%s: the stored checkpoint of size %d is not this log's own; "
                           "ignored (run audit_tools verify on the file)", self.path, size)
            return None
        return note

    def _store_checkpoint_sync(self, size: int, root: bytes, note: bytes, signed_at: str) -> None:
        self._db.execute(
            "INSERT OR IGNORE INTO checkpoints (size, root_hash, note, signed_at) "
            "VALUES (?, ?, ?, ?)",
            (size, root, note, signed_at),
        )

    def _checkpoint_due(self) -> bool:
        pending = self._frontier.size - self._last_checkpoint_size
        if pending <= 0:
            return False
        overdue = (
            self._checkpoint_interval > 0
            and time.monotonic() - self._last_checkpoint_time >= self._checkpoint_interval
        )
        return pending >= self._checkpoint_every or overdue or self._last_checkpoint_size == 0

    async def _checkpoint_if_due(self, *, locked: bool = False) -> None:
        """Sign a checkpoint when one is due; a failure is logged, and retried later.

        ``locked``: the caller holds the write lock (the writer task, between groups).
        """
        if not self._checkpoint_due():
            return
        self._checkpoint_idle.clear()
        try:
            if locked:
                await self._checkpoint_locked()
            else:
                await self.checkpoint()
        except Exception as exc:
            logger.warning("checkpoint of %s at size %d failed, will retry: %r",
                           self.path, self._frontier.size, exc)
        finally:
            self._checkpoint_idle.set()

    async def _tick(self) -> None:
        """Sign a checkpoint when entries have waited ``checkpoint_interval``; survive anything."""
        while True:
            await asyncio.sleep(self._checkpoint_interval)
            if self._frontier.size <= self._last_checkpoint_size:
                continue
            try:
                await self.checkpoint()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                # A signer briefly away (the jail restarting), a busy or full disk: the entries
                # stay pending and the next tick or append signs them.
                logger.warning("periodic checkpoint failed, will retry: %r", exc)

    async def latest_checkpoint(self) -> bytes | None:
        """The newest signed checkpoint note, if any (after a checkpoint being signed now)."""
        row = await self.latest_checkpoint_row()
        return None if row is None else row[1]

    async def latest_checkpoint_row(self) -> tuple[int, bytes] | None:
        """The newest row of the checkpoints table, (its size column, its note), if any (after
        a checkpoint being signed now). The row is not checked: a caller that serves the note
        checks it is signed over the log at that size."""
        await self._checkpoint_idle.wait()

        def read(conn: sqlite3.Connection) -> tuple[int, bytes] | None:
            row = conn.execute(
                "SELECT size, note FROM checkpoints ORDER BY size DESC LIMIT 1").fetchone()
            return None if row is None else (int(row[0]), bytes(row[1]))

        return await self._read(read, "reading the latest checkpoint")

    # -- reading (read-only connections, in the reader threads) -------------------------------

    async def _read(self, fn: Callable[[sqlite3.Connection], T], what: str) -> T:
        if self._closed:
            raise StoreClosed("the event store is closed")
        return await self._readers.run(fn, what)

    async def read(self, from_seq: int = 1, to_seq: int | None = None) -> list[StoredEvent]:
        """Stored events ``from_seq``..``to_seq`` (inclusive)."""
        return await self._read(lambda conn: list(read_events(conn, from_seq, to_seq)),
                                "reading the log")

    async def read_stream(self, stream: str, from_version: int = 1) -> list[RecordedEvent]:
        """The decoded, upcast events of one stream from ``from_version`` on, in order."""
        return (await self.load_stream(stream, from_version)).events

    async def load_stream(self, stream: str, from_version: int = 1) -> StreamState:
        """A stream's current version and its decoded events, read in one snapshot.

        Append with ``expected_version=state.version`` to write only if nobody wrote since.
        Decoding and upcasting run in the reader thread; a failed upcast is a SchemaError.
        """
        registry = self._registry

        def load(conn: sqlite3.Connection) -> StreamState:
            conn.execute("BEGIN")
            try:
                rows = conn.execute(
                    f"SELECT {_EVENT_COLUMNS} FROM events WHERE stream = ? "
                    "AND stream_version >= ? ORDER BY stream_version",
                    (stream, from_version),
                ).fetchall()
                version = _stream_version(conn, stream)
            finally:
                conn.execute("COMMIT")
            return StreamState(version, [registry.decode(row_to_event(r)) for r in rows])

        return await self._read(load, f"reading stream {stream!r}")

    async def stream_version(self, stream: str) -> int:
        """The current version of ``stream`` (0 for a stream with no events)."""
        return await self._read(lambda conn: _stream_version(conn, stream),
                                f"reading the version of stream {stream!r}")

    async def query(self, sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
        """Rows of a read-only statement (on a read-only connection: it cannot write)."""
        if not sql.lstrip().upper().startswith(("SELECT", "WITH")):
            raise StoreError("query() only runs SELECT statements")
        return await self._read(lambda conn: [tuple(r) for r in conn.execute(sql, params)],
                                "query failed")

    async def root(self) -> bytes:
        """The Merkle tree root over every entry."""
        return self._frontier.tree.root()

    async def inclusion_proof(self, seq: int) -> tuple[int, list[bytes]]:
        """(tree size, audit path) proving entry ``seq`` is in the current tree."""
        blocks = self._frontier.blocks
        if not 1 <= seq <= blocks.size:
            raise StoreError(f"no entry {seq}: the log has {blocks.size} entries")
        proof = await self._read(
            lambda conn: blocks.inclusion_proof(seq - 1, partial(_entry_hash_range, conn)),
            "building an inclusion proof",
        )
        return blocks.size, proof

    async def consistency_proof(self, old_size: int) -> tuple[int, list[bytes]]:
        """(tree size, proof) that the tree of ``old_size`` is a prefix of the current one."""
        blocks = self._frontier.blocks
        if not 0 <= old_size <= blocks.size:
            raise StoreError(f"cannot prove size {old_size}: the log has {blocks.size} entries")
        proof = await self._read(
            lambda conn: blocks.consistency_proof(old_size, partial(_entry_hash_range, conn)),
            "building a consistency proof",
        )
        return blocks.size, proof

    async def rebuild_projections(self) -> int:
        """Drop every projection's rows and rebuild them by replaying the log; events replayed."""
        async with self._write_lock:
            return await self._run(self._rebuild_sync)

    def _rebuild_sync(self) -> int:
        conn = self._db
        conn.execute("BEGIN IMMEDIATE")
        try:
            for table in self._projections.tables():
                conn.execute(f"DELETE FROM {table}")
            conn.execute("DELETE FROM projection_positions")
            count = project_events(conn, self._projections, self._registry, read_events(conn))
            conn.executemany(
                "INSERT INTO projection_positions (name, position) VALUES (?, ?) "
                "ON CONFLICT(name) DO UPDATE SET position=excluded.position",
                [(name, count) for name in self._projections.names],
            )
            conn.execute("COMMIT")
        except BaseException:
            self._rollback()
            raise
        return count


def _fail(requests: Iterable[_Request], exc: BaseException) -> None:
    for request in requests:
        if not request.future.done():
            request.future.set_exception(exc)


def _stream_version(conn: sqlite3.Connection, stream: str) -> int:
    row = conn.execute(
        "SELECT max(stream_version) FROM events WHERE stream = ?", (stream,)
    ).fetchone()
    return int(row[0] or 0)
