"""Apply the Alembic migrations (``migrations/``) to a database when the store opens it."""

from __future__ import annotations

import sqlite3
from functools import lru_cache
from pathlib import Path

from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.pool import NullPool

from openred.errors import SchemaError

ROOT = Path(__file__).resolve().parents[2]


@lru_cache(maxsize=1)
def _config() -> Config:
    ini = ROOT / "alembic.ini"
    if not ini.is_file():
        raise SchemaError(f"alembic.ini not found at {ini}: OpenRed must run from its source tree")
    config = Config(str(ini))
    config.set_main_option("script_location", str(ROOT / "migrations"))
    return config


@lru_cache(maxsize=1)
def head_revision() -> str:
    """The newest migration revision this code knows."""
    head = ScriptDirectory.from_config(_config()).get_current_head()
    if head is None:
        raise SchemaError("no migrations found")
    return head


def current_revision(conn: sqlite3.Connection) -> str | None:
    """The revision a database is at (None for a database never migrated)."""
    try:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    except sqlite3.DatabaseError:
        return None
    return None if row is None else str(row[0])


def upgrade(path: Path) -> None:
    """Bring the database at ``path`` to the head revision (a no-op when it is there already)."""
    with sqlite3.connect(path) as probe:
        revision = current_revision(probe)
    probe.close()
    if revision == head_revision():
        return
    known = {s.revision for s in ScriptDirectory.from_config(_config()).walk_revisions()}
    if revision is not None and revision not in known:
        raise SchemaError(f"database is at revision {revision}, newer than this code knows")
    engine = create_engine(f"sqlite:///{path}", poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = _config()
            config.attributes["connection"] = connection
            try:
                command.upgrade(config, "head")
            finally:
                config.attributes.pop("connection", None)
    except SQLAlchemyError as exc:
        raise SchemaError(f"migrating {path} failed: {exc}") from exc
    finally:
        engine.dispose()
