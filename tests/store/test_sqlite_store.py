"""The SQLite event store: appends, chain, concurrency, append-only triggers, projections."""

from __future__ import annotations

import asyncio
import itertools
import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from openred.crypto.identity import Signature
from openred.errors import ConcurrencyConflict, ConfigurationError, StoreClosed, StoreError
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store import merkle
from openred.store.chain import check_chain
from openred.store.checkpoint import verify_checkpoint
from openred.store.events import NewEvent
from openred.store.projections import ProjectionRegistry, Upsert
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore, connect
from tests.store.history import peer_event, session_events, store_tables


class FakeClock:
    def __init__(self) -> None:
        self.now = datetime(2026, 11, 25, 12, 0, tzinfo=UTC)

    def __call__(self) -> datetime:
        self.now += timedelta(milliseconds=1)
        return self.now


async def open_store(path: Path, signer: InProcessSigner, **kw: object) -> SQLiteEventStore:
    return await SQLiteEventStore.open(
        path, signer, registry=node_registry(), projections=node_projections(),
        clock=FakeClock(), checkpoint_interval=0, **kw,  # type: ignore[arg-type]
    )


@pytest.fixture
def signer() -> InProcessSigner:
    return InProcessSigner.from_seed(b"\x07" * 32)


async def test_new_log_starts_with_log_opened_naming_the_key(tmp_path: Path,
                                                             signer: InProcessSigner) -> None:
    store = await open_store(tmp_path, signer)
    try:
        (genesis,) = await store.read()
        assert genesis.seq == 1 and genesis.type == "LogOpened"
        assert signer.sign_key.b64url().encode() in genesis.payload
        assert genesis.prev_hash == bytes(32)
        signer.sign_key.verify(genesis.signature, genesis.entry_hash)
        assert store.origin == f"openred/{signer.sign_key.node_id}"
    finally:
        await store.close()


async def test_batch_append_is_chained_signed_and_readable(tmp_path: Path,
                                                           signer: InProcessSigner) -> None:
    store = await open_store(tmp_path, signer)
    try:
        events = [peer_event(i) for i in range(50)]
        stored = await store.append(events)
        assert [e.seq for e in stored] == list(range(2, 52))
        everything = await store.read()
        checker = check_chain(everything, expected_key=signer.sign_key)
        assert checker.count == 51
        assert store.head.size == 51 and store.head.entry_hash == everything[-1].entry_hash
        assert await store.root() == merkle.root_from_entry_hashes(
            [e.entry_hash for e in everything]
        )
    finally:
        await store.close()


async def test_reopen_continues_the_chain(tmp_path: Path, signer: InProcessSigner) -> None:
    store = await open_store(tmp_path, signer)
    await store.append([peer_event(1)])
    await store.close()
    store = await open_store(tmp_path, signer)
    try:
        await store.append([peer_event(2)])
        assert check_chain(await store.read()).count == 3
    finally:
        await store.close()


async def test_reopen_with_another_key_is_refused(tmp_path: Path, signer: InProcessSigner) -> None:
    store = await open_store(tmp_path, signer)
    await store.close()
    with pytest.raises(ConfigurationError, match="signed by key"):
        await open_store(tmp_path, InProcessSigner.generate())


async def test_stale_writer_gets_a_concurrency_conflict(tmp_path: Path,
                                                        signer: InProcessSigner) -> None:
    store = await open_store(tmp_path, signer)
    try:
        await store.append([NewEvent("node:x", "PeerDiscovered", peer_event(1).payload,
                                     expected_version=0)])
        with pytest.raises(ConcurrencyConflict):
            await store.append([NewEvent("node:x", "PeerDiscovered", peer_event(1).payload,
                                         expected_version=0)])
        # Nothing of the failed batch was written, and the store keeps working.
        assert store.head.size == 2
        await store.append([NewEvent("node:x", "PeerDiscovered", peer_event(1).payload,
                                     expected_version=1)])
        assert store.head.size == 3
    finally:
        await store.close()


async def test_unique_constraint_backs_concurrency_across_writers(
    tmp_path: Path, signer: InProcessSigner
) -> None:
    first = await open_store(tmp_path, signer)
    second = await open_store(tmp_path, signer)
    try:
        await first.append([NewEvent("node:y", "PeerDiscovered", peer_event(1).payload,
                                     expected_version=0)])
        # The second writer's head is stale: it re-chains after the first writer's entry and
        # its stale expected_version is refused, never silently overwritten.
        with pytest.raises(ConcurrencyConflict):
            await second.append([NewEvent("node:y", "PeerDiscovered", peer_event(2).payload,
                                          expected_version=0)])
        await second.append([peer_event(3)])
        assert check_chain(await first.read()).count == 3
    finally:
        await first.close()
        await second.close()


async def test_events_table_refuses_update_and_delete(tmp_path: Path,
                                                      signer: InProcessSigner) -> None:
    store = await open_store(tmp_path, signer)
    await store.append([peer_event(1)])
    await store.close()
    conn = connect(tmp_path / "openred.db")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("UPDATE events SET type = 'x' WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM events WHERE seq = 2")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        conn.execute("DELETE FROM checkpoints")
    conn.close()


async def test_store_writes_log_opened_and_rotation_itself(tmp_path: Path,
                                                           signer: InProcessSigner) -> None:
    store = await open_store(tmp_path, signer)
    try:
        with pytest.raises(StoreError):
            await store.append([NewEvent("log", "LogOpened", {})])
    finally:
        await store.close()
    with pytest.raises(StoreClosed):
        await store.append([peer_event(1)])


async def test_key_rotation_is_signed_by_old_and_new_key(tmp_path: Path,
                                                         signer: InProcessSigner) -> None:
    new = InProcessSigner.from_seed(b"\x08" * 32)
    store = await open_store(tmp_path, signer)
    await store.append([peer_event(1)])
    rotated = await store.rotate_key(new)
    after = await store.append([peer_event(2)])
    await store.close()
    signer.sign_key.verify(rotated.signature[:64], rotated.entry_hash)
    new.sign_key.verify(rotated.signature[64:], rotated.entry_hash)
    new.sign_key.verify(after[0].signature, after[0].entry_hash)
    store = await open_store(tmp_path, new)  # the log now belongs to the new key
    try:
        checker = check_chain(await store.read(), expected_key=signer.sign_key)
        assert [k.key for k in checker.key_history] == [signer.sign_key, new.sign_key]
        assert store.origin == f"openred/{signer.sign_key.node_id}"
    finally:
        await store.close()
    with pytest.raises(ConfigurationError):
        await open_store(tmp_path, signer)


async def test_checkpoints_are_signed_every_n_entries(tmp_path: Path,
                                                      signer: InProcessSigner) -> None:
    store = await open_store(tmp_path, signer, checkpoint_every=10)
    try:
        for i in range(25):
            await store.append([peer_event(i)])
        rows = await store.query("SELECT size, note FROM checkpoints ORDER BY size")
        sizes = [r[0] for r in rows]
        assert sizes[0] == 1 and all(b - a >= 10 for a, b in itertools.pairwise(sizes[1:]))
        assert sizes[-1] >= 20
        for size, note in rows:
            cp = verify_checkpoint(bytes(note), store.origin, signer.sign_key)
            assert cp.size == size
            hashes = [e.entry_hash for e in await store.read(1, size)]
            assert cp.root_hash == merkle.root_from_entry_hashes(hashes)
    finally:
        await store.close()
    # close() signs the head so no entry is left outside a checkpoint.
    conn = connect(tmp_path / "openred.db")
    assert conn.execute("SELECT max(size) FROM checkpoints").fetchone()[0] == 26
    conn.close()


async def test_proofs_from_the_store_verify(tmp_path: Path, signer: InProcessSigner) -> None:
    store = await open_store(tmp_path, signer)
    try:
        await store.append([peer_event(i) for i in range(20)])
        old_root = merkle.root_from_entry_hashes([e.entry_hash for e in await store.read(1, 7)])
        size, path = await store.inclusion_proof(5)
        event = (await store.read(5, 5))[0]
        merkle.verify_inclusion(4, size, event.entry_hash, path, await store.root())
        size, proof = await store.consistency_proof(7)
        merkle.verify_consistency(7, size, old_root, await store.root(), proof)
        with pytest.raises(StoreError):
            await store.inclusion_proof(999)
    finally:
        await store.close()


async def test_projections_follow_appends_and_rebuild_identically(
    tmp_path: Path, signer: InProcessSigner
) -> None:
    store = await open_store(tmp_path, signer)
    try:
        await store.append([peer_event(i) for i in range(3)])
        await store.append(session_events(0))
        await store.append(session_events(1, expire=True))
        peers = await store.query("SELECT node_id FROM peers")
        assert len(peers) == 3
        sessions = dict(await store.query("SELECT session_id, state FROM sessions"))
        assert sorted(sessions.values()) == ["active", "expired"]
        assert await store.query("SELECT count(*) FROM tokens") == [(0,)]
        assert await store.query("SELECT count(*) FROM inbox") == [(2,)]
        before = await store_tables(store, store.projections.tables())
        positions = dict(await store.query("SELECT name, position FROM projection_positions"))
        assert set(positions.values()) == {store.head.size}
        replayed = await store.rebuild_projections()
        assert replayed == store.head.size
        assert await store_tables(store, store.projections.tables()) == before
    finally:
        await store.close()


async def test_projection_added_later_catches_up_on_open(tmp_path: Path,
                                                         signer: InProcessSigner) -> None:
    store = await SQLiteEventStore.open(tmp_path, signer, registry=node_registry(),
                                        checkpoint_interval=0)
    await store.append([peer_event(i) for i in range(4)])
    await store.close()
    store = await open_store(tmp_path, signer)
    try:
        assert await store.query("SELECT count(*) FROM peers") == [(4,)]
    finally:
        await store.close()


async def test_open_refuses_a_missing_directory(tmp_path: Path, signer: InProcessSigner) -> None:
    with pytest.raises(ConfigurationError):
        await open_store(tmp_path / "nope" / "x.db", signer)


async def test_a_timer_signs_a_checkpoint_when_entries_wait(tmp_path: Path,
                                                            signer: InProcessSigner) -> None:
    store = await SQLiteEventStore.open(tmp_path, signer, registry=node_registry(),
                                        checkpoint_every=1000, checkpoint_interval=0.05)
    try:
        await store.append([peer_event(1)])
        before = await store.query("SELECT max(size) FROM checkpoints")
        for _ in range(100):
            await asyncio.sleep(0.02)
            if await store.query("SELECT max(size) FROM checkpoints") != before:
                break
        assert await store.query("SELECT max(size) FROM checkpoints") == [(2,)]
    finally:
        await store.close()


async def test_projection_with_a_bad_identifier_is_refused(tmp_path: Path,
                                                           signer: InProcessSigner) -> None:
    class Evil:
        name = "evil"
        tables = ("peers",)
        handles = frozenset({"PeerDiscovered"})

        def apply(self, event: object) -> list[Upsert]:
            return [Upsert("peers; DROP TABLE events", ("node_id",), {"node_id": "x"})]

    store = await SQLiteEventStore.open(tmp_path, signer, registry=node_registry(),
                                        projections=ProjectionRegistry([Evil()]),
                                        checkpoint_interval=0)
    try:
        with pytest.raises(StoreError, match="invalid SQL identifier"):
            await store.append([peer_event(1)])
        # The refused batch left nothing behind.
        assert store.head.size == 1
        assert len(await store.read()) == 1
    finally:
        await store.close()


async def test_streams_unknown_to_this_process_get_their_true_next_version(
    tmp_path: Path, signer: InProcessSigner
) -> None:
    store = await open_store(tmp_path, signer)
    await store.append([NewEvent("node:z", "PeerDiscovered", peer_event(1).payload)] * 2)
    await store.close()
    store = await open_store(tmp_path, signer)  # a fresh process knows no stream versions
    try:
        (third,) = await store.append([NewEvent("node:z", "PeerDiscovered",
                                                peer_event(1).payload)])
        assert third.stream_version == 3
        (fourth,) = await store.append([NewEvent("node:z", "PeerDiscovered",
                                                 peer_event(1).payload, expected_version=3)])
        assert fourth.stream_version == 4
        with pytest.raises(ConcurrencyConflict):
            await store.append([NewEvent("node:z", "PeerDiscovered", peer_event(1).payload,
                                         expected_version=2)])
    finally:
        await store.close()
    other = await open_store(tmp_path, signer)
    try:
        with pytest.raises(ConcurrencyConflict):
            await other.append([NewEvent("node:z", "PeerDiscovered", peer_event(1).payload,
                                         expected_version=9)])
        assert check_chain(await other.read()).count == 5
    finally:
        await other.close()


async def test_the_checkpoint_timer_survives_a_signer_that_is_briefly_away(
    tmp_path: Path, signer: InProcessSigner, caplog: pytest.LogCaptureFixture
) -> None:
    from openred.errors import JailUnavailable

    class Flaky(InProcessSigner):
        away = False

        async def sign_checkpoint(self, note_body: bytes) -> Signature:
            if self.away:
                raise JailUnavailable("the jail is restarting")
            return await super().sign_checkpoint(note_body)

    flaky = Flaky.from_seed(b"\x07" * 32)
    store = await SQLiteEventStore.open(tmp_path, flaky, registry=node_registry(),
                                        checkpoint_every=1000, checkpoint_interval=0.03)
    try:
        flaky.away = True
        await store.append([peer_event(1)])
        await asyncio.sleep(0.1)
        assert "will retry" in caplog.text
        flaky.away = False
        for _ in range(100):
            await asyncio.sleep(0.02)
            if await store.query("SELECT max(size) FROM checkpoints") == [(2,)]:
                break
        assert await store.query("SELECT max(size) FROM checkpoints") == [(2,)]
    finally:
        await store.close()
