"""Verify relies only on what it reads from the table rows, and on a schema that is the store's.

Each attack here leaves every row a reader of the *table* sees intact or consistently forged,
and hides its lie in an object SQLite consults instead of the rows: a stale covering index, a
trigger, a view, a renamed table. Verify must refuse each one, and — with the schema check
taken away — must still refuse the forged key history and the forged projections, because it
never uses a fact its own chain pass did not read.
"""

from __future__ import annotations

import asyncio
import shutil
import sqlite3
from pathlib import Path
from typing import Any

import pytest

import audit_tools.verify as verify_module
from audit_tools.schema import expected_schema, normalize_sql, schema_differences
from audit_tools.verify import Report, verify
from openred.crypto.identity import EntryHash
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.codec import canonical_json
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.audit_tools.test_verify_tamper import assert_cli_tampered, execute, unconstrained
from tests.store.history import peer_event, session_events
from tests.vectors import make_fixtures as mf

OWNER = InProcessSigner.from_seed(b"\x31" * 32)
ATTACKER = InProcessSigner.from_seed(b"\x32" * 32)
RANGE = 16
SIZE = 80
FORGED_FROM = 2 * RANGE + 1  # the first entry of the third parallel range


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("reads") / "openred.db"

    async def build() -> None:
        store = await SQLiteEventStore.open(
            path, OWNER, registry=node_registry(), projections=node_projections(),
            checkpoint_every=10, checkpoint_interval=0,
        )
        try:
            await store.append([peer_event(i) for i in range(10)])
            i = 0
            while store.head.size < SIZE - 4:
                await store.append(session_events(i, expire=i % 2 == 0))
                i += 1
            await store.append([peer_event(50 + j) for j in range(SIZE - store.head.size)])
        finally:
            await store.close()

    asyncio.run(build())
    return path


@pytest.fixture
def small_ranges(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(verify_module, "RANGE_SIZE", RANGE)
    monkeypatch.setattr(verify_module, "PARALLEL_THRESHOLD", 50)


def copy(log: Path, tmp_path: Path) -> Path:
    db = tmp_path / "openred.db"
    shutil.copyfile(log, db)
    return db


def failed(report: Report) -> tuple[int, int | None, str]:
    assert not report.ok
    step = next(s.number for s in report.steps if s.status == "failed")
    return step, report.failed_seq, report.reason


def without_schema_check(monkeypatch: pytest.MonkeyPatch) -> None:
    """Take the schema check away, to show the other checks do not lean on the schema."""
    monkeypatch.setattr(verify_module, "_check_schema", lambda source, kind: None)
    monkeypatch.setattr(verify_module, "_schema_note", lambda source: "")


# -- the key history comes from the rows the chain pass read --------------------------------


def stale_index(db: Path, seq: int, type_: str, payload: bytes) -> None:
    """Leave a covering index on ``type`` that says entry ``seq`` is ``type_``/``payload``.

    The index is written while the row briefly says so, detached while the row is put back,
    and attached again: a stale index, which SQLite's quick_check does not compare with the
    table, and which SQLite uses to answer a query on ``type``.
    """
    conn = sqlite3.connect(db, isolation_level=None)
    original = conn.execute("SELECT type, payload FROM events WHERE seq = ?", (seq,)).fetchone()
    conn.execute("CREATE INDEX events_by_type ON events (type, seq, payload)")
    conn.close()
    execute(db, ("UPDATE events SET type = ?, payload = ? WHERE seq = ?", (type_, payload, seq)))
    conn = sqlite3.connect(db, isolation_level=None)
    entry = conn.execute("SELECT type, name, tbl_name, rootpage, sql FROM sqlite_master "
                         "WHERE name = 'events_by_type'").fetchone()
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("DELETE FROM sqlite_master WHERE name = 'events_by_type'")
    conn.close()
    execute(db, ("UPDATE events SET type = ?, payload = ? WHERE seq = ?", (*original, seq)))
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("INSERT INTO sqlite_master (type, name, tbl_name, rootpage, sql) "
                 "VALUES (?, ?, ?, ?, ?)", entry)
    conn.close()


def forge_tail_behind_a_stale_index(db: Path) -> None:
    """Re-sign entries FORGED_FROM.. with the attacker's key, and hide a handover in an index.

    No ``KeyRotated`` is in the table: the chain never hands the log to the attacker; only a
    stale index says it does. Entry hashes are unchanged, so links and Merkle roots still hold;
    the owner's checkpoints past the forged point are removed.
    """
    handover = FORGED_FROM - 1
    conn = sqlite3.connect(db, isolation_level=None)
    forged_sigs = [
        (ATTACKER.sign_entry_hashes_sync([EntryHash(bytes(h))])[0], seq)
        for seq, h in conn.execute("SELECT seq, entry_hash FROM events WHERE seq >= ?",
                                   (FORGED_FROM,))
    ]
    conn.close()
    rotation = canonical_json({"old_key": OWNER.sign_key.b64url(),
                               "new_key": ATTACKER.sign_key.b64url()})
    stale_index(db, handover, "KeyRotated", rotation)
    execute(db, *(("UPDATE events SET signature = ? WHERE seq = ?", row) for row in forged_sigs),
            ("DELETE FROM checkpoints WHERE size >= ?", (handover,)))


def test_a_stale_index_cannot_hand_the_log_to_another_key(
    log: Path, tmp_path: Path, small_ranges: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    db = copy(log, tmp_path)
    forge_tail_behind_a_stale_index(db)
    conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True)
    # The lie is real: a query SQLite answers from the index sees a handover the rows lack.
    indexed = conn.execute("SELECT seq FROM events WHERE type IN ('LogOpened', 'KeyRotated') "
                           "ORDER BY seq").fetchall()
    rows = conn.execute("SELECT seq FROM events NOT INDEXED WHERE type IN "
                        "('LogOpened', 'KeyRotated') ORDER BY seq").fetchall()
    assert indexed == [(1,), (FORGED_FROM - 1,)] and rows == [(1,)]
    assert conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
    conn.close()

    # The chain pass meets the forged signatures first; the index is named beside them.
    assert failed(verify(db, jobs=2)) == (
        4, FORGED_FROM, "signature does not verify; the database's schema is not the store's "
        "own either: index events_by_type on events is not part of the node log's schema")
    assert_cli_tampered(db, seq=FORGED_FROM)

    # Without the schema check, the chain pass still uses only the history it read: the third
    # range is checked under the owner's key the rows never handed over, and fails there.
    without_schema_check(monkeypatch)
    for jobs in (2, 1):
        report = verify(db, jobs=jobs)
        assert failed(report) == (4, FORGED_FROM, "signature does not verify"), jobs
        assert ATTACKER.sign_key.b64url() not in {k for _, k in report.keys}


async def test_the_pinned_key_is_compared_with_the_genesis_the_chain_pass_read(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # An attacker's own log of the same history, with a stale index claiming the owner's genesis:
    # a key read through the index would pass --key OWNER.
    owner_log = await mf.build_closed_log(tmp_path / "owner.db")
    db = await mf.build_closed_log(tmp_path / "openred.db", seed=mf.ATTACKER_SEED)
    conn = sqlite3.connect(owner_log)
    owner_genesis = conn.execute("SELECT payload FROM events WHERE seq = 1").fetchone()[0]
    conn.close()
    stale_index(db, 1, "LogOpened", owner_genesis)
    execute(db, "DELETE FROM checkpoints")  # signed by the attacker's key under its own origin
    owner = InProcessSigner.from_seed(mf.OWNER_SEED).sign_key
    without_schema_check(monkeypatch)
    for pin in ({"key": owner}, {"node_id": owner.node_id}):
        step, seq, reason = failed(verify(db, jobs=1, **pin))
        assert (step, seq) == (2, 1), reason
        assert "is not the expected key" in reason or f"not {owner.node_id}" in reason


def test_a_wrong_guess_of_a_range_key_is_checked_again_with_the_key_the_rows_hand_over(
    log: Path, small_ranges: None, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Every parallel range after the first starts from a guessed key; a wrong guess (here, the
    # attacker's key for every range) must cost a second look, never a wrong verdict.
    monkeypatch.setattr(verify_module, "_key_guesses",
                        lambda source, n: [(1, ATTACKER.sign_key)])
    report = verify(log, jobs=2)
    assert report.ok, report.reason
    assert report.workers == 2 and report.entries == SIZE
    assert report.keys == [(1, OWNER.sign_key.b64url())]


def test_the_count_is_the_rows_the_chain_pass_read(
    log: Path, tmp_path: Path, small_ranges: None,
) -> None:
    # A row far past the end is read and named where it breaks the sequence, whatever a
    # count said; in parallel the last range reads every row above it.
    db = copy(log, tmp_path)
    execute(db, ("INSERT INTO events SELECT seq + 1000, stream || 'x', stream_version, type, "
                 "schema_version, recorded_at, payload, prev_hash, entry_hash, signature FROM "
                 "events WHERE seq = 5", ()))
    for jobs in (1, 2):
        assert failed(verify(db, jobs=jobs)) == (
            3, SIZE + 1, f"sequence broken: expected seq {SIZE + 1}, got 1005"), jobs


# -- the schema is the store's own ------------------------------------------------------------


@pytest.mark.parametrize(("statements", "named"), [
    (["CREATE TRIGGER audit_me AFTER INSERT ON peers BEGIN SELECT 1; END"],
     "trigger audit_me on peers is not part of the node log's schema"),
    (["CREATE INDEX events_seq_desc ON events (seq DESC)"],
     "index events_seq_desc on events is not part of the node log's schema"),
    (["CREATE INDEX events_partial ON events (type) WHERE seq > 10"],
     "index events_partial on events is not part of the node log's schema"),
    (["CREATE VIEW v_events AS SELECT * FROM events"],
     "view v_events is not part of the node log's schema"),
    (["CREATE TABLE extra (x)"], "table extra is not part of the node log's schema"),
    (["DROP TRIGGER events_no_update"],
     "trigger events_no_update on events of the node log's schema is missing"),
    (["ALTER TABLE inbox ADD COLUMN note TEXT"],
     "table inbox differs from the definition the migrations create"),
    (["ALTER TABLE peers RENAME TO peers_real",
      "CREATE VIEW peers AS SELECT * FROM peers_real"],
     "table peers_real is not part of the node log's schema"),
])
def test_any_schema_object_that_is_not_the_stores_own_fails_named(
    log: Path, tmp_path: Path, statements: list[str], named: str,
) -> None:
    db = copy(log, tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    for statement in statements:
        conn.execute(statement)
    conn.close()
    step, seq, reason = failed(verify(db, jobs=1))
    assert (step, seq) == (1, None)
    assert reason.startswith(f"schema: {named}"), reason
    assert_cli_tampered(db)


def test_a_view_standing_in_for_the_events_table_is_named(log: Path, tmp_path: Path) -> None:
    db = copy(log, tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("ALTER TABLE events RENAME TO events_real")
    conn.execute("CREATE VIEW events AS SELECT * FROM events_real WHERE seq <> 5")
    conn.close()
    step, seq, reason = failed(verify(db, jobs=1))
    assert (step, seq) == (1, None)
    assert reason.endswith("events is a view, not the log's table: the schema is not the "
                           "store's own"), reason
    assert_cli_tampered(db)


def test_duplicate_and_null_rows_in_an_unconstrained_table_are_named_where_they_stand(
    log: Path, tmp_path: Path,
) -> None:
    db = unconstrained(log, tmp_path / "u.db")
    execute(db, "INSERT INTO events SELECT * FROM events WHERE seq = 7")
    step, seq, reason = failed(verify(db, jobs=1))
    assert (step, seq) == (3, 8)
    assert reason.startswith("sequence broken: expected seq 8, got 7; the database's schema is "
                             "not the store's own either: table events differs"), reason
    db = unconstrained(log, tmp_path / "n.db")
    execute(db, "INSERT INTO events (seq) VALUES (NULL)")
    step, seq, reason = failed(verify(db, jobs=1))
    assert (step, seq) == (3, SIZE + 1)
    assert reason.startswith("malformed row: seq is NoneType, not an integer"), reason


def test_a_table_definition_rewritten_in_place_fails(log: Path, tmp_path: Path) -> None:
    # The CHECK constraints dropped from the text SQLite parses: same rows, weaker table.
    db = copy(log, tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    sql = conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'").fetchone()[0]
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET sql = ? WHERE name = 'events'",
                 (sql.replace("CHECK (stream_version >= 1)", ""),))
    conn.close()
    assert failed(verify(db, jobs=1)) == (
        1, None, "schema: table events differs from the definition the migrations create")


def test_a_table_renamed_and_back_is_the_same_schema(log: Path, tmp_path: Path) -> None:
    # SQLite then quotes the name in every definition that names it: same schema, other text.
    db = copy(log, tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("ALTER TABLE events RENAME TO events_real")
    conn.execute("ALTER TABLE events_real RENAME TO events")
    assert '"events"' in conn.execute("SELECT sql FROM sqlite_master WHERE name = 'events'"
                                      ).fetchone()[0]
    conn.close()
    report = verify(db, jobs=1)
    assert report.ok, report.reason


def test_a_temp_trigger_never_reaches_the_file(log: Path, tmp_path: Path) -> None:
    db = copy(log, tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("CREATE TEMP TRIGGER t AFTER INSERT ON peers BEGIN SELECT 1; END")
    report = verify(db, jobs=1)  # while the connection that made it is still open
    conn.close()
    assert report.ok, report.reason


def test_the_expected_schema_is_the_migrations_and_whitespace_does_not_matter(
    log: Path,
) -> None:
    names = {(o.type, o.name) for o in expected_schema("node")}
    assert {("table", "events"), ("trigger", "events_no_update"), ("table", "inbox"),
            ("table", "alembic_version")} <= names
    conn = sqlite3.connect(f"file:{log}?mode=ro", uri=True)
    assert schema_differences(conn, "node") == []
    conn.close()
    assert normalize_sql("CREATE  TABLE\n \"t\" (a  TEXT DEFAULT 'x  y', [b c] INT)") == \
        "CREATE TABLE t (a TEXT DEFAULT 'x  y', [b c] INT)"


# -- step 7 replays into a fresh database -----------------------------------------------------


def test_step_7_runs_nothing_of_the_file_it_checks(
    log: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A trigger that writes the forged inbox row again whenever peers are projected: a replay
    # inside a copy of the file would run it and agree with the forgery.
    db = copy(log, tmp_path)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("INSERT INTO inbox VALUES ('forged', 's', 'p', 1, 'AAAA', 't')")
    conn.execute("CREATE TRIGGER echo AFTER INSERT ON peers BEGIN INSERT OR IGNORE INTO inbox "
                 "VALUES ('forged', 's', 'p', 1, 'AAAA', 't'); END")
    conn.close()
    assert failed(verify(db, jobs=1))[2] == (
        "schema: trigger echo on peers is not part of the node log's schema")
    without_schema_check(monkeypatch)
    assert failed(verify(db, jobs=1)) == (
        7, None, "projection table inbox differs from a replay of the log")


def test_step_7_never_copies_the_file_under_test(
    log: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[str] = []
    real_connect = sqlite3.connect

    def spy(database: Any, *args: Any, **kwargs: Any) -> sqlite3.Connection:
        opened.append(str(database))
        return real_connect(database, *args, **kwargs)

    monkeypatch.setattr(sqlite3, "connect", spy)
    report = verify(log, jobs=1)
    assert report.ok, report.reason
    # The file is opened once, read-only; the replay's database is another, new file (no
    # in-memory copy of the file either).
    assert [p for p in opened if str(log) in p] == [f"file:{log}?mode=ro"]
    assert any(p.endswith("replay.db") for p in opened)
    assert not any(":memory:" in p for p in opened)
