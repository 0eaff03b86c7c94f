"""The directory's read models: nodes and grants (openred/directory/models.py).

The first revision of the ``directory`` branch: a directory's log is migrated to
``directory@head``. The tables are exactly the SQLModel models (a test compares them with
Alembic's autogenerate); the directory's projections fill them.

Revision ID: 0003
Revises: 0001
Create Date: 2026-12-01
"""

from __future__ import annotations

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0003"
down_revision = "0001"
branch_labels = ("directory",)
depends_on = None


def upgrade() -> None:
    op.create_table(
        "directory_nodes",
        sa.Column("node_id", sqlmodel.AutoString(), nullable=False),
        sa.Column("api_url", sqlmodel.AutoString(), nullable=False),
        sa.Column("sign_key", sqlmodel.AutoString(), nullable=False),
        sa.Column("box_key", sqlmodel.AutoString(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("issued_at", sa.Integer(), nullable=False),
        sa.Column("record", sqlmodel.AutoString(), nullable=False),
        sa.Column("signature", sqlmodel.AutoString(), nullable=False),
        sa.Column("record_hash", sqlmodel.AutoString(), nullable=False),
        sa.Column("status", sqlmodel.AutoString(), nullable=False),
        sa.Column("last_seen", sa.Integer(), nullable=False),
        sa.Column("registered_at", sa.Integer(), nullable=False),
        sa.Column("updated_at", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("node_id"),
    )
    op.create_index("ix_directory_nodes_status", "directory_nodes", ["status"], unique=False)
    op.create_table(
        "directory_grants",
        sa.Column("grant_id", sqlmodel.AutoString(), nullable=False),
        sa.Column("initiator", sqlmodel.AutoString(), nullable=False),
        sa.Column("responder", sqlmodel.AutoString(), nullable=False),
        sa.Column("issued_at", sa.Integer(), nullable=False),
        sa.Column("expires_at", sa.Integer(), nullable=False),
        sa.Column("suite", sqlmodel.AutoString(), nullable=False),
        sa.Column("state", sqlmodel.AutoString(), nullable=False),
        sa.Column("failure", sqlmodel.AutoString(), nullable=True),
        sa.PrimaryKeyConstraint("grant_id"),
    )
    op.create_index("ix_directory_grants_initiator", "directory_grants", ["initiator"],
                    unique=False)
    op.create_index("ix_directory_grants_responder", "directory_grants", ["responder"],
                    unique=False)


def downgrade() -> None:
    op.drop_index("ix_directory_grants_responder", table_name="directory_grants")
    op.drop_index("ix_directory_grants_initiator", table_name="directory_grants")
    op.drop_table("directory_grants")
    op.drop_index("ix_directory_nodes_status", table_name="directory_nodes")
    op.drop_table("directory_nodes")
