"""Attacks on a signed log: each must make `verify` fail at the right seq and the CLI exit 1.

The attacker has the database file and SQLite: the append-only triggers only stop honest code,
so each attack works on a copy with the triggers dropped (and, for the field-by-field attack, the
``events`` table rebuilt without constraints or column affinity, so any value of any type can be
written). What the attacker does not have is the owner's signing key.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from audit_tools.cli import main as cli_main
from audit_tools.replay import replay
from audit_tools.source import SQLiteSource
from audit_tools.verify import Report, verify
from openred.crypto.identity import EntryHash, SignKey, from_b64url
from openred.store.chain import UnsignedEntry, chain_entries, genesis_event, rotation_event
from openred.store.checkpoint import Checkpoint, sign_checkpoint
from openred.store.events import NewEvent
from openred.store.signer import InProcessSigner
from openred.store.sqlite import read_events
from tests.conftest import REPO_ROOT
from tests.store.history import peer_event, session_events
from tests.vectors import make_fixtures as mf

EVENT_COLUMNS = (
    "seq", "stream", "stream_version", "type", "schema_version", "recorded_at",
    "payload", "prev_hash", "entry_hash", "signature",
)
TRIGGERS = ("events_no_update", "events_no_delete", "checkpoints_no_update",
            "checkpoints_no_delete")
VECTORS = Path(__file__).resolve().parents[1] / "vectors"

OWNER = InProcessSigner.from_seed(mf.OWNER_SEED)
ROTATED = InProcessSigner.from_seed(mf.ROTATED_SEED)
ATTACKER = InProcessSigner.from_seed(mf.ATTACKER_SEED)
N = mf.HISTORY_SIZE


# -- building logs and attacker copies -------------------------------------------------------


@dataclass(frozen=True)
class Logs:
    main: Path          # the owner's 24-entry log
    attacker: Path      # a copy of it with no triggers and an unconstrained events table
    saved_note: bytes   # the newest checkpoint of ``main``, as an auditor saved it
    rows: list[tuple[Any, ...]]


def run(coro: Any) -> Any:
    return asyncio.run(coro)


def attacker_copy(src: Path, dst: Path) -> Path:
    """A copy for an attacker to edit with :func:`execute` (which lifts and restores triggers)."""
    shutil.copyfile(src, dst)
    return dst


def without_triggers(src: Path, dst: Path) -> Path:
    """Copy a database and drop its append-only triggers for good."""
    shutil.copyfile(src, dst)
    conn = sqlite3.connect(dst, isolation_level=None)
    for name in TRIGGERS:
        conn.execute(f"DROP TRIGGER {name}")
    conn.close()
    return dst


def unconstrained(src: Path, dst: Path) -> Path:
    """A copy whose events table has no triggers, constraints or column types."""
    without_triggers(src, dst)
    conn = sqlite3.connect(dst, isolation_level=None)
    conn.execute("BEGIN")
    conn.execute("ALTER TABLE events RENAME TO events_signed")
    conn.execute(f"CREATE TABLE events ({', '.join(EVENT_COLUMNS)})")
    conn.execute(f"INSERT INTO events SELECT {', '.join(EVENT_COLUMNS)} FROM events_signed "
                 "ORDER BY seq")
    conn.execute("DROP TABLE events_signed")
    conn.execute("COMMIT")
    conn.close()
    return dst


def execute(db: Path, *statements: tuple[str, tuple[Any, ...]] | str) -> None:
    """Run ``statements`` as an attacker would: lift the append-only triggers, edit, and put
    the triggers back exactly as they were, so the schema is the store's own again."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        triggers = conn.execute("SELECT name, sql FROM sqlite_master WHERE type = 'trigger'"
                                ).fetchall()
        for name, _sql in triggers:
            conn.execute(f"DROP TRIGGER {name}")
        for statement in statements:
            if isinstance(statement, str):
                conn.execute(statement)
            else:
                conn.execute(*statement)
        for _name, sql in triggers:
            conn.execute(sql)
    finally:
        conn.close()


def events_of(db: Path) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(db)
    try:
        return [tuple(r) for r in conn.execute("SELECT * FROM events ORDER BY seq")]
    finally:
        conn.close()


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Logs:
    tmp = tmp_path_factory.mktemp("logs")
    main = run(mf.build_closed_log(tmp / "main.db"))
    attacker = unconstrained(main, tmp / "attacker.db")
    return Logs(main, attacker, mf.latest_note(main), events_of(attacker))


def cli(*args: str | Path) -> Any:
    return CliRunner().invoke(cli_main, [str(a) for a in args])


def assert_tampered(report: Report, *, step: int, seq: int | None, reason: str) -> None:
    """verify said no, at ``step``, naming ``seq``, for a reason matching ``reason``."""
    failed = [s.number for s in report.steps if s.status == "failed"]
    assert not report.ok, report.to_json()
    assert failed == [step], (failed, report.reason)
    assert report.failed_seq == seq, (report.failed_seq, report.reason)
    assert re.search(reason, report.reason), report.reason


def assert_cli_tampered(path: Path, *args: str | Path, seq: int | None = None) -> None:
    result = cli("verify", path, *args)
    assert result.exit_code == 1, result.output
    assert "TAMPERED" in result.output
    if seq is not None:
        assert f"TAMPERED at seq {seq}:" in result.output
    assert "Traceback" not in result.output


# -- controls --------------------------------------------------------------------------------


def test_the_untouched_log_verifies_and_the_attackers_unconstrained_copy_does_not(
    logs: Logs,
) -> None:
    report = verify(logs.main, key=OWNER.sign_key, checkpoint=logs.saved_note, jobs=1)
    assert report.ok, report.reason
    assert report.entries == N
    assert [s.status for s in report.steps] == ["ok"] * 7
    assert report.keys == [(1, OWNER.sign_key.b64url()),
                           (mf.ROTATION_SEQ + 1, ROTATED.sign_key.b64url())]
    # Same rows, but an events table without constraints and no append-only triggers: every
    # entry checks out, and the schema alone gives it away — named.
    report = verify(logs.attacker, key=OWNER.sign_key, checkpoint=logs.saved_note, jobs=1)
    assert_tampered(report, step=1, seq=None,
                    reason="^schema: table events differs from the definition the migrations "
                           r"create \(and 5 more")
    result = cli("verify", logs.attacker, "--checkpoint", _saved(logs))
    assert result.exit_code == 1, result.output
    assert "TAMPERED: schema: table events differs" in result.output


def _saved(logs: Logs) -> Path:
    path = logs.main.with_name("saved.note")
    path.write_bytes(logs.saved_note)
    return path


# -- every field of every row ------------------------------------------------------------------


def mutations(value: Any) -> Iterator[tuple[str, Any]]:
    """Changed value, NULL, and the same value with the wrong SQLite type."""
    yield "null", None
    if isinstance(value, int):
        yield "plus one", value + 1
        yield "as text", str(value)
        yield "as real", float(value)
    elif isinstance(value, str):
        yield "one more char", value + "x"
        yield "as blob", value.encode()
    else:
        flipped = bytearray(value)
        flipped[len(flipped) // 2] ^= 0x01
        yield "one bit flipped", bytes(flipped)
        yield "as text", value.hex()
        yield "one byte shorter", value[:-1]


# What verify may say when this column of an entry changed: each reason names the real cause.
COLUMN_REASONS = {
    "seq": r"sequence broken: expected seq \d+|entry \d+ is missing|no genesis|"
           r"malformed row: seq is",
    "stream": r"entry_hash does not match|malformed row: stream is|first entry is not LogOpened",
    "stream_version": r"entry_hash does not match|malformed row: stream_version is",
    "type": r"entry_hash does not match|malformed row: type is|no genesis",
    "schema_version": r"entry_hash does not match|malformed row: schema_version is",
    "recorded_at": r"entry_hash does not match|malformed row: recorded_at is",
    "payload": r"entry_hash does not match|malformed row: payload is|names no valid key",
    "prev_hash": r"prev_hash does not match|malformed row: prev_hash is|wrong length",
    "entry_hash": r"entry_hash does not match|malformed row: entry_hash is|wrong length",
    "signature": r"signature does not verify|malformed row: signature is|"
                 r"signature has the wrong length|must carry two signatures",
}


@pytest.mark.parametrize("column", EVENT_COLUMNS)
def test_changing_any_field_of_any_entry_is_detected_at_that_entry(
    logs: Logs, column: str, tmp_path: Path
) -> None:
    index = EVENT_COLUMNS.index(column)
    image = logs.attacker.read_bytes()
    target = tmp_path / "mutated.db"
    checked = 0
    for row in logs.rows:
        seq = row[0]
        for label, value in mutations(row[index]):
            target.write_bytes(image)
            execute(target, (f"UPDATE events SET {column} = ? WHERE rowid = "
                             "(SELECT rowid FROM events WHERE seq = ?)", (value, seq)))
            report = verify(target, jobs=1)
            case = f"seq {seq} {column} {label}: {report.reason}"
            assert not report.ok, case
            assert report.failed_seq == seq, case
            assert re.search(COLUMN_REASONS[column], report.reason), case
            assert [s.status for s in report.steps].count("failed") == 1, case
            result = cli("verify", target)
            assert result.exit_code == 1, case
            assert f"TAMPERED at seq {seq}:" in result.output, case
            checked += 1
    assert checked >= 3 * N


# -- deleting, swapping, renumbering, truncating ---------------------------------------------


@pytest.mark.parametrize(("seq", "step", "reason"), [
    (1, 3, "sequence broken: expected seq 1, got 2"),
    (mf.ROTATION_SEQ, 3, "sequence broken: expected seq 9, got 10"),
    (12, 3, "sequence broken: expected seq 12, got 13"),
    (N, 5, f"its own checkpoint covers {N}: entries were removed"),
])
def test_deleting_an_entry_is_detected(logs: Logs, tmp_path: Path, seq: int, step: int,
                                       reason: str) -> None:
    db = attacker_copy(logs.main, tmp_path / "x.db")
    execute(db, ("DELETE FROM events WHERE seq = ?", (seq,)))
    assert_tampered(verify(db, jobs=1), step=step, seq=seq, reason=reason)
    assert_cli_tampered(db, seq=seq)


@pytest.mark.parametrize(("a", "b"), [(5, 6), (3, 20), (mf.ROTATION_SEQ, 10)])
def test_swapping_two_entries_contents_is_detected(logs: Logs, tmp_path: Path, a: int,
                                                   b: int) -> None:
    db = unconstrained(logs.main, tmp_path / "x.db")
    rest = EVENT_COLUMNS[1:]
    conn = sqlite3.connect(db, isolation_level=None)
    first = conn.execute(f"SELECT {', '.join(rest)} FROM events WHERE seq = ?", (a,)).fetchone()
    second = conn.execute(f"SELECT {', '.join(rest)} FROM events WHERE seq = ?", (b,)).fetchone()
    assignment = ", ".join(f"{c} = ?" for c in rest)
    conn.execute(f"UPDATE events SET {assignment} WHERE seq = ?", (*second, a))
    conn.execute(f"UPDATE events SET {assignment} WHERE seq = ?", (*first, b))
    conn.close()
    report = verify(db, jobs=1)
    assert_tampered(report, step=3, seq=a, reason="prev_hash does not match|entry_hash does not")
    assert_cli_tampered(db, seq=a)


def test_shifting_the_tail_up_leaves_a_gap_that_is_detected(logs: Logs, tmp_path: Path) -> None:
    db = attacker_copy(logs.main, tmp_path / "x.db")
    # Highest first, so the primary key never collides on the way.
    execute(db, "UPDATE events SET seq = -seq WHERE seq >= 15",
            "UPDATE events SET seq = 1 - seq WHERE seq < 0")
    assert [r[0] for r in events_of(db)][13:16] == [14, 16, 17]
    assert_tampered(verify(db, jobs=1), step=3, seq=15,
                    reason="sequence broken: expected seq 15, got 16")
    assert_cli_tampered(db, seq=15)


def test_closing_a_gap_by_renumbering_the_tail_is_detected(logs: Logs, tmp_path: Path) -> None:
    db = attacker_copy(logs.main, tmp_path / "x.db")
    execute(db, "DELETE FROM events WHERE seq = 15", "UPDATE events SET seq = seq - 1 "
            "WHERE seq > 15")
    assert [r[0] for r in events_of(db)] == list(range(1, N))
    assert_tampered(verify(db, jobs=1), step=3, seq=15, reason="prev_hash does not match")
    assert_cli_tampered(db, seq=15)


def test_a_seq_renumbered_far_past_the_end_is_a_missing_entry_not_a_resource_sink(
    logs: Logs, tmp_path: Path
) -> None:
    # max(seq) once sized the work: 2**40 meant a list of 2**26 ranges (MemoryError, or the OOM
    # killer) in verify and 2**28 queries in replay and prove.
    db = attacker_copy(logs.main, tmp_path / "x.db")
    execute(db, ("UPDATE events SET seq = ? WHERE seq = ?", (2**40, N)))
    assert_tampered(verify(db, jobs=1), step=3, seq=N,
                    reason=f"sequence broken: expected seq {N}, got {2**40}")
    assert_cli_tampered(db, seq=N)
    replayed = subprocess.run([sys.executable, "-m", "audit_tools", "replay", str(db)],
                              cwd=REPO_ROOT, capture_output=True, text=True, timeout=60,
                              check=False)
    assert replayed.returncode == 1 and f"tampered at seq {N}" in replayed.stderr


def test_truncating_the_tail_under_a_stored_checkpoint_is_detected(logs: Logs,
                                                                   tmp_path: Path) -> None:
    db = attacker_copy(logs.main, tmp_path / "x.db")
    execute(db, "DELETE FROM events WHERE seq > 20")
    assert_tampered(verify(db, jobs=1), step=5, seq=21,
                    reason=f"has 20 entries but its own checkpoint covers {N}")
    assert_cli_tampered(db, seq=21)


def test_truncation_that_also_removes_checkpoints_fails_against_a_saved_checkpoint(
    logs: Logs, tmp_path: Path
) -> None:
    # The thorough attacker: a complete, self-consistent log of the first 17 entries (with the
    # checkpoints up to 17 and projections rebuilt to match), exactly what replay --out writes.
    db = tmp_path / "short.db"
    source = SQLiteSource(logs.main)
    try:
        replay(source, 17, out=db)
    finally:
        source.close()
    alone = verify(db, jobs=1)
    # Nothing inside the shorter log betrays it: that is what a saved checkpoint is for.
    assert alone.ok and alone.entries == 17, alone.reason
    assert_tampered(verify(db, checkpoint=logs.saved_note, jobs=1), step=6, seq=18,
                    reason=f"has 17 entries but the given checkpoint covers {N}: truncated")
    assert_cli_tampered(db, "--checkpoint", _saved(logs), seq=18)


async def test_rolling_back_to_an_older_backup_fails_against_a_newer_checkpoint(
    tmp_path: Path,
) -> None:
    db = tmp_path / "node.db"
    store = await mf.build_log(db, mf.HISTORY[:4])
    await store.close()
    backup = tmp_path / "backup.db"
    shutil.copyfile(db, backup)
    store = await mf.open_store(db, ROTATED)
    await mf.apply_steps(store, mf.HISTORY[4:])
    await store.close()
    newer = mf.latest_note(db)
    assert verify(backup, jobs=1).ok and verify(db, checkpoint=newer, jobs=1).ok
    assert_tampered(verify(backup, checkpoint=newer, jobs=1), step=6, seq=15,
                    reason="has 14 entries but the given checkpoint covers 24: truncated or "
                           "rolled back")


async def test_a_fork_fails_against_the_other_branchs_checkpoint(tmp_path: Path) -> None:
    prefix = mf.HISTORY[:mf.FORK_PREFIX_STEPS]
    fork_a = await mf.build_closed_log(tmp_path / "a.db", [*prefix, *mf.fork_tail("A")])
    fork_b = await mf.build_closed_log(tmp_path / "b.db", [*prefix, *mf.fork_tail("B")])
    a_events, b_events = events_of(fork_a), events_of(fork_b)
    assert a_events[:16] == b_events[:16] and a_events[16] != b_events[16]
    note_a, note_b = mf.latest_note(fork_a), mf.latest_note(fork_b)
    # Each branch is a valid log signed by the same keys, and consistent with its own past.
    assert verify(fork_a, checkpoint=note_a, jobs=1).ok
    assert verify(fork_b, checkpoint=note_b, jobs=1).ok
    assert_tampered(verify(fork_b, checkpoint=note_a, jobs=1), step=6, seq=None,
                    reason="first 22 entries differ from the tree the given checkpoint "
                           "signed: the log was rewritten or forked")
    # Branch A is shorter than B's checkpoint: to its holder it looks cut short.
    assert_tampered(verify(fork_a, checkpoint=note_b, jobs=1), step=6, seq=23,
                    reason="has 22 entries but the given checkpoint covers 23")
    saved = tmp_path / "a.note"
    saved.write_bytes(note_a)
    assert_cli_tampered(fork_b, "--checkpoint", saved)


async def test_a_log_re_signed_by_another_key_fails_against_the_owners_key_and_checkpoint(
    logs: Logs, tmp_path: Path
) -> None:
    resigned = await mf.build_closed_log(
        tmp_path / "resigned.db", mf.history(mf.ATTACKER_ROTATED_SEED), seed=mf.ATTACKER_SEED)
    # A valid chain: same events, every hash and signature correct — for the wrong key.
    assert verify(resigned, jobs=1).ok
    owner_key = OWNER.sign_key
    assert_tampered(verify(resigned, key=owner_key, jobs=1), step=2, seq=1,
                    reason="is not the expected key")
    assert_tampered(verify(resigned, node_id=owner_key.node_id, jobs=1), step=2, seq=1,
                    reason=f"not {owner_key.node_id}")
    assert_tampered(verify(resigned, checkpoint=logs.saved_note, jobs=1), step=6, seq=None,
                    reason=f"the given checkpoint is for openred/{owner_key.node_id}")
    assert_cli_tampered(resigned, "--key", owner_key.b64url(), seq=1)
    assert_cli_tampered(resigned, "--node-id", owner_key.node_id, seq=1)
    assert_cli_tampered(resigned, "--checkpoint", _saved(logs))


# -- forged key history ----------------------------------------------------------------------


Signing = Callable[[UnsignedEntry], bytes]


def forge(db: Path, events: list[NewEvent], sign: Signing) -> None:
    """Chain ``events`` after the head of ``db`` and insert them with chosen signatures."""
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        head = list(read_events(conn))[-1]
        versions = {
            e.stream: int(conn.execute("SELECT coalesce(max(stream_version), 0) FROM events "
                                       "WHERE stream = ?", (e.stream,)).fetchone()[0])
            for e in events
        }
        unsigned = chain_entries(events, next_seq=head.seq + 1, prev_hash=head.entry_hash,
                                 stream_versions=versions, recorded_at=head.recorded_at)
        conn.executemany(f"INSERT INTO events ({', '.join(EVENT_COLUMNS)}) VALUES "
                         f"({', '.join('?' * 10)})",
                         [u.signed(sign(u)).as_row() for u in unsigned])
    finally:
        conn.close()


def by(*signers: InProcessSigner) -> Signing:
    def sign(entry: UnsignedEntry) -> bytes:
        return b"".join(s.sign_entry_hashes_sync([EntryHash(entry.entry_hash)])[0]
                        for s in signers)
    return sign


WRONG_OLD = InProcessSigner.from_seed(b"\x15" * 32)


@pytest.mark.parametrize(("case", "old_key", "signers", "step", "reason"), [
    ("signed by the new key only", OWNER, (ATTACKER,), 4,
     "KeyRotated must carry two signatures"),
    ("new key's signature twice", OWNER, (ATTACKER, ATTACKER), 4, "signature does not verify"),
    ("signed by a wrong old key", OWNER, (WRONG_OLD, ATTACKER), 4, "signature does not verify"),
    ("naming and signed by a wrong old key", WRONG_OLD, (WRONG_OLD, ATTACKER), 3,
     "KeyRotated old_key is not the key in force"),
])
async def test_a_forged_key_rotation_is_detected(
    tmp_path: Path, case: str, old_key: InProcessSigner, signers: tuple[InProcessSigner, ...],
    step: int, reason: str,
) -> None:
    db = await mf.build_closed_log(tmp_path / "node.db", mf.HISTORY[:2])  # seq 1..8
    forge(db, [rotation_event(old_key.sign_key, ATTACKER.sign_key)], by(*signers))
    # The attacker then writes on as the new owner, through the real store.
    store = await mf.open_store(db, ATTACKER)
    await store.append(session_events(5))
    await store.close()
    report = verify(db, jobs=1)
    # The forged key never enters the history verify reports (it reports only what it proved).
    assert ATTACKER.sign_key.b64url() not in {k for _, k in report.keys}, case
    assert_tampered(report, step=step, seq=9, reason=reason)
    assert_cli_tampered(db, seq=9)


async def test_a_log_opened_after_genesis_is_refused(tmp_path: Path) -> None:
    db = await mf.build_closed_log(tmp_path / "node.db", mf.HISTORY[:6])  # seq 1..16
    # Properly chained and signed by the key in force: only its position is wrong.
    forge(db, [replace(genesis_event(ATTACKER.sign_key), expected_version=None)], by(ROTATED))
    forge(db, [peer_event(9)], by(ROTATED))
    assert_tampered(verify(db, jobs=1), step=2, seq=17,
                    reason="LogOpened may only be the first entry")
    assert_cli_tampered(db, seq=17)


# -- checkpoints and projections ---------------------------------------------------------------


def _note_size(logs: Logs, size: int) -> bytes:
    conn = sqlite3.connect(logs.main)
    try:
        return bytes(conn.execute("SELECT note FROM checkpoints WHERE size = ?",
                                  (size,)).fetchone()[0])
    finally:
        conn.close()


def _other_root(note: bytes) -> bytes:
    """The note with one bit of its root hash flipped (and its signature left as it was)."""
    lines = note.split(b"\n")
    root = bytearray(base64.b64decode(lines[2]))
    root[0] ^= 1
    lines[2] = base64.b64encode(bytes(root))
    return b"\n".join(lines)


async def _resigned_note(origin: str, size: int, root: bytes) -> bytes:
    return await sign_checkpoint(Checkpoint(origin=origin, size=size, root_hash=root),
                                 origin, ATTACKER)


@pytest.mark.parametrize("attack", ["root changed", "signed by another key", "wrong size's note"])
def test_a_tampered_stored_checkpoint_is_detected(logs: Logs, tmp_path: Path,
                                                  attack: str) -> None:
    db = attacker_copy(logs.main, tmp_path / "x.db")
    note = _note_size(logs, 14)
    if attack == "root changed":
        forged = _other_root(note)
        reason = "stored checkpoint at size 14: invalid signature"
    elif attack == "signed by another key":
        origin = f"openred/{OWNER.sign_key.node_id}"
        forged = run(_resigned_note(origin, 14, bytes(32)))
        reason = "stored checkpoint at size 14: note has no signature by key"
    else:
        forged = _note_size(logs, 20)
        reason = "stored checkpoint row says size 14, its note says 20"
    execute(db, ("UPDATE checkpoints SET note = ? WHERE size = 14", (forged,)))
    assert_tampered(verify(db, jobs=1), step=5, seq=None, reason=reason)
    assert_cli_tampered(db)


def test_a_checkpoint_whose_root_does_not_match_the_entries_is_detected(
    logs: Logs, tmp_path: Path
) -> None:
    # A validly signed checkpoint (the owner's own key) over a root the log does not have.
    db = attacker_copy(logs.main, tmp_path / "x.db")
    origin = f"openred/{OWNER.sign_key.node_id}"
    note = run(sign_checkpoint(Checkpoint(origin=origin, size=8, root_hash=bytes(32)), origin,
                               OWNER))
    execute(db, ("UPDATE checkpoints SET note = ? WHERE size = 8", (note,)))
    assert_tampered(verify(db, jobs=1), step=5, seq=8,
                    reason="first 8 entries do not have the root the checkpoint at size 8")


def test_a_checkpoint_rows_root_hash_column_must_match_its_note(logs: Logs,
                                                                 tmp_path: Path) -> None:
    db = attacker_copy(logs.main, tmp_path / "x.db")
    execute(db, "UPDATE checkpoints SET root_hash = zeroblob(32) WHERE size = 14")
    assert_tampered(verify(db, jobs=1), step=5, seq=None,
                    reason="row at size 14 holds another root_hash than its note signs")
    assert_cli_tampered(db)


def test_pages_aliased_by_the_schema_are_caught_before_any_row_is_trusted(
    logs: Logs, tmp_path: Path
) -> None:
    # Point the registration table at the peers table's pages: every row then reads as
    # plausible, and a replay writes both "tables" alike — only SQLite's structure check sees
    # two tables sharing one b-tree.
    db = tmp_path / "x.db"
    shutil.copyfile(logs.main, db)
    conn = sqlite3.connect(db, isolation_level=None)
    peers_root = conn.execute("SELECT rootpage FROM sqlite_master WHERE name = 'peers'"
                              ).fetchone()[0]
    conn.execute("PRAGMA writable_schema = ON")
    conn.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = 'registration'",
                 (peers_root,))
    conn.close()
    report = verify(db, jobs=1)
    assert_tampered(report, step=1, seq=None, reason="is damaged: ")
    assert_cli_tampered(db)


def test_an_index_that_disagrees_with_its_table_is_caught(logs: Logs, tmp_path: Path) -> None:
    # The store reads a stream through the (stream, stream_version) index: give that index a
    # b-tree whose entries point two streams' first entries at each other's rows. Every row of
    # the table is still the signed one (verify reads NOT INDEXED), but what the node reads
    # back as a stream is another stream's entry.
    db = tmp_path / "x.db"
    shutil.copyfile(logs.main, db)
    conn = sqlite3.connect(db, isolation_level=None)
    rows = conn.execute("SELECT seq, stream, stream_version FROM events ORDER BY seq").fetchall()
    a, b = next((r, s) for r in rows for s in rows if r[1] != s[1] and r[2] == s[2] == 1
                and r[1] != "log" and s[1] != "log")
    lie = {a[0]: (b[1], b[2]), b[0]: (a[1], a[2])}
    conn.execute("CREATE TABLE fake (stream TEXT, stream_version INTEGER, "
                 "UNIQUE (stream, stream_version))")
    conn.executemany("INSERT INTO fake (rowid, stream, stream_version) VALUES (?, ?, ?)",
                     [(seq, *lie.get(seq, (stream, version))) for seq, stream, version in rows])
    roots = dict(conn.execute("SELECT name, rootpage FROM sqlite_master WHERE name IN "
                              "('sqlite_autoindex_events_1', 'sqlite_autoindex_fake_1')"))
    conn.execute("PRAGMA writable_schema = ON")
    for name, other in (("sqlite_autoindex_events_1", "sqlite_autoindex_fake_1"),
                        ("sqlite_autoindex_fake_1", "sqlite_autoindex_events_1")):
        conn.execute("UPDATE sqlite_master SET rootpage = ? WHERE name = ?", (roots[other], name))
    conn.close()
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TABLE fake")
    lied = conn.execute("SELECT seq FROM events WHERE stream = ? AND stream_version = 1",
                        (a[1],)).fetchone()
    conn.close()
    assert lied == (b[0],)  # the index hands out another stream's entry
    report = verify(db, jobs=1)
    assert_tampered(report, step=1, seq=None, reason="is damaged: .*index")
    assert_cli_tampered(db)


@pytest.mark.parametrize("attack", ["body edited", "signature edited", "not a note"])
def test_a_tampered_given_checkpoint_is_rejected(logs: Logs, tmp_path: Path,
                                                 attack: str) -> None:
    note = logs.saved_note
    if attack == "body edited":
        forged, reason = _other_root(note), "not signed by this log's key: invalid signature"
    elif attack == "signature edited":
        body, _, sig = note.rpartition(b" ")
        forged = body + b" " + (b"A" if sig[:1] != b"A" else b"B") + sig[1:]
        reason = "not signed by this log's key"
    else:
        forged, reason = b"hello\n", "the given checkpoint is malformed"
    assert_tampered(verify(logs.main, checkpoint=forged, jobs=1), step=6, seq=None,
                    reason=reason)
    saved = tmp_path / "forged.note"
    saved.write_bytes(forged)
    if attack == "not a note":
        # Not a checkpoint at all: the auditor gave the wrong file, the log is not to blame.
        result = cli("verify", logs.main, "--checkpoint", saved)
        assert result.exit_code == 2, result.output
        assert "is not a valid checkpoint: malformed note" in result.output
        assert "TAMPERED" not in result.output and "Traceback" not in result.output
    else:
        assert_cli_tampered(logs.main, "--checkpoint", saved)


@pytest.mark.parametrize(("statement", "reason"), [
    ("UPDATE sessions SET state = 'active' WHERE state = 'closed'",
     "projection table sessions differs"),
    ("DELETE FROM tokens", "projection table tokens differs"),
    ("INSERT INTO peers VALUES ('x', 'https://evil.example', 'k', 'b', 't', NULL)",
     "projection table peers differs"),
    ("UPDATE inbox SET body = 'AAAA'", "projection table inbox differs"),
    ("UPDATE projection_positions SET position = 20 WHERE name = 'tokens'",
     "projection tokens is at position 20, the log at 24"),
])
def test_an_edited_projection_fails_step_7(logs: Logs, tmp_path: Path, statement: str,
                                           reason: str) -> None:
    db = tmp_path / "x.db"
    shutil.copyfile(logs.main, db)
    execute(db, statement)
    assert_tampered(verify(db, jobs=1), step=7, seq=None, reason=reason)
    assert_cli_tampered(db)
    # Skipping step 7 is the auditor's explicit choice, and says so.
    skipped = verify(db, projections=False, jobs=1)
    assert skipped.ok and skipped.steps[-1].status == "skipped"


# -- golden fixtures -------------------------------------------------------------------------


def _index() -> list[dict[str, Any]]:
    fixtures: list[dict[str, Any]] = json.loads((VECTORS / mf.INDEX_NAME).read_text())[
        "fixtures"]
    return fixtures


@pytest.mark.parametrize("fixture", _index(), ids=lambda f: f"{f['file']}:{f['step']}")
def test_golden_attack_fixtures_give_their_recorded_outcome(fixture: dict[str, Any]) -> None:
    path = VECTORS / fixture["file"]
    note = (VECTORS / fixture["checkpoint"]).read_bytes() if fixture["checkpoint"] else None
    key = SignKey(from_b64url(fixture["key"])) if fixture["key"] else None
    report = verify(path, key=key, checkpoint=note, jobs=1)
    args: list[str | Path] = []
    if fixture["checkpoint"]:
        args += ["--checkpoint", VECTORS / fixture["checkpoint"]]
    if fixture["key"]:
        args += ["--key", fixture["key"]]
    result = cli("verify", path, *args)
    if fixture["valid"]:
        assert report.ok, report.reason
        assert report.entries == N
        assert result.exit_code == 0, result.output
        return
    assert_tampered(report, step=fixture["step"], seq=fixture["failed_seq"],
                    reason=re.escape(fixture["reason_contains"]))
    assert result.exit_code == 1, result.output


def test_the_fixture_index_covers_each_kind_of_attack() -> None:
    files = {f["file"] for f in _index()}
    for kind in ("truncated", "reordered", "forked", "resigned", "bad-signature"):
        assert f"{kind}.jsonl" in files
    on_disk = {p.name for p in VECTORS.glob("*.jsonl")}
    assert on_disk == files


async def test_regenerating_the_fixtures_gives_the_same_bytes(tmp_path: Path) -> None:
    await mf.write_fixtures(tmp_path)
    generated = sorted(p.name for p in tmp_path.iterdir())
    committed = sorted(p.name for p in VECTORS.iterdir()
                       if p.suffix in {".jsonl", ".checkpoint", ".json"}
                       and not p.name.startswith(("noise_", "wycheproof_")))  # SOURCES.md
    assert generated == committed
    for name in generated:
        assert (tmp_path / name).read_bytes() == (VECTORS / name).read_bytes(), name
