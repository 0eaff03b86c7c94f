"""The store under faults: lying databases, full disks, busy locks, failing signers, close()."""

from __future__ import annotations

import asyncio
import sqlite3
import sys
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import pytest

from audit_tools.verify import verify
from openred.crypto.identity import EntryHash, Signature
from openred.errors import (
    JailUnavailable,
    SchemaError,
    StoreClosed,
    StoreError,
    StoreUnavailable,
)
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store import merkle
from openred.store import sqlite as store_module
from openred.store.events import EventRegistry, NewEvent, Payload, RecordedEvent
from openred.store.projections import ProjectionRegistry, RowOp
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore, connect
from tests.store.history import peer_event

SEED = b"\x61" * 32


class FlakySigner(InProcessSigner):
    """Signs entries; its checkpoint signature fails while ``error`` is set."""

    error: BaseException | None = None

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        if self.error is not None:
            raise self.error
        return await super().sign_checkpoint(note_body)


async def open_store(path: Path, signer: InProcessSigner | None = None,
                     **kw: Any) -> SQLiteEventStore:
    options: dict[str, Any] = {"registry": node_registry(), "projections": node_projections(),
                               "checkpoint_interval": 0}
    options.update(kw)
    return await SQLiteEventStore.open(path, signer or InProcessSigner.from_seed(SEED), **options)


def side_connection(store: SQLiteEventStore) -> sqlite3.Connection:
    """Another connection to the store's file, as another process (or an attacker) has."""
    return sqlite3.connect(store.path, isolation_level=None)


def count_events(path: Path) -> int:
    conn = connect(path, readonly=True)
    try:
        return int(conn.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        conn.close()


# -- the insert is checked ------------------------------------------------------------------------

HONEST_AGAIN = ["DROP TRIGGER lie"]
LYING_SCHEMAS: dict[str, tuple[list[str], list[str]]] = {
    # name: (statements that make the database lie, statements that undo them)
    "ignore-every-row": (
        ["CREATE TRIGGER lie BEFORE INSERT ON events BEGIN SELECT RAISE(IGNORE); END"],
        HONEST_AGAIN,
    ),
    "ignore-some-rows": (
        ["CREATE TRIGGER lie BEFORE INSERT ON events WHEN NEW.seq % 2 = 0 "
         "BEGIN SELECT RAISE(IGNORE); END"],
        HONEST_AGAIN,
    ),
    "rewrite-after-insert": (
        ["DROP TRIGGER events_no_update",
         "CREATE TRIGGER lie AFTER INSERT ON events "
         "BEGIN UPDATE events SET payload = X'7B7D' WHERE seq = NEW.seq; END"],
        ["DROP TRIGGER lie",
         "CREATE TRIGGER events_no_update BEFORE UPDATE ON events "
         "BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE refused'); END"],
    ),
    "replace-the-row": (
        ["CREATE TRIGGER lie BEFORE INSERT ON events WHEN NEW.stream NOT LIKE 'x%' BEGIN "
         "INSERT INTO events VALUES (NEW.seq, 'x' || NEW.seq, 1, NEW.type, NEW.schema_version, "
         "NEW.recorded_at, NEW.payload, NEW.prev_hash, NEW.entry_hash, NEW.signature); "
         "SELECT RAISE(IGNORE); END"],
        HONEST_AGAIN,
    ),
    "a-view-that-swallows-inserts": (
        ["ALTER TABLE events RENAME TO events_real",
         "CREATE VIEW events AS SELECT * FROM events_real",
         "CREATE TRIGGER lie INSTEAD OF INSERT ON events BEGIN SELECT 1; END"],
        ["DROP TRIGGER lie", "DROP VIEW events", "ALTER TABLE events_real RENAME TO events"],
    ),
}


@pytest.mark.parametrize("lie", sorted(LYING_SCHEMAS))
async def test_rows_the_database_did_not_store_are_never_acknowledged(
    tmp_path: Path, lie: str
) -> None:
    store = await open_store(tmp_path)
    try:
        head = store.head
        side = side_connection(store)
        make_lie, undo = LYING_SCHEMAS[lie]
        for statement in make_lie:
            side.execute(statement)
        with pytest.raises(StoreError, match="did not store"):
            await store.append([peer_event(i) for i in range(4)])
        assert store.head == head
        assert count_events(store.path) == head.size
        # The database honest again, the store goes on from where it was.
        for statement in undo:
            side.execute(statement)
        side.close()
        stored = await store.append([peer_event(i) for i in range(4)])
        assert stored[0].seq == head.size + 1
    finally:
        await store.close()
    assert verify(tmp_path).ok


# -- after a durable commit, nothing is raised ----------------------------------------------------


@pytest.mark.parametrize("error", [JailUnavailable("the jail is restarting"),
                                   RuntimeError("the signer crashed")])
async def test_a_failed_checkpoint_after_the_commit_is_logged_not_raised(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, error: BaseException
) -> None:
    signer = FlakySigner.from_seed(SEED)
    store = await open_store(tmp_path, signer, checkpoint_every=1)
    try:
        signer.error = error
        stored = await store.append_one(peer_event(1))  # must not raise: it is durable
        assert stored.seq == 2
        assert count_events(store.path) == 2
        for _ in range(50):
            if "will retry" in caplog.text:
                break
            await asyncio.sleep(0.01)
        assert "will retry" in caplog.text
        signer.error = None
        await store.append_one(peer_event(2))
        for _ in range(100):
            if await store.latest_checkpoint() is not None and (
                await store.query("SELECT max(size) FROM checkpoints")
            ) == [(3,)]:
                break
            await asyncio.sleep(0.01)
        assert await store.query("SELECT max(size) FROM checkpoints") == [(3,)]
    finally:
        await store.close()
    assert verify(tmp_path).ok


async def test_the_checkpoint_timer_survives_every_error(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    signer = FlakySigner.from_seed(SEED)
    store = await open_store(tmp_path, signer, checkpoint_every=1000, checkpoint_interval=0.02)
    try:
        signer.error = RuntimeError("not an OpenRedError")
        await store.append_one(peer_event(1))
        await asyncio.sleep(0.1)
        assert "periodic checkpoint failed" in caplog.text
        assert store._ticker is not None and not store._ticker.done()
        signer.error = None
        for _ in range(100):
            await asyncio.sleep(0.02)
            if await store.query("SELECT max(size) FROM checkpoints") == [(2,)]:
                break
        assert await store.query("SELECT max(size) FROM checkpoints") == [(2,)]
    finally:
        await store.close()


# -- SQLite errors become the project's errors ----------------------------------------------------


async def test_a_full_disk_is_store_unavailable_with_the_cause(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        head = store.head
        # White box: cap the write connection's database size (SQLite's own SQLITE_FULL).
        count = await store._run(lambda: store._db.execute("PRAGMA page_count").fetchone()[0])
        await store._run(lambda: store._db.execute(f"PRAGMA max_page_count = {count + 2}"))
        with pytest.raises(StoreUnavailable) as caught:
            await store.append([peer_event(i) for i in range(2000)])
        cause = caught.value.__cause__
        assert isinstance(cause, sqlite3.OperationalError)
        assert cause.sqlite_errorname == "SQLITE_FULL"
        assert store.head == head and count_events(store.path) == head.size
        await store._run(lambda: store._db.execute("PRAGMA max_page_count = 1073741823"))
        await store.append([peer_event(i) for i in range(2000)])
    finally:
        await store.close()
    assert verify(tmp_path).ok


async def test_a_busy_database_is_store_unavailable_and_nothing_is_written(
    tmp_path: Path,
) -> None:
    store = await open_store(tmp_path, busy_timeout=0.2)
    try:
        head = store.head
        side = side_connection(store)
        side.execute("BEGIN IMMEDIATE")  # another process holds the write lock
        with pytest.raises(StoreUnavailable) as caught:
            await store.append_one(peer_event(1))
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert "locked" in str(caught.value.__cause__)
        side.execute("ROLLBACK")
        side.close()
        assert store.head == head
        assert (await store.append_one(peer_event(1))).seq == head.size + 1
    finally:
        await store.close()


class FailingCommit:
    """Wraps the write connection: COMMIT raises an I/O error, before or after committing."""

    def __init__(self, real: sqlite3.Connection, *, after: bool) -> None:
        self._real = real
        self._after = after

    def execute(self, sql: str, *args: Any) -> sqlite3.Cursor:
        if sql == "COMMIT":
            if self._after:
                self._real.execute(sql)
            error = sqlite3.OperationalError("disk I/O error")
            error.sqlite_errorcode = 10  # type: ignore[attr-defined]
            error.sqlite_errorname = "SQLITE_IOERR"  # type: ignore[attr-defined]
            raise error
        return self._real.execute(sql, *args)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


async def test_an_io_error_at_commit_is_store_unavailable(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    real = store._conn
    assert real is not None
    try:
        head = store.head
        store._conn = FailingCommit(real, after=False)  # type: ignore[assignment]
        with pytest.raises(StoreUnavailable) as caught:
            await store.append_one(peer_event(1))
        assert isinstance(caught.value.__cause__, sqlite3.OperationalError)
        assert store.head == head and count_events(store.path) == head.size
    finally:
        store._conn = real
        await store.close()


async def test_a_commit_that_reports_an_error_but_is_durable_is_acknowledged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    store = await open_store(tmp_path)
    real = store._conn
    assert real is not None
    try:
        store._conn = FailingCommit(real, after=True)  # type: ignore[assignment]
        stored = await store.append_one(peer_event(1))
        store._conn = real
        assert "the append is stored" in caplog.text
        assert count_events(store.path) == stored.seq == store.head.size
        await store.append_one(peer_event(2))
    finally:
        store._conn = real
        await store.close()
    assert verify(tmp_path).ok


# -- close() always closes ------------------------------------------------------------------------


async def test_close_closes_even_when_the_final_checkpoint_fails(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    signer = FlakySigner.from_seed(SEED)
    store = await open_store(tmp_path, signer, checkpoint_every=1000)
    await store.append_one(peer_event(1))
    await store.query("SELECT 1")  # a reader connection is open too
    signer.error = JailUnavailable("the jail is gone")
    await store.close()  # does not raise
    assert "final checkpoint" in caplog.text
    with pytest.raises(StoreClosed):
        await store.append_one(peer_event(2))
    with pytest.raises(StoreClosed):
        await store.query("SELECT 1")
    # Every connection is closed: the last one to close removed the WAL file.
    assert not Path(f"{store.path}-wal").exists()
    # The next open signs the checkpoint the failed close could not.
    store = await open_store(tmp_path, InProcessSigner.from_seed(SEED), checkpoint_every=1000)
    await store.close()
    assert verify(tmp_path).ok


async def test_close_finishes_appends_already_queued(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    pending = [asyncio.ensure_future(store.append_one(peer_event(i))) for i in range(20)]
    await asyncio.sleep(0)
    await store.close()
    results = await asyncio.gather(*pending, return_exceptions=True)
    assert all(not isinstance(r, BaseException) for r in results), results
    assert count_events(store.path) == 21


# -- the write path checks events against the registry --------------------------------------------


def versioned_registry() -> EventRegistry:
    registry = EventRegistry()
    registry.register("Greeted", version=1)

    @registry.upcaster("Greeted", from_version=1)
    def split(payload: Payload) -> Payload:
        first, _, last = payload["name"].partition(" ")
        return {"first": first, "last": last}

    return registry


async def test_the_write_path_checks_events_against_the_registry(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(tmp_path, InProcessSigner.from_seed(SEED),
                                        registry=versioned_registry(), checkpoint_interval=0)
    try:
        with pytest.raises(SchemaError, match="unknown event type"):
            await store.append_one(NewEvent("p:1", "NobodyKnowsMe", {}))
        current = await store.append_one(NewEvent("p:1", "Greeted", {"first": "A", "last": "B"}))
        assert current.schema_version == 2  # no version given: the type's current one
        with pytest.raises(SchemaError, match="newer"):
            await store.append_one(NewEvent("p:2", "Greeted", {}, schema_version=3))
        with pytest.raises(SchemaError, match="upcasting Greeted"):
            await store.append_one(NewEvent("p:2", "Greeted", {"nom": "x"}, schema_version=1))
        old = await store.append_one(NewEvent("p:2", "Greeted", {"name": "Ada L"},
                                              schema_version=1))
        assert old.schema_version == 1
        (event,) = await store.read_stream("p:2")
        assert event.payload == {"first": "Ada", "last": "L"}
        assert store.head.size == 3
    finally:
        await store.close()
    assert verify(tmp_path).ok


async def test_registries_are_frozen_once_the_store_is_open(tmp_path: Path) -> None:
    registry, projections = node_registry(), node_projections()
    store = await SQLiteEventStore.open(tmp_path, InProcessSigner.from_seed(SEED),
                                        registry=registry, projections=projections,
                                        checkpoint_interval=0)
    try:
        with pytest.raises(SchemaError, match="frozen"):
            registry.register("LateType")
        with pytest.raises(SchemaError, match="frozen"):
            registry.upcaster("PeerDiscovered", from_version=1)(lambda p: p)
        with pytest.raises(SchemaError, match="frozen"):
            projections.add(next(iter(node_projections())))
        assert store.registry is registry and store.registry.frozen
    finally:
        await store.close()


# -- the read side --------------------------------------------------------------------------------


class GateProjection:
    """A projection whose apply blocks the write thread until the test opens the gate."""

    name = "gate"
    tables: Sequence[str] = ()
    handles = frozenset({"PeerDiscovered"})

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.threads: set[str] = set()

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        self.threads.add(threading.current_thread().name)
        self.entered.set()
        self.gate.wait(10)
        return []


async def test_reads_do_not_queue_behind_appends(tmp_path: Path) -> None:
    gate = GateProjection()
    gate.gate.set()
    store = await open_store(tmp_path, projections=ProjectionRegistry([gate]))
    try:
        first = await store.append_one(peer_event(1))
        gate.gate.clear()
        gate.entered.clear()
        append = asyncio.ensure_future(store.append_one(peer_event(2)))
        while not gate.entered.is_set():
            await asyncio.sleep(0.001)
        # The write thread is stuck inside the append; reads still answer.
        state = await asyncio.wait_for(store.load_stream(first.stream), 5)
        assert state.version == 1 and [e.seq for e in state.events] == [first.seq]
        assert await asyncio.wait_for(store.stream_version(first.stream), 5) == 1
        assert await asyncio.wait_for(store.query("SELECT count(*) FROM events"), 5) == [(2,)]
        assert not append.done()
        gate.gate.set()
        await append
        assert await store.stream_version("node:none") == 0
    finally:
        gate.gate.set()
        await store.close()
    assert all(not name.startswith("MainThread") for name in gate.threads)


async def test_queries_run_on_read_only_connections(tmp_path: Path) -> None:
    store = await open_store(tmp_path)
    try:
        assert not hasattr(store, "conn")
        with pytest.raises(StoreError, match="readonly"):
            await store.query("WITH x AS (SELECT 1) DELETE FROM peers")
        with pytest.raises(StoreError, match="only runs SELECT"):
            await store.query("DELETE FROM peers")
    finally:
        await store.close()


async def test_cpu_work_runs_off_the_event_loop(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    loop_thread = threading.current_thread()
    seen: dict[str, set[threading.Thread]] = {"chain": set(), "proof": set(), "plan": set()}
    chain, range_root = store_module.chain_entries, merkle.BlockIndex.range_root
    plan = store_module.plan_projections

    def chain_spy(*args: Any, **kw: Any) -> Any:
        seen["chain"].add(threading.current_thread())
        return chain(*args, **kw)

    def plan_spy(*args: Any, **kw: Any) -> Any:
        seen["plan"].add(threading.current_thread())
        return plan(*args, **kw)

    def range_root_spy(self: merkle.BlockIndex, *args: Any) -> bytes:
        seen["proof"].add(threading.current_thread())
        return range_root(self, *args)

    monkeypatch.setattr(store_module, "chain_entries", chain_spy)
    monkeypatch.setattr(store_module, "plan_projections", plan_spy)
    monkeypatch.setattr(merkle.BlockIndex, "range_root", range_root_spy)
    store = await open_store(tmp_path)
    try:
        stored = await store.append([peer_event(i) for i in range(300)])
        size, proof = await store.inclusion_proof(stored[5].seq)
        merkle.verify_inclusion(stored[5].seq - 1, size, stored[5].entry_hash, proof,
                                await store.root())
        await store.consistency_proof(10)
    finally:
        await store.close()
    for what, threads in seen.items():
        assert threads and loop_thread not in threads, what
    # A busy store thread hands the GIL to the waiting loop within a millisecond.
    assert sys.getswitchinterval() <= store_module.SWITCH_INTERVAL


async def test_a_big_batch_is_signed_off_the_event_loop(tmp_path: Path) -> None:
    loop_thread = threading.current_thread()
    threads: set[threading.Thread] = set()

    class Spy(InProcessSigner):
        def sign_entry_hashes_sync(self, hashes: Sequence[EntryHash]) -> list[Signature]:
            if len(hashes) >= 500:  # (the genesis entry alone is signed inline)
                threads.add(threading.current_thread())
            return super().sign_entry_hashes_sync(hashes)

    store = await open_store(tmp_path, Spy.from_seed(SEED))
    try:
        await store.append([peer_event(i) for i in range(500)])
    finally:
        await store.close()
    assert threads and loop_thread not in threads


def test_sqlite_errors_map_to_the_store_errors() -> None:
    def error(code: int) -> sqlite3.Error:
        exc = sqlite3.OperationalError("x")
        exc.sqlite_errorcode = code  # type: ignore[attr-defined]
        return exc

    assert isinstance(store_module.store_error(error(5), "w"), StoreUnavailable)  # BUSY
    assert isinstance(store_module.store_error(error(13), "w"), StoreUnavailable)  # FULL
    assert isinstance(store_module.store_error(error(10 | 12 << 8), "w"), StoreUnavailable)
    assert isinstance(store_module.store_error(error(11), "w"), SchemaError)  # CORRUPT
    assert type(store_module.store_error(error(1), "w")) is StoreError


async def test_a_path_with_uri_characters_is_opened_exactly(tmp_path: Path) -> None:
    odd = tmp_path / "a#b?c%20d"
    odd.mkdir()
    store = await open_store(odd)
    try:
        await store.append_one(peer_event(1))
        assert await store.query("SELECT count(*) FROM events") == [(2,)]
        assert (await store.load_stream((await store.read(2, 2))[0].stream)).version == 1
    finally:
        await store.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a#b?c%20d"]


async def test_close_closes_even_when_cancelled_while_a_signer_hangs(tmp_path: Path) -> None:
    class Hanging(InProcessSigner):
        hang = False

        async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
            if self.hang:
                await asyncio.Event().wait()
            return await super().sign_entry_hashes(hashes)

    signer = Hanging.from_seed(SEED)
    store = await open_store(tmp_path, signer)
    signer.hang = True
    stuck = asyncio.ensure_future(store.append_one(peer_event(1)))
    await asyncio.sleep(0.05)
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(store.close(), 0.2)
    with pytest.raises(StoreClosed):
        await stuck
    with pytest.raises(StoreClosed):
        await store.append_one(peer_event(2))
    assert store._conn is None
    assert count_events(tmp_path / "openred.db") == 1
