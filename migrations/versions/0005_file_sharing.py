"""The file_sharing module's tables: offers sent and received, transfers (DESIGN §11).

Both are keyed by the offer id (text) and ``WITHOUT ROWID``, like 0004's text-keyed tables:
the primary key is the table's own b-tree, with no separate index beside it.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None

TABLES = {
    "file_offers": """
        CREATE TABLE file_offers (
            offer_id   TEXT NOT NULL PRIMARY KEY,
            direction  TEXT NOT NULL CHECK (direction IN ('sent', 'received')),
            peer       TEXT NOT NULL,
            session_id TEXT NOT NULL,
            name       TEXT NOT NULL,
            size       INTEGER NOT NULL,
            digest     TEXT NOT NULL,
            root       TEXT NOT NULL,
            chunk_size INTEGER NOT NULL,
            expires_at INTEGER NOT NULL,
            state      TEXT NOT NULL
                       CHECK (state IN ('offered', 'revoked', 'declined', 'expired')),
            source     TEXT,
            mtime_ns   TEXT,
            offered_at TEXT NOT NULL
        ) WITHOUT ROWID""",
    "file_transfers": """
        CREATE TABLE file_transfers (
            offer_id       TEXT NOT NULL PRIMARY KEY,
            state          TEXT NOT NULL CHECK (state IN ('running', 'completed', 'failed')),
            verified_bytes INTEGER NOT NULL,
            path           TEXT,
            reason         TEXT,
            detail         TEXT,
            started_at     TEXT NOT NULL,
            updated_at     TEXT NOT NULL
        ) WITHOUT ROWID""",
}


def upgrade() -> None:
    for statement in TABLES.values():
        op.execute(" ".join(statement.split()))


def downgrade() -> None:
    for name in reversed(list(TABLES)):
        op.execute(f"DROP TABLE {name}")
