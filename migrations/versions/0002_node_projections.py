"""The node's projection tables: registration, peers, tokens, sessions, inbox.

The first revision of the ``node`` branch: a node's log is migrated to ``node@head``
(openred/store/migrate.py), a directory's to ``directory@head``; both grow from ``0001``.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-25
"""

from __future__ import annotations

from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = ("node",)
depends_on = None

TABLES = {
    "registration": """
        CREATE TABLE registration (
            directory     TEXT PRIMARY KEY,
            node_id       TEXT NOT NULL,
            api_url       TEXT NOT NULL,
            registered_at TEXT NOT NULL
        )""",
    "peers": """
        CREATE TABLE peers (
            node_id         TEXT PRIMARY KEY,
            api_url         TEXT NOT NULL,
            sign_key        TEXT NOT NULL,
            box_key         TEXT NOT NULL,
            updated_at      TEXT NOT NULL,
            last_session_at TEXT
        )""",
    "tokens": """
        CREATE TABLE tokens (
            grant_id        TEXT PRIMARY KEY,
            peer            TEXT NOT NULL,
            role            TEXT NOT NULL CHECK (role IN ('initiator', 'responder')),
            suite           TEXT NOT NULL,
            issued_at       INTEGER NOT NULL,
            expires_at      INTEGER NOT NULL,
            grant           TEXT NOT NULL,
            grant_signature TEXT NOT NULL,
            sealed_token    TEXT NOT NULL,
            received_at     TEXT NOT NULL
        )""",
    "sessions": """
        CREATE TABLE sessions (
            session_id     TEXT PRIMARY KEY,
            peer           TEXT NOT NULL,
            grant_id       TEXT NOT NULL,
            role           TEXT NOT NULL,
            suite          TEXT NOT NULL,
            state          TEXT NOT NULL CHECK (state IN ('active', 'expired', 'closed')),
            established_at TEXT NOT NULL,
            expires_at     INTEGER NOT NULL,
            wrapped_state  TEXT NOT NULL
        )""",
    "inbox": """
        CREATE TABLE inbox (
            message_id  TEXT PRIMARY KEY,
            session_id  TEXT NOT NULL,
            peer        TEXT NOT NULL,
            size        INTEGER NOT NULL,
            body        TEXT NOT NULL,
            received_at TEXT NOT NULL
        )""",
}


def upgrade() -> None:
    for statement in TABLES.values():
        op.execute(statement)


def downgrade() -> None:
    for name in reversed(list(TABLES)):
        op.execute(f"DROP TABLE {name}")
