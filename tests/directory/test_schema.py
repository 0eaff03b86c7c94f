"""The read models and migration 0003 describe the same tables (Alembic autogenerate agrees)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine
from sqlmodel import SQLModel

from openred.directory.events import directory_registry
from openred.directory.models import DIRECTORY_TABLES
from openred.directory.projections import directory_projections
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore


def test_autogenerate_finds_no_difference(tmp_path: Path) -> None:
    async def create() -> None:
        store = await SQLiteEventStore.open(
            tmp_path, InProcessSigner.generate(), kind="directory",
            registry=directory_registry(), projections=directory_projections())
        await store.close()

    asyncio.run(create())
    engine = create_engine(f"sqlite:///{tmp_path / 'openred.db'}")

    def ours(name: str | None, type_: str, parent: object) -> bool:
        # The log's own tables (events, checkpoints, positions) are not read models.
        return type_ != "table" or name in DIRECTORY_TABLES

    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(
                conn, opts={"compare_type": True, "include_name": ours})
            diff = compare_metadata(context, SQLModel.metadata)
            # The comparison does look: without the indexes it reports them.
            conn.exec_driver_sql("DROP INDEX ix_directory_nodes_status")
            assert compare_metadata(context, SQLModel.metadata)
    finally:
        engine.dispose()
    assert diff == []
