"""The store refuses a log file that carries SQL or schema objects of its own.

A process that once ran with the node's uid (a parser bug, a malicious module) can leave
objects in the database file that outlive it: a trigger runs on every write the node itself
makes, long after the node was restarted from a known-good build. These tests plant each one in
a real file while the store is closed, as that process would, and open the store again.
"""

from __future__ import annotations

import asyncio
import hashlib
import sqlite3
from pathlib import Path

import pytest
from alembic import command
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from openred.errors import SchemaError
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store import migrate
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.store.history import peer_event

SIGNER = InProcessSigner.from_seed(b"\x52" * 32)


async def open_node_store(path: Path) -> SQLiteEventStore:
    return await SQLiteEventStore.open(path, SIGNER, registry=node_registry(),
                                       projections=node_projections(), checkpoint_interval=0)


@pytest.fixture(scope="module")
def honest(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a closed node log holding a few peers."""
    path = tmp_path_factory.mktemp("honest") / "openred.db"

    async def build() -> None:
        store = await open_node_store(path)
        try:
            await store.append([peer_event(i) for i in range(3)])
        finally:
            await store.close()

    asyncio.run(build())
    return path.read_bytes()


PLANTED = {
    # A peer's keys and URL, rewritten as the node records the peer: its next handshake with
    # that peer would run against the attacker's static key, at the attacker's address.
    "trigger-rewrites-peer-keys": (
        "CREATE TRIGGER keep AFTER INSERT ON peers BEGIN UPDATE peers SET box_key = "
        "'AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA', api_url = 'http://attacker.example' "
        "WHERE node_id = NEW.node_id; END",
        "trigger keep on peers is not part of the node log's schema"),
    # The directory checkpoint a fork is detected against, forgotten as soon as it is held.
    "trigger-forgets-directory-checkpoint": (
        "CREATE TRIGGER keep AFTER INSERT ON directory_checkpoint BEGIN "
        "DELETE FROM directory_checkpoint; END",
        "trigger keep on directory_checkpoint is not part of the node log's schema"),
    # A consumed grant's outcome, dropped as it is recorded.
    "trigger-forgets-consumed-grants": (
        "CREATE TRIGGER keep AFTER INSERT ON grant_outcomes BEGIN "
        "DELETE FROM grant_outcomes WHERE grant_id = NEW.grant_id; END",
        "trigger keep on grant_outcomes is not part of the node log's schema"),
    "trigger-on-the-log": (
        "CREATE TRIGGER keep AFTER INSERT ON events BEGIN DELETE FROM peers; END",
        "trigger keep on events is not part of the node log's schema"),
    "view": ("CREATE VIEW recent AS SELECT * FROM events WHERE seq > 1",
             "view recent is not part of the node log's schema"),
    "index-steering-the-planner": ("CREATE INDEX by_type ON events (type)",
                                   "index by_type on events is not part of the node log's schema"),
    "planner-statistics": ("ANALYZE",
                           "table sqlite_stat1 is not part of the node log's schema"),
}


@pytest.mark.parametrize("name", sorted(PLANTED))
def test_a_file_carrying_foreign_schema_objects_is_refused_at_open(
    honest: bytes, tmp_path: Path, name: str
) -> None:
    statement, named = PLANTED[name]
    db = tmp_path / "openred.db"
    db.write_bytes(honest)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute(statement)
    conn.close()
    planted = hashlib.sha256(db.read_bytes()).digest()
    with pytest.raises(SchemaError, match=named):
        asyncio.run(open_node_store(tmp_path))
    # Refused before anything was written: no genesis, no catch-up, no migration, no checkpoint.
    assert hashlib.sha256(db.read_bytes()).digest() == planted


def migrate_to(db: Path, revision: str) -> None:
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(db), poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = migrate._config()
            config.attributes["connection"] = connection
            try:
                command.upgrade(config, revision)
            finally:
                config.attributes.pop("connection", None)
    finally:
        engine.dispose()


def test_a_trigger_in_an_older_database_never_runs_during_its_migration(tmp_path: Path) -> None:
    # Migrations write to the file (alembic_version, rebuilt tables): a trigger planted in a
    # database the store still has to migrate would run right there, before any later check.
    db = tmp_path / "openred.db"
    migrate_to(db, "0002")
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TABLE ran (x)")
    conn.execute("CREATE TRIGGER keep AFTER UPDATE ON alembic_version BEGIN "
                 "INSERT INTO ran VALUES (1); END")
    conn.close()
    with pytest.raises(SchemaError, match="trigger keep on alembic_version is not part"):
        asyncio.run(open_node_store(tmp_path))
    conn = sqlite3.connect(db)
    try:
        assert conn.execute("SELECT version_num FROM alembic_version").fetchall() == [("0002",)]
        assert conn.execute("SELECT count(*) FROM ran").fetchone() == (0,)
    finally:
        conn.close()


def test_an_honest_file_still_opens(honest: bytes, tmp_path: Path) -> None:
    (tmp_path / "openred.db").write_bytes(honest)

    async def reopen() -> int:
        store = await open_node_store(tmp_path)
        try:
            return (await store.append([peer_event(9)]))[0].seq
        finally:
            await store.close()

    assert asyncio.run(reopen()) == 5
