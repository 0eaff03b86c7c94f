"""The ``audit_tools`` command as an auditor runs it: output, exit codes 0/1/2, and each command.

A few runs go through a real subprocess (``python -m audit_tools``) to prove what reaches the
terminal and the exit status; the rest use click's CliRunner, which runs the same code in-process.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import sqlite3
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from audit_tools.cli import main as cli_main
from openred.crypto.identity import SignKey
from openred.store import merkle
from openred.store.checkpoint import verify_checkpoint
from openred.store.migrate import upgrade
from openred.store.signer import InProcessSigner
from tests.conftest import REPO_ROOT
from tests.store.history import fake_id, peer_event
from tests.vectors import make_fixtures as mf

OWNER = InProcessSigner.from_seed(mf.OWNER_SEED)
ROTATED = InProcessSigner.from_seed(mf.ROTATED_SEED)
N = mf.HISTORY_SIZE
ORIGIN = f"openred/{OWNER.sign_key.node_id}"


@dataclass(frozen=True)
class Log:
    db: Path
    rows: list[tuple[Any, ...]]


@pytest.fixture(scope="module")
def log(tmp_path_factory: pytest.TempPathFactory) -> Log:
    db = asyncio.run(mf.build_closed_log(tmp_path_factory.mktemp("cli") / "node.db"))
    conn = sqlite3.connect(db)
    rows = [tuple(r) for r in conn.execute("SELECT * FROM events ORDER BY seq")]
    conn.close()
    return Log(db, rows)


def run(*args: str | Path) -> subprocess.CompletedProcess[str]:
    """The real command in a child process."""
    return subprocess.run([sys.executable, "-m", "audit_tools", *map(str, args)], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=120, check=False)


def cli(*args: str | Path | int) -> Result:
    return CliRunner().invoke(cli_main, [str(a) for a in args])


def no_traceback(result: subprocess.CompletedProcess[str] | Result) -> None:
    text = result.stdout + result.stderr
    assert "Traceback" not in text
    if isinstance(result, Result):
        assert result.exception is None or isinstance(result.exception, SystemExit), \
            result.exception


# -- verify ------------------------------------------------------------------------------------


def test_verify_prints_each_numbered_step_and_the_entry_count(log: Log) -> None:
    result = run("verify", log.db)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == f"Verifying {log.db}"
    for number, title in enumerate(["read the log", "genesis and signer key history",
                                    "sequence, entry hashes and links", "signatures",
                                    "stored checkpoints", "consistency with the given checkpoint",
                                    "projections equal a replay"], start=1):
        assert lines[number].startswith(f"  {number}. {title}"), lines[number]
    assert "skipped" in lines[6]
    head = bytes(log.rows[-1][8]).hex()
    assert lines[-1].startswith(f"VALID: {N} entries checked; head {head}; root ")
    no_traceback(result)


def test_verify_json_reports_validity_entries_head_and_steps(log: Log) -> None:
    result = cli("verify", log.db, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["valid"] is True and report["entries"] == N
    assert report["head"] == bytes(log.rows[-1][8]).hex()
    root = merkle.root_from_entry_hashes([bytes(r[8]) for r in log.rows])
    assert report["root"] == root.hex()
    assert report["origin"] == ORIGIN
    assert [s["step"] for s in report["steps"]] == [1, 2, 3, 4, 5, 6, 7]
    assert [s["status"] for s in report["steps"]].count("ok") == 6
    assert report["failed_seq"] is None and report["reason"] is None


def test_verify_json_names_the_failure(log: Log, tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    shutil.copyfile(log.db, db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("UPDATE events SET recorded_at = '2020-01-01T00:00:00.000000Z' WHERE seq = 7")
    conn.close()
    result = cli("verify", db, "--json")
    assert result.exit_code == 1
    report = json.loads(result.stdout)
    assert report["valid"] is False and report["failed_seq"] == 7
    # The first bad entry is named first; the trigger dropped to edit it is named beside it.
    assert report["reason"] == ("entry_hash does not match the entry's contents; the database's "
                                "schema is not the store's own either: trigger events_no_update "
                                "on events of the node log's schema is missing")
    assert report["steps"][-1] == {"step": 3, "title": "sequence, entry hashes and links",
                                   "status": "failed", "detail": report["reason"]}


def test_a_missing_path_is_a_usage_error(tmp_path: Path) -> None:
    result = run("verify", tmp_path / "nothing-here.db")
    assert result.returncode == 2
    assert result.stderr.startswith("error: no such file or directory")
    no_traceback(result)
    as_json = cli("verify", tmp_path / "nothing-here.db", "--json")
    assert as_json.exit_code == 2 and json.loads(as_json.stdout)["exit_code"] == 2


@pytest.mark.parametrize("content", [b"hello, this is not a log\n", b"", b"\x00" * 4096,
                                     b"SQLite format 3\x00" + b"\xff" * 200, b"{not json\n"])
def test_a_file_that_is_not_a_log_fails_with_a_message_not_a_traceback(
    tmp_path: Path, content: bytes
) -> None:
    path = tmp_path / "not-a-log"
    path.write_bytes(content)
    result = cli("verify", path)
    assert result.exit_code in (1, 2), result.output
    assert "VALID" not in result.output
    assert result.output.strip(), "an explanation is printed"
    no_traceback(result)


def test_a_text_file_through_the_real_command(tmp_path: Path) -> None:
    path = tmp_path / "notes.txt"
    path.write_text("just some notes\n")
    result = run("verify", path)
    assert result.returncode == 1
    assert "not a readable SQLite database" in result.stdout + result.stderr
    no_traceback(result)


def test_a_log_with_no_entries_is_never_valid(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    upgrade(db)  # every table of a node's database, and not a single event
    result = run("verify", db)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "VALID" not in result.stdout
    assert "the log has no entries: nothing to verify" in result.stdout
    no_traceback(result)
    report = json.loads(cli("verify", db, "--json").stdout)
    assert report["valid"] is False and report["entries"] == 0


@pytest.mark.parametrize("args", [
    ["--key", "not-base64!"],
    ["--key", "AAAA"],
    ["--node-id", "NOT-A-NODE-ID"],
    ["--jobs", "0"],
    ["--no-such-option"],
])
def test_bad_options_are_usage_errors(log: Log, args: list[str]) -> None:
    result = cli("verify", log.db, *args)
    assert result.exit_code == 2, result.output
    no_traceback(result)


def test_an_unreadable_checkpoint_file_is_a_usage_error(log: Log, tmp_path: Path) -> None:
    result = cli("verify", log.db, "--checkpoint", tmp_path / "missing.note")
    assert result.exit_code == 2
    assert "cannot read checkpoint" in result.output


def test_key_and_node_id_of_the_owner_pass_and_of_another_node_fail(log: Log) -> None:
    assert cli("verify", log.db, "--key", OWNER.sign_key.b64url()).exit_code == 0
    assert cli("verify", log.db, "--node-id", OWNER.sign_key.node_id).exit_code == 0
    # The rotated-to key is not the genesis key: the log did not start with it.
    other = cli("verify", log.db, "--key", ROTATED.sign_key.b64url())
    assert other.exit_code == 1 and "TAMPERED at seq 1:" in other.output
    assert cli("verify", log.db, "--node-id", fake_id(3)).exit_code == 1


# -- checkpoint --------------------------------------------------------------------------------


async def test_a_printed_checkpoint_is_accepted_by_verify_after_the_log_grows(
    log: Log, tmp_path: Path
) -> None:
    db = tmp_path / "node.db"
    shutil.copyfile(log.db, db)
    printed = cli("checkpoint", db)
    assert printed.exit_code == 0, printed.output
    note = tmp_path / "saved.note"
    note.write_text(printed.stdout)
    assert verify_checkpoint(note.read_bytes(), ORIGIN, ROTATED.sign_key).size == N
    as_json = json.loads(cli("checkpoint", db, "--json").stdout)
    assert as_json["size"] == N and as_json["note"] == printed.stdout
    assert as_json["entries_after"] == 0

    store = await mf.open_store(db, ROTATED)
    await store.append([peer_event(i) for i in range(10, 13)])
    await store.close()

    result = cli("verify", db, "--checkpoint", note, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["entries"] == N + 3
    assert report["steps"][5]["status"] == "ok"
    assert report["steps"][5]["detail"] == f"the log ({N + 3} entries) extends the checkpoint " \
                                           f"at size {N}"


def test_checkpoint_of_a_log_without_checkpoints_fails(log: Log, tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    shutil.copyfile(log.db, db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER checkpoints_no_delete")
    conn.execute("DELETE FROM checkpoints")
    conn.close()
    result = cli("checkpoint", db)
    assert result.exit_code == 1
    assert "holds no signed checkpoint" in result.output


# -- export ------------------------------------------------------------------------------------


def test_an_exported_bundle_verifies_offline_anywhere(log: Log, tmp_path: Path) -> None:
    bundle = tmp_path / "out" / "log.jsonl"
    bundle.parent.mkdir()
    result = cli("export", log.db, "--out", bundle)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"Exported {N} entries to {bundle}"
    # Moved away from the database (and the database gone): the bundle stands alone.
    elsewhere = tmp_path / "auditor" / "copy.jsonl"
    elsewhere.parent.mkdir()
    shutil.move(bundle, elsewhere)
    db = tmp_path / "gone.db"
    shutil.copyfile(log.db, db)
    db.unlink()
    checked = run("verify", elsewhere, "--key", OWNER.sign_key.b64url())
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"VALID: {N} entries checked" in checked.stdout
    assert "a bundle holds no projections" in checked.stdout
    no_traceback(checked)
    # export refuses to overwrite.
    again = cli("export", log.db, "--out", elsewhere)
    assert again.exit_code == 2 and "will not overwrite" in again.output


def _peer_strings(log: Log) -> set[str]:
    """Every peer node id and peer key that appears in the log's payloads and streams."""
    found: set[str] = set()
    for row in log.rows:
        payload = json.loads(bytes(row[6]))
        for field in ("node_id", "peer"):
            if field in payload and row[3] != "LogOpened":
                found.add(payload[field])
        for field in ("sign_key", "box_key"):
            if field in payload and row[3] != "LogOpened":
                found.add(payload[field])
    return found


def test_a_pseudonymized_export_hides_peers_and_still_verifies(log: Log, tmp_path: Path) -> None:
    peers = _peer_strings(log)
    assert {fake_id(i) for i in range(5)} <= peers  # the history does name peers
    key_file = tmp_path / "pseudonym.key"
    key_file.write_bytes(b"k" * 32)
    bundle = tmp_path / "pseudo.jsonl"
    result = cli("export", log.db, "--out", bundle, "--pseudonymize",
                 "--pseudonym-key-file", key_file)
    assert result.exit_code == 0, result.output
    text = bundle.read_text()
    for value in peers:
        assert value not in text, value
    # The log's owner stays: its key is what the signatures are checked against.
    assert OWNER.sign_key.node_id in text and OWNER.sign_key.b64url() in text
    checked = cli("verify", bundle, "--key", OWNER.sign_key.b64url())
    assert checked.exit_code == 0, checked.output
    assert "pseudonymized" in checked.output and f"VALID: {N} entries checked" in checked.output
    # The same key gives the same pseudonyms; another key other ones.
    same = tmp_path / "same.jsonl"
    assert cli("export", log.db, "--out", same, "--pseudonymize", "--pseudonym-key-file",
               key_file).exit_code == 0
    assert same.read_bytes() == bundle.read_bytes()
    other = tmp_path / "other.jsonl"
    assert cli("export", log.db, "--out", other, "--pseudonymize").exit_code == 0
    assert other.read_bytes() != bundle.read_bytes()


def test_export_refuses_a_tampered_log(log: Log, tmp_path: Path) -> None:
    db = tmp_path / "x.db"
    shutil.copyfile(log.db, db)
    conn = sqlite3.connect(db, isolation_level=None)
    conn.execute("DROP TRIGGER events_no_delete")
    conn.execute("DELETE FROM events WHERE seq = 11")
    conn.close()
    result = cli("export", db, "--out", tmp_path / "b.jsonl")
    assert result.exit_code == 1
    assert "refusing to export a log that does not verify at seq 11" in result.output
    assert not (tmp_path / "b.jsonl").exists()


# -- replay ------------------------------------------------------------------------------------


def _token_seqs(log: Log) -> tuple[str, int, int]:
    """A grant id, the seq that received its token and the seq that consumed it."""
    received = {json.loads(bytes(r[6]))["grant_id"]: r[0] for r in log.rows
                if r[3] == "TokenReceived"}
    for row in log.rows:
        if row[3] == "TokenConsumed":
            grant = json.loads(bytes(row[6]))["grant_id"]
            return grant, received[grant], row[0]
    raise AssertionError("the history consumes no token")


def test_replay_until_shows_the_state_as_of_that_seq(log: Log) -> None:
    grant, received, consumed = _token_seqs(log)
    assert received < consumed
    states = {}
    for until in (received - 1, received, consumed - 1, consumed):
        result = cli("replay", log.db, "--until", until, "--json")
        assert result.exit_code == 0, result.output
        state = json.loads(result.stdout)
        assert state["position"] == until
        states[until] = {t["grant_id"] for t in state["tables"]["tokens"]}
    assert grant not in states[received - 1]
    assert grant in states[received] and grant in states[consumed - 1]
    assert grant not in states[consumed]
    human = cli("replay", log.db, "--until", received)
    assert human.exit_code == 0 and f"State of this node log as of seq {received}" in human.output
    assert "tokens: 1 row(s)" in human.output


def test_replay_of_the_whole_log_equals_the_nodes_tables(log: Log) -> None:
    state = json.loads(cli("replay", log.db, "--json").stdout)
    assert state["position"] == N and state["kind"] == "node"
    conn = sqlite3.connect(log.db)
    try:
        for table, rows in state["tables"].items():
            cursor = conn.execute(f"SELECT * FROM {table} ORDER BY 1")
            columns = [d[0] for d in cursor.description]
            stored = [dict(zip(columns, r, strict=True)) for r in cursor]
            assert rows == stored, table
    finally:
        conn.close()


def test_replay_past_the_end_is_a_usage_error(log: Log, tmp_path: Path) -> None:
    result = cli("replay", log.db, "--until", N + 1)
    assert result.exit_code == 2 and f"past the log's {N} entries" in result.output
    out = tmp_path / "state.db"
    saved = cli("replay", log.db, "--until", 10, "--out", out)
    assert saved.exit_code == 0, saved.output
    checked = cli("verify", out)
    assert checked.exit_code == 0 and "VALID: 10 entries checked" in checked.output


# -- prove -------------------------------------------------------------------------------------


@pytest.mark.parametrize("seq", [1, 8, 9, 12, N])
def test_prove_gives_an_inclusion_proof_against_a_signed_checkpoint(log: Log, seq: int) -> None:
    result = cli("prove", log.db, seq, "--json")
    assert result.exit_code == 0, result.output
    proof = json.loads(result.stdout)
    assert proof["seq"] == seq and proof["leaf_index"] == seq - 1
    assert proof["entry_hash"] == bytes(log.rows[seq - 1][8]).hex()
    size = proof["tree_size"]
    assert size >= seq
    # The root comes from the checkpoint the command printed, checked under the key that was
    # in force when it was signed — not from the command's own word.
    signer = OWNER if size < mf.ROTATION_SEQ else ROTATED
    checkpoint = verify_checkpoint(proof["checkpoint"].encode(), ORIGIN, signer.sign_key)
    assert checkpoint.size == size and checkpoint.root_hash.hex() == proof["root"]
    merkle.verify_inclusion(seq - 1, size, bytes.fromhex(proof["entry_hash"]),
                            [bytes.fromhex(h) for h in proof["proof"]], checkpoint.root_hash)
    # The same proof does not stand for another entry.
    other = bytes(log.rows[seq % N][8])
    with pytest.raises(Exception, match="inclusion"):
        merkle.verify_inclusion(seq - 1, size, other, [bytes.fromhex(h) for h in proof["proof"]],
                                checkpoint.root_hash)


def test_prove_in_human_form_and_past_the_end(log: Log) -> None:
    result = run("prove", log.db, "12")
    assert result.returncode == 0, result.stderr
    assert f"Inclusion proof for entry 12 of {ORIGIN}" in result.stdout
    assert "anchored to the signed checkpoint:" in result.stdout
    no_traceback(result)
    past = cli("prove", log.db, N + 1)
    assert past.exit_code == 2 and f"no entry {N + 1}" in past.output


def test_prove_from_a_bundle(log: Log, tmp_path: Path) -> None:
    bundle = tmp_path / "b.jsonl"
    assert cli("export", log.db, "--out", bundle).exit_code == 0
    from_db = json.loads(cli("prove", log.db, 5, "--json").stdout)
    from_bundle = json.loads(cli("prove", bundle, 5, "--json").stdout)
    assert from_bundle == from_db


def test_sign_key_type_is_what_the_cli_prints(log: Log) -> None:
    # The key history the JSON report prints parses back into the keys that signed the log.
    report = json.loads(cli("verify", log.db, "--json").stdout)
    keys = [SignKey.from_b64url(k["sign_key"]) for k in report["keys"]]
    assert keys == [OWNER.sign_key, ROTATED.sign_key]
    assert [k["from_seq"] for k in report["keys"]] == [1, mf.ROTATION_SEQ + 1]


def test_a_reader_that_goes_away_is_no_error_message_and_no_verdict(log: Log) -> None:
    """``audit_tools verify LOG | head -1``: the reader closes the pipe after the first line.
    Before: the next line's write failed and verify printed "error: I/O error: [Errno 32]
    Broken pipe". Now it stops quietly with 2 (an I/O outcome: no verdict was delivered,
    so never 0 or 1), like other tools a pipe's reader leaves."""
    proc = subprocess.Popen([sys.executable, "-m", "audit_tools", "verify", str(log.db)],
                            cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    first = proc.stdout.readline()
    if not first.startswith(b"Verifying "):  # it ended or said something else: show why
        out, err = proc.communicate(timeout=120)
        raise AssertionError(f"verify's first line was {first!r} (exit code {proc.returncode}); "
                             f"then:\n{(out + err).decode(errors='replace')}")
    proc.stdout.close()  # what head does after its line
    stderr = proc.stderr.read().decode()
    proc.stderr.close()
    assert proc.wait(120) == 2
    assert stderr == "", stderr
