"""The node services' tables: grant outcomes, outbox, the directory checkpoint; session renewal.

``grant_outcomes`` keeps how every grant ended (consumed or expired) after its token row is
cleaned, so a grant is used at most once ever and the handshake can tell unknown (404) from
used (409) from expired (410). ``outbox`` holds sent messages and their delivery receipts;
``directory_checkpoint`` the newest directory checkpoint a grant was verified against.
``sessions`` gains ``renew_at`` (80 % of the session's life) and ``renewed_by``.

Revision ID: 0004
Revises: 0002
Create Date: 2026-12-01
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

TABLES = {
    "grant_outcomes": """
        CREATE TABLE grant_outcomes (
            grant_id    TEXT PRIMARY KEY,
            outcome     TEXT NOT NULL CHECK (outcome IN ('consumed', 'expired')),
            session_id  TEXT,
            recorded_at TEXT NOT NULL
        )""",
    "outbox": """
        CREATE TABLE outbox (
            message_id   TEXT PRIMARY KEY,
            session_id   TEXT NOT NULL,
            peer         TEXT NOT NULL,
            size         INTEGER NOT NULL,
            body         TEXT NOT NULL,
            sent_at      TEXT NOT NULL,
            delivered_at TEXT
        )""",
    "directory_checkpoint": """
        CREATE TABLE directory_checkpoint (
            origin     TEXT PRIMARY KEY,
            size       INTEGER NOT NULL,
            checkpoint TEXT NOT NULL
        )""",
}


def upgrade() -> None:
    for statement in TABLES.values():
        op.execute(statement)
    op.execute("ALTER TABLE sessions ADD COLUMN renew_at INTEGER")
    op.execute("ALTER TABLE sessions ADD COLUMN renewed_by TEXT")


def downgrade() -> None:
    with op.batch_alter_table("sessions") as batch:
        batch.drop_column("renewed_by")
        batch.drop_column("renew_at")
    for name in reversed(list(TABLES)):
        op.execute(f"DROP TABLE {name}")
