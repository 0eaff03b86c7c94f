"""SQLModel read models of the file_sharing tables (created by migration 0005).

They live in the node's metadata (:data:`openred.node.readmodels.NODE_METADATA`): the node kind
keeps every built-in module's tables, and the node's tests hold that metadata equal to what the
migrations create.
"""

from __future__ import annotations

from sqlalchemy import Integer, Text
from sqlmodel import Field

from openred.node.readmodels import _WITHOUT_ROWID, _NodeModel

__all__ = ["FileOfferRow", "FileTransferRow"]


class FileOfferRow(_NodeModel, table=True):
    """An offer sent or received and its state."""

    __tablename__ = "file_offers"
    __table_args__ = _WITHOUT_ROWID
    offer_id: str = Field(sa_type=Text, primary_key=True, nullable=False)
    direction: str = Field(sa_type=Text, nullable=False)
    peer: str = Field(sa_type=Text, nullable=False)
    session_id: str = Field(sa_type=Text, nullable=False)
    name: str = Field(sa_type=Text, nullable=False)
    size: int = Field(sa_type=Integer, nullable=False)
    digest: str = Field(sa_type=Text, nullable=False)
    root: str = Field(sa_type=Text, nullable=False)
    chunk_size: int = Field(sa_type=Integer, nullable=False)
    expires_at: int = Field(sa_type=Integer, nullable=False)
    state: str = Field(sa_type=Text, nullable=False)
    source: str | None = Field(default=None, sa_type=Text, nullable=True)
    mtime_ns: str | None = Field(default=None, sa_type=Text, nullable=True)
    offered_at: str = Field(sa_type=Text, nullable=False)


class FileTransferRow(_NodeModel, table=True):
    """A fetch on the receiver: state, verified bytes, final path or failure."""

    __tablename__ = "file_transfers"
    __table_args__ = _WITHOUT_ROWID
    offer_id: str = Field(sa_type=Text, primary_key=True, nullable=False)
    state: str = Field(sa_type=Text, nullable=False)
    verified_bytes: int = Field(sa_type=Integer, nullable=False)
    path: str | None = Field(default=None, sa_type=Text, nullable=True)
    reason: str | None = Field(default=None, sa_type=Text, nullable=True)
    detail: str | None = Field(default=None, sa_type=Text, nullable=True)
    started_at: str = Field(sa_type=Text, nullable=False)
    updated_at: str = Field(sa_type=Text, nullable=False)
