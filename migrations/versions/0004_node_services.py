"""The node services' tables: grant outcomes, outbox, the directory checkpoint; session renewal.

``grant_outcomes`` keeps how every grant ended (consumed or expired) after its token row is
cleaned, so a grant is used at most once ever and the handshake can tell unknown (404) from
used (409) from expired (410). ``outbox`` holds sent messages and their delivery receipts;
``directory_checkpoint`` the newest directory checkpoint a grant was verified against.
``sessions`` gains ``renew_at`` (80 % of the session's life) and ``renewed_by``.

The tables of 0002 are rebuilt with ``NOT NULL`` on their primary keys: SQLite, unlike the
SQL standard, lets a TEXT primary key hold NULL unless told otherwise, and the read models
(SQLModel) declare the keys not null. Rows are copied unchanged. Tables of small rows keyed by
text (registration, peers, tokens, grant outcomes, the directory checkpoint) are ``WITHOUT
ROWID``: the primary key is the table's own b-tree, so a lookup reads one tree instead of an
index and a table, and there is no separate index that could disagree with the rows.

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

NEW_TABLES = {
    "grant_outcomes": """
        CREATE TABLE grant_outcomes (
            grant_id    TEXT NOT NULL PRIMARY KEY,
            outcome     TEXT NOT NULL CHECK (outcome IN ('consumed', 'expired')),
            session_id  TEXT,
            recorded_at TEXT NOT NULL
        ) WITHOUT ROWID""",
    "outbox": """
        CREATE TABLE outbox (
            message_id   TEXT NOT NULL PRIMARY KEY,
            session_id   TEXT NOT NULL,
            peer         TEXT NOT NULL,
            size         INTEGER NOT NULL,
            body         TEXT NOT NULL,
            sent_at      TEXT NOT NULL,
            delivered_at TEXT
        )""",
    "directory_checkpoint": """
        CREATE TABLE directory_checkpoint (
            origin     TEXT NOT NULL PRIMARY KEY,
            size       INTEGER NOT NULL,
            checkpoint TEXT NOT NULL
        ) WITHOUT ROWID""",
}

# 0002's tables as they become (columns in the same order, new ones last).
REBUILT = {
    "registration": ("""
        CREATE TABLE registration (
            directory     TEXT NOT NULL PRIMARY KEY,
            node_id       TEXT NOT NULL,
            api_url       TEXT NOT NULL,
            registered_at TEXT NOT NULL
        ) WITHOUT ROWID""", "directory, node_id, api_url, registered_at"),
    "peers": ("""
        CREATE TABLE peers (
            node_id         TEXT NOT NULL PRIMARY KEY,
            api_url         TEXT NOT NULL,
            sign_key        TEXT NOT NULL,
            box_key         TEXT NOT NULL,
            updated_at      TEXT NOT NULL,
            last_session_at TEXT
        ) WITHOUT ROWID""", "node_id, api_url, sign_key, box_key, updated_at, last_session_at"),
    "tokens": ("""
        CREATE TABLE tokens (
            grant_id        TEXT NOT NULL PRIMARY KEY,
            peer            TEXT NOT NULL,
            role            TEXT NOT NULL CHECK (role IN ('initiator', 'responder')),
            suite           TEXT NOT NULL,
            issued_at       INTEGER NOT NULL,
            expires_at      INTEGER NOT NULL,
            grant           TEXT NOT NULL,
            grant_signature TEXT NOT NULL,
            sealed_token    TEXT NOT NULL,
            received_at     TEXT NOT NULL
        ) WITHOUT ROWID""",
        "grant_id, peer, role, suite, issued_at, expires_at, grant, grant_signature, "
        "sealed_token, received_at"),
    "sessions": ("""
        CREATE TABLE sessions (
            session_id     TEXT NOT NULL PRIMARY KEY,
            peer           TEXT NOT NULL,
            grant_id       TEXT NOT NULL,
            role           TEXT NOT NULL,
            suite          TEXT NOT NULL,
            state          TEXT NOT NULL CHECK (state IN ('active', 'expired', 'closed')),
            established_at TEXT NOT NULL,
            expires_at     INTEGER NOT NULL,
            wrapped_state  TEXT NOT NULL,
            renew_at       INTEGER,
            renewed_by     TEXT
        )""", "session_id, peer, grant_id, role, suite, state, established_at, expires_at, "
              "wrapped_state"),
    "inbox": ("""
        CREATE TABLE inbox (
            message_id  TEXT NOT NULL PRIMARY KEY,
            session_id  TEXT NOT NULL,
            peer        TEXT NOT NULL,
            size        INTEGER NOT NULL,
            body        TEXT NOT NULL,
            received_at TEXT NOT NULL
        )""", "message_id, session_id, peer, size, body, received_at"),
}


def _compact(statement: str) -> str:
    """The statement on one line: SQLite keeps CREATE text verbatim in the schema table."""
    return " ".join(statement.split())


def _rebuild(name: str, create: str, columns: str) -> None:
    op.execute(f"ALTER TABLE {name} RENAME TO {name}_0002")
    op.execute(_compact(create))
    op.execute(f"INSERT INTO {name} ({columns}) SELECT {columns} FROM {name}_0002")  # noqa: S608
    op.execute(f"DROP TABLE {name}_0002")


def upgrade() -> None:
    for name, (create, columns) in REBUILT.items():
        _rebuild(name, create, columns)
    for statement in NEW_TABLES.values():
        op.execute(_compact(statement))


def _as_in_0002(create: str) -> str:
    """0002's statement: primary keys without NOT NULL, rowid tables, no renewal columns."""
    create = create.replace(" WITHOUT ROWID", "").replace("NOT NULL PRIMARY KEY", "PRIMARY KEY")
    lines = [line for line in create.split("\n") if "renew" not in line]
    body = "\n".join(lines)
    return body.replace("wrapped_state  TEXT NOT NULL,\n", "wrapped_state  TEXT NOT NULL\n")


def downgrade() -> None:
    for name in reversed(list(NEW_TABLES)):
        op.execute(f"DROP TABLE {name}")
    for name, (create, columns) in REBUILT.items():
        _rebuild(name, _as_in_0002(create), columns)
