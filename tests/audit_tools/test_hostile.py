"""Hostile files and arguments: a clear message, the right exit code, never a traceback.

Each input is blamed for what it is: a damaged or forged log is exit 1, a file the auditor gave
that is not what it should be (a missing log, a bad ``--checkpoint``) is exit 2.
"""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from audit_tools.cli import main as cli_main
from audit_tools.verify import verify
from openred.crypto.identity import EntryHash
from openred.store.codec import entry_hash
from openred.store.events import KEY_ROTATED
from openred.store.signer import InProcessSigner
from tests.audit_tools.test_verify_tamper import execute
from tests.conftest import REPO_ROOT
from tests.vectors import make_fixtures as mf

ROTATED = InProcessSigner.from_seed(mf.ROTATED_SEED)
N = mf.HISTORY_SIZE
DEEP = 200_000


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return asyncio.run(mf.build_closed_log(tmp_path_factory.mktemp("hostile") / "openred.db"))


def cli(*args: str | Path) -> Result:
    return CliRunner().invoke(cli_main, [str(a) for a in args])


def clean(result: Result, code: int, *words: str) -> None:
    assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), \
        repr(result.exception)
    assert "Traceback" not in result.output
    for word in words:
        assert word in result.output, result.output


def deep_json(depth: int = DEEP) -> bytes:
    return b'{"a":' + b"[" * depth + b"]" * depth + b"}"


def append_signed(db: Path, type_: str, payload: bytes, *, stream: str = "x:1") -> None:
    """Append one properly chained entry signed by the key in force (ROTATED), and move the
    projections' positions on, as a writer would."""
    conn = sqlite3.connect(db)
    seq, head, recorded_at = conn.execute(
        "SELECT seq, entry_hash, recorded_at FROM events ORDER BY seq DESC LIMIT 1").fetchone()
    version = conn.execute("SELECT coalesce(max(stream_version), 0) + 1 FROM events WHERE "
                           "stream = ?", (stream,)).fetchone()[0]
    conn.close()
    digest = entry_hash(seq=seq + 1, stream=stream, stream_version=version, type=type_,
                        schema_version=1, recorded_at=recorded_at, payload=payload,
                        prev_hash=bytes(head))
    signature = ROTATED.sign_entry_hashes_sync([EntryHash(digest)])[0]
    execute(db, ("INSERT INTO events VALUES (?,?,?,?,?,?,?,?,?,?)",
                 (seq + 1, stream, version, type_, 1, recorded_at, payload, bytes(head), digest,
                  signature)),
            "UPDATE projection_positions SET position = position + 1")


# -- deeply nested JSON -----------------------------------------------------------------------


def test_a_signed_entry_with_a_deeply_nested_payload_fails_cleanly(
    log: Path, tmp_path: Path,
) -> None:
    db = tmp_path / "openred.db"
    shutil.copyfile(log, db)
    append_signed(db, "PeerDiscovered", deep_json())  # the node's projections decode it
    report = verify(db, jobs=1)
    assert not report.ok
    assert [s.number for s in report.steps if s.status == "failed"] == [7]
    assert "nested too deeply" in report.reason
    clean(cli("verify", db), 1, "TAMPERED", "nested too deeply")
    clean(cli("replay", db), 1, "nested too deeply")
    clean(cli("export", db, "--out", tmp_path / "b.jsonl", "--pseudonymize"), 0)


def test_a_key_rotation_with_a_deeply_nested_payload_fails_at_its_seq(
    log: Path, tmp_path: Path,
) -> None:
    db = tmp_path / "openred.db"
    shutil.copyfile(log, db)
    append_signed(db, KEY_ROTATED, deep_json(), stream="log")
    report = verify(db, jobs=1)
    assert report.failed_seq == N + 1 and "nested too deeply" in report.reason, report.reason
    clean(cli("verify", db), 1, f"TAMPERED at seq {N + 1}")
    clean(cli("checkpoint", db), 1)
    clean(cli("prove", db, "3"), 1)


@pytest.mark.parametrize("where", ["header", "entry line", "payload"])
def test_a_bundle_with_deeply_nested_json_fails_cleanly(tmp_path: Path, where: str) -> None:
    lines = (mf.HERE / "good.jsonl").read_bytes().splitlines(keepends=True)
    if where == "header":
        lines[0] = b'{"format":"openred-log-bundle/1","x":' + deep_json() + b"}\n"
    elif where == "entry line":
        lines[5] = deep_json() + b"\n"
    else:
        entry = json.loads(lines[5])
        entry["payload"] = __import__("base64").urlsafe_b64encode(deep_json()).decode()
        lines[5] = json.dumps(entry).encode() + b"\n"
    bundle = tmp_path / "deep.jsonl"
    bundle.write_bytes(b"".join(lines))
    clean(cli("verify", bundle), 1, "TAMPERED")
    clean(cli("verify", bundle, "--json"), 1)
    clean(cli("replay", bundle), 1)


def test_deeply_nested_json_in_checkpoint_notes_fails_cleanly(log: Path, tmp_path: Path) -> None:
    note = tmp_path / "deep.note"
    note.write_bytes(deep_json(20_000) + b"\n")
    clean(cli("verify", log, "--checkpoint", note), 2, "is not a valid checkpoint")
    # The same inside a stored checkpoint's note: the log's own data, so exit 1.
    db = tmp_path / "openred.db"
    shutil.copyfile(log, db)
    execute(db, ("UPDATE checkpoints SET note = ? WHERE size = (SELECT min(size) FROM "
                 "checkpoints)", (deep_json(),)))
    clean(cli("verify", db), 1, "TAMPERED", "stored checkpoint at size")


# -- checkpoint files -------------------------------------------------------------------------


@pytest.mark.parametrize("size", ["9" * 5000, str(2**64), "-1", "01"])
def test_a_checkpoint_file_with_a_huge_or_bad_size_is_a_usage_error(
    log: Path, tmp_path: Path, size: str,
) -> None:
    good = mf.latest_note(log).decode().split("\n")
    good[1] = size
    note = tmp_path / "huge.note"
    note.write_text("\n".join(good))
    clean(cli("verify", log, "--checkpoint", note), 2, "is not a valid checkpoint")
    clean(cli("verify", log, "--checkpoint", note, "--json"), 2)


def test_a_well_formed_checkpoint_with_a_huge_size_does_not_blame_the_log_unsigned(
    log: Path, tmp_path: Path,
) -> None:
    # 2**63 is a valid tree size, but this log's key never signed it: the saved checkpoint is
    # not this log's, rather than "the log was truncated by 2**63 entries".
    good = mf.latest_note(log).decode().split("\n")
    good[1] = str(2**63)
    note = tmp_path / "big.note"
    note.write_text("\n".join(good))
    result = cli("verify", log, "--checkpoint", note)
    clean(result, 1, "the given checkpoint is not signed by this log's key")
    assert "truncated" not in result.output


@pytest.mark.parametrize("kind", ["missing", "directory", "huge"])
def test_an_unreadable_checkpoint_file_is_a_usage_error(log: Path, tmp_path: Path,
                                                        kind: str) -> None:
    path = tmp_path / "cp.note"
    if kind == "directory":
        path.mkdir()
    elif kind == "huge":
        path.write_bytes(b"x" * (1 << 20))
    clean(cli("verify", log, "--checkpoint", path), 2, "checkpoint")


def test_a_bundle_header_with_a_huge_count_fails_cleanly(tmp_path: Path) -> None:
    lines = (mf.HERE / "good.jsonl").read_bytes().splitlines(keepends=True)
    header = json.loads(lines[0])
    lines[0] = json.dumps(header).replace('"count": 24', '"count": ' + "9" * 5000).encode() + b"\n"
    bundle = tmp_path / "count.jsonl"
    bundle.write_bytes(b"".join(lines))
    clean(cli("verify", bundle), 1, "TAMPERED")


# -- paths ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["a#b.db", "a?mode=rwc.db", "a%3Fb.db", "50%.db",
                                  "q?x#y%z"])
def test_a_path_with_uri_characters_opens_exactly_that_file(
    log: Path, tmp_path: Path, name: str,
) -> None:
    folder = tmp_path / "d?#%20"
    folder.mkdir()
    db = folder / name
    shutil.copyfile(log, db)
    before = sorted(p.name for p in folder.iterdir())
    report = verify(db, jobs=1)
    assert report.ok and report.entries == N, report.reason
    clean(cli("verify", db), 0, f"VALID: {N} entries checked")
    clean(cli("replay", db, "--out", folder / f"out-{name}"), 0)
    # Nothing new but the replay's output, and SQLite's own WAL index beside the log it read.
    assert sorted(p.name for p in folder.iterdir()) == sorted(
        {*before, f"out-{name}", f"{name}-wal", f"{name}-shm"})


@pytest.mark.parametrize("name", ["a?mode=rwc", "b#frag", "c%2Fd", "e?"])
def test_a_missing_path_with_uri_characters_is_never_created(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    clean(cli("verify", path), 2, "no such file")
    assert list(tmp_path.iterdir()) == []
    (tmp_path / "dir").mkdir()
    clean(cli("verify", tmp_path / "dir"), 2, "no such file")
    assert list((tmp_path / "dir").iterdir()) == []


def test_a_file_that_is_not_a_database_blames_the_log(tmp_path: Path) -> None:
    path = tmp_path / "x?.db"
    path.write_bytes(b"SQLite format 3\x00" + b"\xff" * 4000)
    clean(cli("verify", path), 1)
    assert path.read_bytes() == b"SQLite format 3\x00" + b"\xff" * 4000


def test_the_real_command_shows_no_traceback_for_a_hostile_checkpoint(log: Path,
                                                                      tmp_path: Path) -> None:
    note = tmp_path / "n?#.note"
    note.write_bytes(deep_json(20_000) + b"\n")
    result = subprocess.run([sys.executable, "-m", "audit_tools", "verify", str(log),
                             "--checkpoint", str(note)], cwd=REPO_ROOT, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 2, result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert "is not a valid checkpoint" in result.stderr


# -- files the tools write ---------------------------------------------------------------------


def test_export_writes_its_bundle_privately_and_never_through_a_planted_link(
    log: Path, tmp_path: Path,
) -> None:
    # A link planted at the bundle's temporary name (in a shared directory) turned the export
    # onto the link's target, and the whole log was written readable by every user.
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    out = tmp_path / "bundle.jsonl"
    (tmp_path / "bundle.jsonl.partial").symlink_to(victim)
    clean(cli("export", log, "--out", out), 0, "Exported")
    assert victim.read_bytes() == b"precious"
    assert not out.is_symlink() and out.stat().st_mode & 0o777 == 0o600
    clean(cli("verify", out), 0)


def test_replay_out_is_private_and_never_created_through_a_dangling_link(
    log: Path, tmp_path: Path,
) -> None:
    target = tmp_path / "elsewhere.db"
    link = tmp_path / "state.db"
    link.symlink_to(target)
    clean(cli("replay", log, "--out", link), 2, "exists")
    assert not target.exists()
    out = tmp_path / "state2.db"
    clean(cli("replay", log, "--out", out), 0)
    assert out.stat().st_mode & 0o777 == 0o600


# -- what a crafted log puts on the auditor's terminal ------------------------------------------

ESCAPES = "\x1b[1A\x1b[2K\rVALID: all good\x1b]0;owned\x07\x9b2J\u202e"
UNSAFE = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")


def test_escape_sequences_in_a_crafted_log_reach_the_terminal_inert(
    log: Path, tmp_path: Path,
) -> None:
    # Names and values verify reports come from the file under test: an object named with
    # cursor movements could overwrite the TAMPERED line with "VALID" on the auditor's screen.
    db = tmp_path / "x.db"
    shutil.copyfile(log, db)
    conn = sqlite3.connect(db)
    conn.execute(f'CREATE TABLE "{ESCAPES}" (a)')
    conn.close()
    result = cli("verify", db)
    clean(result, 1, "TAMPERED", "VALID: all good")
    assert not UNSAFE.search(result.output), repr(result.output)
    replay = cli("replay", db, "--rows", "1")
    assert not UNSAFE.search(replay.output), repr(replay.output)
