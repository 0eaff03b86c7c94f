"""The append-only event log, its checkpoints and projection positions.

Revision ID: 0001
Revises:
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

# DESIGN §8. seq is assigned by the application (one chain, one writer at a time); the UNIQUE
# constraint is the optimistic-concurrency guard; triggers make the log append-only.
STATEMENTS = [
    """
    CREATE TABLE events (
        seq            INTEGER PRIMARY KEY,
        stream         TEXT    NOT NULL,
        stream_version INTEGER NOT NULL CHECK (stream_version >= 1),
        type           TEXT    NOT NULL,
        schema_version INTEGER NOT NULL CHECK (schema_version >= 1),
        recorded_at    TEXT    NOT NULL,
        payload        BLOB    NOT NULL,
        prev_hash      BLOB    NOT NULL CHECK (length(prev_hash) = 32),
        entry_hash     BLOB    NOT NULL CHECK (length(entry_hash) = 32),
        signature      BLOB    NOT NULL,
        CONSTRAINT events_stream_version UNIQUE (stream, stream_version)
    )
    """,
    """
    CREATE TRIGGER events_no_update BEFORE UPDATE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only: UPDATE refused'); END
    """,
    """
    CREATE TRIGGER events_no_delete BEFORE DELETE ON events
    BEGIN SELECT RAISE(ABORT, 'events are append-only: DELETE refused'); END
    """,
    """
    CREATE TABLE checkpoints (
        size       INTEGER PRIMARY KEY CHECK (size >= 1),
        root_hash  BLOB    NOT NULL CHECK (length(root_hash) = 32),
        note       BLOB    NOT NULL,
        signed_at  TEXT    NOT NULL
    )
    """,
    """
    CREATE TRIGGER checkpoints_no_update BEFORE UPDATE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only: UPDATE refused'); END
    """,
    """
    CREATE TRIGGER checkpoints_no_delete BEFORE DELETE ON checkpoints
    BEGIN SELECT RAISE(ABORT, 'checkpoints are append-only: DELETE refused'); END
    """,
    """
    CREATE TABLE projection_positions (
        name     TEXT    PRIMARY KEY,
        position INTEGER NOT NULL CHECK (position >= 0)
    )
    """,
]


def upgrade() -> None:
    for statement in STATEMENTS:
        op.execute(statement)


def downgrade() -> None:
    for name in ("projection_positions", "checkpoints", "events"):
        op.execute(f"DROP TABLE {name}")
