"""The node's SQLModel read models are exactly what the migrations create, and they read."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlalchemy.pool import NullPool

from openred.node.projections import node_projections
from openred.node.readmodels import NODE_METADATA, PeerRow, ReadModels
from openred.store.migrate import upgrade


def node_tables() -> set[str]:
    return set(node_projections().tables())


def test_every_projection_table_has_a_read_model_and_nothing_else() -> None:
    assert set(NODE_METADATA.tables) == node_tables()


def test_autogenerate_finds_no_difference_between_models_and_migrations(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    upgrade(db)
    engine = create_engine(f"sqlite:///{db}", poolclass=NullPool)
    tables = node_tables()

    def include_name(name: str | None, type_: str, parent: Any) -> bool:
        return type_ != "table" or name in tables

    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "include_name": include_name, "compare_type": True,
                "compare_server_default": True,
            })
            diff = compare_metadata(context, NODE_METADATA)
    finally:
        engine.dispose()
    assert diff == []


def test_a_changed_model_would_be_found(tmp_path: Path) -> None:
    # The comparison is not vacuous: a column the migrations lack shows up.
    from sqlalchemy import Column, Integer, MetaData

    db = tmp_path / "node.db"
    upgrade(db)
    changed = MetaData()
    for table in NODE_METADATA.tables.values():
        copy = table.to_metadata(changed)
        if table.name == "peers":
            copy.append_column(Column("rating", Integer))
    engine = create_engine(f"sqlite:///{db}", poolclass=NullPool)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={
                "include_name": lambda n, t, p: t != "table" or n in node_tables()})
            diff = compare_metadata(context, changed)
    finally:
        engine.dispose()
    assert [d[0] for d in diff] == ["add_column"]


def test_the_read_models_read_projection_rows_over_aiosqlite(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    upgrade(db)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO peers VALUES ('p', 'https://p', 'sk', 'bk', 't', NULL)")
    conn.commit()
    conn.close()

    async def read() -> PeerRow | None:
        reads = ReadModels.open(db)
        try:
            async with reads.session() as s:
                return await s.get(PeerRow, "p")
        finally:
            await reads.close()

    row = asyncio.run(read())
    assert row is not None and (row.api_url, row.last_session_at) == ("https://p", None)


def migrate(db: Path, action: str, revision: str) -> None:
    from alembic import command

    from openred.store.migrate import _config

    engine = create_engine(f"sqlite:///{db}", poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = _config()
            config.attributes["connection"] = connection
            try:
                getattr(command, action)(config, revision)
            finally:
                config.attributes.pop("connection", None)
    finally:
        engine.dispose()


def schema(db: Path) -> dict[str, str]:
    conn = sqlite3.connect(db)
    try:
        return {name: " ".join(sql.split()) for name, sql in conn.execute(
            "SELECT name, sql FROM sqlite_master WHERE type = 'table'")}
    finally:
        conn.close()


def test_0004_keeps_every_row_of_0002_and_downgrades_to_its_schema(tmp_path: Path) -> None:
    db = tmp_path / "node.db"
    migrate(db, "upgrade", "0002")
    before = schema(db)
    conn = sqlite3.connect(db)
    conn.execute("INSERT INTO peers VALUES ('p', 'u', 's', 'b', 't', NULL)")
    conn.execute("INSERT INTO sessions VALUES ('s', 'p', 'g', 'initiator', 'x', 'active', "
                 "'t', 5, 'w')")
    conn.commit()
    conn.close()
    migrate(db, "upgrade", "0004")
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT * FROM sessions").fetchall() == [
        ("s", "p", "g", "initiator", "x", "active", "t", 5, "w", None, None)]
    assert conn.execute("SELECT node_id FROM peers").fetchall() == [("p",)]
    conn.close()
    migrate(db, "downgrade", "0002")
    assert schema(db) == before
    conn = sqlite3.connect(db)
    assert conn.execute("SELECT * FROM sessions").fetchall() == [
        ("s", "p", "g", "initiator", "x", "active", "t", 5, "w")]
    conn.close()
