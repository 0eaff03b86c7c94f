"""Files the operator's commands read at rest: a path is exactly the file it names.

SQLite reads a ``file:`` URI's ``#`` as the start of a fragment and ``?`` as the start of the
query: a data directory named ``node#2`` handed unescaped to SQLite opened ``node`` instead —
read-write and creating it (``?mode=ro`` went into the fragment) — not ``node#2/openred.db``.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner

from openred.cli import main
from openred.modules.monitoring.health import database_writable
from openred.store.sqlite import key_history, readonly_uri
from tests.vectors import make_fixtures as mf


@pytest.mark.parametrize("name", ["dir#2", "dir?mode=rwc", "dir%23"])
def test_a_data_dir_with_uri_characters_reads_exactly_its_database(
    tmp_path: Path, name: str,
) -> None:
    data = tmp_path / name
    data.mkdir()
    db = asyncio.run(mf.build_closed_log(data / "openred.db"))
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
