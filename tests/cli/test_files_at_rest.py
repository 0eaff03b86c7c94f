"""Files the operator's commands read at rest: a path is exactly the file it names.

SQLite reads a ``file:`` URI's ``#`` as the start of a fragment and ``?`` as the start of the
query: a data directory named ``node#2`` handed unescaped to SQLite opened ``node`` instead —
read-write and creating it (``?mode=ro`` went into the fragment) — not ``node#2/openred.db``.
"""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading
from pathlib import Path

import pytest
from click.testing import CliRunner

from openred.cli import main
from openred.errors import ConfigurationError, RequestRefused
from openred.modules.authentication.files import read_admin_token
from openred.modules.authentication.operator import OperatorAuth
from openred.modules.monitoring.health import database_writable
from openred.node.own_record import OwnRecord
from openred.settings import read_env_file
from openred.store.signer import InProcessSigner
from openred.store.sqlite import key_history, readonly_uri
from openred.web.signatures import InboundVerifier
from tests.cli.test_hostile_answers import UNSAFE
from tests.vectors import make_fixtures as mf


async def _directory_log(data: Path) -> Path:
    """A directory's log (kind ``directory``: `directory key` refuses a node's)."""
    from openred.directory.events import directory_registry
    from openred.store.sqlite import DATABASE_NAME, SQLiteEventStore

    store = await SQLiteEventStore.open(data, InProcessSigner.from_seed(mf.OWNER_SEED),
                                        kind="directory", registry=directory_registry())
    await store.close()
    return data / DATABASE_NAME


@pytest.mark.parametrize("name", ["dir#2", "dir?mode=rwc", "dir%23"])
def test_a_data_dir_with_uri_characters_reads_exactly_its_database(
    tmp_path: Path, name: str,
) -> None:
    data = tmp_path / name
    data.mkdir()
    db = asyncio.run(_directory_log(data))
    conn = sqlite3.connect(db)
    expected = key_history(conn)[-1][1].b64url()
    conn.close()
    before = sorted(p.name for p in tmp_path.iterdir())
    result = CliRunner().invoke(main, ["directory", "key", "--data-dir", str(data)])
    assert result.exit_code == 0, (result.output, result.exception)
    assert result.output.strip() == expected
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing created beside it


def test_the_read_only_uri_opens_only_the_named_file_and_never_writes(tmp_path: Path) -> None:
    db = tmp_path / "a#b?c%d.db"
    sqlite3.connect(db).execute("CREATE TABLE t (x)").connection.close()
    conn = sqlite3.connect(readonly_uri(db), uri=True)
    try:
        assert conn.execute("SELECT name FROM sqlite_master").fetchall() == [("t",)]
        with pytest.raises(sqlite3.OperationalError, match="readonly"):
            conn.execute("CREATE TABLE u (x)")
    finally:
        conn.close()
    with pytest.raises(sqlite3.OperationalError):
        sqlite3.connect(readonly_uri(tmp_path / "missing#x.db"), uri=True).execute(
            "SELECT 1 FROM sqlite_master")
    assert sorted(p.name for p in tmp_path.iterdir()) == [db.name]


def test_the_health_probe_opens_the_node_database_itself(tmp_path: Path) -> None:
    # Before, the probe of ``n#1/openred.db`` opened (and created) ``n`` and said healthy.
    data = tmp_path / "n#1"
    data.mkdir()
    (data / "openred.db").write_bytes(b"not a database, and the probe must say so" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        asyncio.run(database_writable(data / "openred.db")())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["n#1"]


def test_a_directory_database_that_is_not_one_is_a_one_line_error(tmp_path: Path) -> None:
    (tmp_path / "openred.db").write_bytes(b"x" * 4096)
    result = CliRunner().invoke(main, ["directory", "key", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error: cannot read the directory's key" in result.output


def _admin_files(data: Path, key: bytes | None, url: bytes | None) -> None:
    if key is not None:
        (data / "admin-key").write_bytes(key)
        (data / "admin-key").chmod(0o600)
    if url is not None:
        (data / "admin-url").write_bytes(url)


@pytest.mark.parametrize(("key", "url", "words"), [
    (b"\xff\xfe not utf-8", None, "admin-key"),
    (b"k" * 43, b"\xff not utf-8", "admin-url"),
    (b"k" * 43, None, "admin-url"),  # a directory at that name
])
def test_a_damaged_admin_key_or_url_file_is_a_one_line_error(
    tmp_path: Path, key: bytes, url: bytes | None, words: str,
) -> None:
    _admin_files(tmp_path, key, url)
    if url is None and words == "admin-url":
        (tmp_path / "admin-url").mkdir()
    result = CliRunner().invoke(main, ["status", "--data-dir", str(tmp_path)])
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit), repr(result.exception)
    assert "error: cannot read" in result.output and words in result.output, result.output


@pytest.mark.parametrize("content", [b"token " + b"9" * 5000, b"\xff\xfe", None])
def test_a_damaged_admin_token_file_is_a_configuration_error_or_no_token(
    tmp_path: Path, content: bytes | None,
) -> None:
    path = tmp_path / "admin-token"
    if content is None:
        path.mkdir(mode=0o700)
    else:
        path.write_bytes(content)
        path.chmod(0o600)
    try:
        assert read_admin_token(tmp_path, 0.0) is None
    except ConfigurationError as exc:
        assert "admin-token" in str(exc)


DEEP = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"  # past the JSON parser's depth


def test_files_a_node_reads_at_start_nested_too_deeply_count_as_unreadable(
    tmp_path: Path,
) -> None:
    # Before, RecursionError escaped both and the node did not start (a traceback).
    nonces = tmp_path / "nonces.json"
    nonces.write_bytes(DEEP)
    verifier = InboundVerifier("http://127.0.0.1:1")
    assert verifier.restore(nonces) is False  # refuses older signatures instead
    record = tmp_path / "own-record.json"
    record.write_bytes(DEEP)
    assert OwnRecord(record).stored() == (None, 0)  # signs a new record


@pytest.mark.parametrize("content", [DEEP, b"\xff\xfe", None])
def test_a_damaged_second_factor_state_is_refused_not_a_crash(
    tmp_path: Path, content: bytes | None,
) -> None:
    auth = OperatorAuth(tmp_path, None, account="node")  # type: ignore[arg-type]
    if content is None:
        auth.path.mkdir()
    else:
        auth.path.write_bytes(content)
    with pytest.raises(RequestRefused) as refused:
        auth.status()
    assert refused.value.status == 503


def _read_env_in_thread(path: Path) -> tuple[threading.Thread, list[object]]:
    outcome: list[object] = []

    def read() -> None:
        try:
            outcome.append(read_env_file(path))
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=read, daemon=True)
    thread.start()
    thread.join(5)
    return thread, outcome


def test_a_dotenv_that_is_a_fifo_is_refused_not_waited_on(tmp_path: Path) -> None:
    # Every command reads DATA_DIR/.env first: a FIFO there made each one hang forever.
    env = tmp_path / ".env"
    os.mkfifo(env)
    thread, outcome = _read_env_in_thread(env)
    if thread.is_alive():  # unblock the reader before failing
        os.close(os.open(env, os.O_WRONLY | os.O_NONBLOCK))
        thread.join(5)
    assert outcome and isinstance(outcome[0], ConfigurationError), outcome
    assert "not a regular file" in str(outcome[0])


def test_an_oversized_dotenv_is_refused(tmp_path: Path) -> None:
    env = tmp_path / ".env"
    env.write_bytes(b"# " + b"x" * (2 << 20) + b"\nOPENRED_PORT=1\n")
    with pytest.raises(ConfigurationError, match="too large"):
        read_env_file(env)
    (tmp_path / "link").symlink_to(env)  # a link to a sound file still reads as that file
    env.write_text("OPENRED_PORT=1\n")
    assert read_env_file(tmp_path / "link") == {"OPENRED_PORT": "1"}


def test_what_nodes_registered_reaches_the_directory_operators_terminal_inert(
    tmp_path: Path,
) -> None:
    # A node's URL and version are what the node sent when it registered.
    hostile = "v1\x1b[2J\x1b]0;owned\x07\x9b31m\u202e[link=https://evil.example]x[/link]\r"
    conn = sqlite3.connect(tmp_path / "openred.db")
    conn.execute("CREATE TABLE directory_nodes (node_id, status, api_url, version, last_seen, "
                 "registered_at)")
    conn.execute("INSERT INTO directory_nodes VALUES (?, 'active', ?, ?, 1, 1)",
                 (hostile, hostile, hostile))
    conn.commit()
    conn.close()
    result = CliRunner().invoke(main, ["directory", "nodes", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "v1" in result.output
    assert not UNSAFE.search(result.output), repr(result.output)
    assert "\x1b]8;" not in result.output


def test_directory_nodes_shows_whole_node_ids_and_dates(tmp_path: Path) -> None:
    """`openred directory nodes` cut node ids and URLs to fit 80 columns ("hlwapzsrihhl…"): the
    operator could not copy one to `openred directory revoke`; and it showed Unix seconds."""
    node_id = "hlwapzsrihhls3c5q4zk4mg3nrklpiqd"
    conn = sqlite3.connect(tmp_path / "openred.db")
    conn.execute("CREATE TABLE directory_nodes (node_id, status, api_url, version, last_seen, "
                 "registered_at)")
    conn.execute("INSERT INTO directory_nodes VALUES (?, 'active', ?, 1, ?, ?)",
                 (node_id, "http://127.0.0.1:18701", 1796212198, 1796211587))
    conn.commit()
    conn.close()
    result = CliRunner().invoke(main, ["directory", "nodes", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "…" not in result.output, result.output
    assert "1796212198" not in result.output and "2026-12-02" in result.output, result.output
