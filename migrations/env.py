"""Alembic environment: migrate one OpenRed SQLite database.

The database comes from the connection the store passes in ``config.attributes["connection"]``,
or from ``-x db=PATH`` on the command line.
"""

from __future__ import annotations

import sqlite3

from alembic import context
from sqlalchemy import create_engine

config = context.config


def run_migrations() -> None:
    connection = config.attributes.get("connection")
    if connection is not None:
        context.configure(connection=connection, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    db = context.get_x_argument(as_dictionary=True).get("db")
    if not db:
        raise SystemExit("usage: alembic -x db=PATH/openred.db upgrade head")
    engine = create_engine("sqlite://", creator=lambda: sqlite3.connect(db))
    with engine.connect() as conn:
        context.configure(connection=conn, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("offline (SQL script) mode is not supported; run against a database")
run_migrations()
