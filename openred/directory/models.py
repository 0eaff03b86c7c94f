"""The directory's read models, declared once as SQLModel tables (issue 7 §4).

Migration ``0003_directory`` creates exactly these tables (a test runs Alembic's autogenerate
comparison against them); the projections write their rows in the append's transaction; the
API reads them through SQLModel's async session (``openred.store.readmodels``).
"""

from __future__ import annotations

from sqlmodel import Field, SQLModel

__all__ = ["DIRECTORY_TABLES", "DirectoryGrant", "DirectoryNode"]


class DirectoryNode(SQLModel, table=True):
    """One node: its signed record, served verbatim, and its status."""

    __tablename__ = "directory_nodes"

    node_id: str = Field(primary_key=True)
    api_url: str
    sign_key: str
    box_key: str
    version: int
    issued_at: int
    record: str  # the record's RFC 8785 canonical JSON, exactly as the node signed it
    signature: str
    record_hash: str
    status: str = Field(index=True)  # active | stale | expired | revoked | deregistered
    last_seen: int
    registered_at: int
    updated_at: int


class DirectoryGrant(SQLModel, table=True):
    """One grant the directory minted (public fields only) and whether its pushes arrived."""

    __tablename__ = "directory_grants"

    grant_id: str = Field(primary_key=True)
    initiator: str = Field(index=True)
    responder: str = Field(index=True)
    issued_at: int
    expires_at: int
    suite: str
    state: str  # granted | failed
    failure: str | None = None


DIRECTORY_TABLES = (DirectoryNode.__tablename__, DirectoryGrant.__tablename__)
