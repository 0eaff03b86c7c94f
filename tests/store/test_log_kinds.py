"""Kinds of log: each kind migrates its own branch and names itself in its genesis entry."""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from openred.errors import ConfigurationError
from openred.store import chain, migrate
from openred.store.codec import decode_payload
from openred.store.events import NewEvent
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.conftest import REPO_ROOT

OTHER_BRANCH = '''"""A second kind of log, for the tests only."""
from alembic import op

revision = "9001"
down_revision = "0001"
branch_labels = ("other",)
depends_on = None


def upgrade() -> None:
    op.execute("CREATE TABLE other_things (id TEXT PRIMARY KEY)")


def downgrade() -> None:
    op.execute("DROP TABLE other_things")
'''


def _clear_caches() -> None:
    for fn in (migrate._config, migrate._script, migrate.kinds, migrate.head_revision,
               migrate._lineage):
        fn.cache_clear()


@pytest.fixture
def two_kinds(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The real migrations plus a second branch ``other`` growing from 0001."""
    tree = tmp_path / "migrations"
    shutil.copytree(REPO_ROOT / "migrations", tree,
                    ignore=shutil.ignore_patterns("__pycache__"))
    (tree / "versions" / "9001_other.py").write_text(OTHER_BRANCH)
    monkeypatch.setattr(migrate, "_INSTALLED", tree)
    _clear_caches()
    yield
    _clear_caches()


def tables(db: Path) -> set[str]:
    with sqlite3.connect(db) as conn:
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    conn.close()
    return names


def genesis_payload(db: Path) -> dict[str, object]:
    with sqlite3.connect(db) as conn:
        row = conn.execute("SELECT payload FROM events WHERE seq = 1").fetchone()
    conn.close()
    return decode_payload(bytes(row[0]))


def test_the_node_migrations_are_a_branch_of_the_log() -> None:
    assert "node" in migrate.kinds()
    assert migrate.head_revision() == migrate.head_revision("node")
    assert "0001" in migrate._lineage("node")


async def test_a_new_log_names_its_kind_in_the_genesis_entry(tmp_path: Path) -> None:
    store = await SQLiteEventStore.open(tmp_path, InProcessSigner.generate())
    await store.close()
    assert store.kind == "node"
    assert genesis_payload(tmp_path / "openred.db")["kind"] == "node"


async def test_an_unknown_kind_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    with pytest.raises(ConfigurationError, match="unknown kind"):
        await SQLiteEventStore.open(tmp_path, InProcessSigner.generate(), kind="nonsense")
    assert not (tmp_path / "openred.db").exists()


async def test_each_kind_migrates_only_its_own_branch(tmp_path: Path, two_kinds: None) -> None:
    signer = InProcessSigner.generate()
    (tmp_path / "o").mkdir()
    (tmp_path / "n").mkdir()
    other = await SQLiteEventStore.open(tmp_path / "o", signer, kind="other")
    await other.close()
    node = await SQLiteEventStore.open(tmp_path / "n", signer, kind="node")
    await node.close()
    assert "other_things" in tables(tmp_path / "o" / "openred.db")
    assert "peers" not in tables(tmp_path / "o" / "openred.db")
    assert "peers" in tables(tmp_path / "n" / "openred.db")
    assert "other_things" not in tables(tmp_path / "n" / "openred.db")
    assert genesis_payload(tmp_path / "o" / "openred.db")["kind"] == "other"


async def test_a_log_opened_as_another_kind_is_refused_and_left_alone(
    tmp_path: Path, two_kinds: None
) -> None:
    signer = InProcessSigner.generate()
    store = await SQLiteEventStore.open(tmp_path, signer, kind="other")
    await store.close()
    db = tmp_path / "openred.db"
    before = tables(db)
    with pytest.raises(ConfigurationError, match="is a other log"):
        await SQLiteEventStore.open(tmp_path, signer, kind="node")
    assert tables(db) == before  # no node tables were migrated into it


async def test_a_database_migrated_for_another_kind_is_refused(
    tmp_path: Path, two_kinds: None
) -> None:
    db = tmp_path / "openred.db"
    migrate.upgrade(db, "other")  # migrated, but no log written yet
    with pytest.raises(ConfigurationError, match="other database"):
        await SQLiteEventStore.open(db, InProcessSigner.generate(), kind="node")
    assert "peers" not in tables(db)


async def test_an_old_log_without_a_kind_is_a_node_log(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, two_kinds: None
) -> None:
    def old_genesis(sign_key: object, kind: str = "node") -> NewEvent:
        event = chain.genesis_event(sign_key, kind)  # type: ignore[arg-type]
        payload = {k: v for k, v in event.payload.items() if k != "kind"}
        return NewEvent(event.stream, event.type, payload, expected_version=0)

    signer = InProcessSigner.generate()
    monkeypatch.setattr("openred.store.sqlite.genesis_event", old_genesis)
    store = await SQLiteEventStore.open(tmp_path, signer)
    await store.close()
    monkeypatch.setattr("openred.store.sqlite.genesis_event", chain.genesis_event)
    assert "kind" not in genesis_payload(tmp_path / "openred.db")
    store = await SQLiteEventStore.open(tmp_path, signer, kind="node")
    await store.close()
    with pytest.raises(ConfigurationError, match="is a node log"):
        await SQLiteEventStore.open(tmp_path, signer, kind="other")
