"""Apply the Alembic migrations to a database when the store opens it.

The migrations form one tree rooted at ``0001`` (the log: events, checkpoints, projection
positions), with one branch per *kind* of log: ``node`` (revision ``0002`` and after), the
directory's ``directory`` branch, and so on. A log of kind ``K`` is migrated to ``K@head``: the
log tables plus that kind's projection tables, never another kind's.

The migration scripts live in ``migrations/`` at the root of the source tree (where developers
run ``alembic`` by hand) and are installed with the package as ``openred/store/migrations``
(``setup.py`` maps the one onto the other), so an installed wheel migrates without a source tree.
"""

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

from openred.errors import ConfigurationError, SchemaError
from openred.store.chain import DEFAULT_KIND

__all__ = ["DEFAULT_KIND", "check_kind", "head_revision", "kinds", "migrations_dir", "upgrade"]

_INSTALLED = Path(__file__).resolve().parent / "migrations"
_SOURCE_TREE = Path(__file__).resolve().parents[2] / "migrations"


def migrations_dir() -> Path:
    """Where the migration scripts are: inside the installed package, or the source tree's."""
    for candidate in (_INSTALLED, _SOURCE_TREE):
        if (candidate / "env.py").is_file() and (candidate / "versions").is_dir():
            return candidate
    raise SchemaError(
        f"the migrations are missing: neither {_INSTALLED} nor {_SOURCE_TREE} holds them"
    )


@lru_cache(maxsize=1)
def _config() -> Config:
    # No alembic.ini is needed: the store sets the one option Alembic requires itself. The
    # alembic.ini at the repository root is for developers running ``alembic`` by hand.
    config = Config()
    config.set_main_option("script_location", str(migrations_dir()))
    return config


@lru_cache(maxsize=1)
def _script() -> ScriptDirectory:
    return ScriptDirectory.from_config(_config())


@lru_cache(maxsize=1)
def kinds() -> frozenset[str]:
    """The kinds of log the migrations know: the branch labels of the migration tree."""
    return frozenset(
        label for script in _script().walk_revisions() for label in script.branch_labels
    )


def check_kind(kind: str) -> None:
    """ConfigurationError unless ``kind`` names a branch of the migrations."""
    if kind not in kinds():
        raise ConfigurationError(
            f"unknown kind of log {kind!r}: the migrations know {sorted(kinds())}"
        )


@lru_cache(maxsize=16)
def head_revision(kind: str = DEFAULT_KIND) -> str:
    """The newest migration revision of the ``kind`` branch this code knows."""
    check_kind(kind)
    head = _script().get_revision(f"{kind}@head")
    if head is None:  # pragma: no cover - a known label always has a head
        raise SchemaError(f"no migrations found for {kind!r}")
    return head.revision


@lru_cache(maxsize=16)
def _lineage(kind: str) -> frozenset[str]:
    """Every revision a ``kind`` database passes through: its branch and the shared root."""
    return frozenset(
        s.revision for s in _script().iterate_revisions(head_revision(kind), "base")
    )


def _kind_of(revision: str) -> str:
    """The kind whose branch holds ``revision`` (the shared root belongs to every kind)."""
    owners = sorted(k for k in kinds() if revision in _lineage(k))
    return owners[0] if len(owners) == 1 else "/".join(owners)


def current_revisions(conn: sqlite3.Connection) -> tuple[str, ...]:
    """The revisions a database is at (empty for a database never migrated)."""
    try:
        rows = conn.execute("SELECT version_num FROM alembic_version").fetchall()
    except sqlite3.DatabaseError:
        return ()
    return tuple(sorted(str(r[0]) for r in rows))


def current_revision(conn: sqlite3.Connection) -> str | None:
    """The revision a database is at (None for a database never migrated)."""
    revisions = current_revisions(conn)
    return revisions[0] if len(revisions) == 1 else None


def check_revisions(revisions: tuple[str, ...], kind: str, where: object) -> None:
    """Refuse a database whose revisions are unknown (SchemaError) or another kind's."""
    known = {s.revision for s in _script().walk_revisions()}
    lineage = _lineage(kind)
    for revision in revisions:
        if revision not in known:
            raise SchemaError(f"{where} is at revision {revision}, newer than this code knows")
        if revision not in lineage:
            raise ConfigurationError(
                f"{where} is a {_kind_of(revision)} database (revision {revision}), "
                f"not a {kind} one"
            )


def upgrade(path: Path, kind: str = DEFAULT_KIND) -> None:
    """Bring the database at ``path`` to ``kind@head`` (a no-op when it is there already)."""
    target = head_revision(kind)
    with sqlite3.connect(path) as probe:
        revisions = current_revisions(probe)
    probe.close()
    if revisions == (target,):
        return
    check_revisions(revisions, kind, path)
    # The connection is made by sqlite3 itself: a URL would read "?" or "#" in the path as the
    # start of a query or fragment and migrate another file.
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(path),
                           poolclass=NullPool)
    try:
        with engine.begin() as connection:
            config = _config()
            config.attributes["connection"] = connection
            try:
                command.upgrade(config, f"{kind}@head")
            finally:
                config.attributes.pop("connection", None)
    except SQLAlchemyError as exc:
        raise SchemaError(f"migrating {path} failed: {exc}") from exc
    finally:
        engine.dispose()
