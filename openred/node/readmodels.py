"""The node's read models: SQLModel classes over the projection tables (DESIGN §8, §10).

The store writes these tables (projections, in the append's transaction); services read them
through an async SQLAlchemy session over aiosqlite. The classes use their own SQLModel
registry, so the node's metadata holds exactly the node's tables (the directory keeps its own),
and a test holds them equal to what migrations 0002 and 0004 create (Alembic autogenerate finds
no difference).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

from sqlalchemy import Integer, MetaData, Text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.orm import registry
from sqlmodel import Field, SQLModel
from sqlmodel.ext.asyncio.session import AsyncSession

__all__ = [
    "NODE_METADATA",
    "DirectoryCheckpointRow",
    "GrantOutcomeRow",
    "InboxRow",
    "OutboxRow",
    "PeerRow",
    "ReadModels",
    "RegistrationRow",
    "SessionRow",
    "TokenRow",
]

_registry = registry(metadata=MetaData())
NODE_METADATA = _registry.metadata
"""Metadata of every node projection table (and nothing else)."""


class _NodeModel(SQLModel, registry=_registry):
    pass


# Small text-keyed tables are WITHOUT ROWID in migration 0004 (see its docstring).
_WITHOUT_ROWID = {"sqlite_with_rowid": False}


def _text(*, primary_key: bool = False, nullable: bool = False) -> str:
    return Field(sa_type=Text, primary_key=primary_key, nullable=nullable)  # type: ignore[no-any-return]


class RegistrationRow(_NodeModel, table=True):
    __tablename__ = "registration"
    __table_args__ = _WITHOUT_ROWID
    directory: str = _text(primary_key=True)
    node_id: str = _text()
    api_url: str = _text()
    registered_at: str = _text()


class PeerRow(_NodeModel, table=True):
    __tablename__ = "peers"
    __table_args__ = _WITHOUT_ROWID
    node_id: str = _text(primary_key=True)
    api_url: str = _text()
    sign_key: str = _text()
    box_key: str = _text()
    updated_at: str = _text()
    last_session_at: str | None = Field(default=None, sa_type=Text, nullable=True)


class TokenRow(_NodeModel, table=True):
    """A received token not yet used or expired (the row is deleted once it is)."""

    __tablename__ = "tokens"
    __table_args__ = _WITHOUT_ROWID
    grant_id: str = _text(primary_key=True)
    peer: str = _text()
    role: str = _text()
    suite: str = _text()
    issued_at: int = Field(sa_type=Integer, nullable=False)
    expires_at: int = Field(sa_type=Integer, nullable=False)
    grant: str = _text()
    grant_signature: str = _text()
    sealed_token: str = _text()
    received_at: str = _text()


class GrantOutcomeRow(_NodeModel, table=True):
    """How a grant ended: ``consumed`` (by which session) or ``expired``; kept forever."""

    __tablename__ = "grant_outcomes"
    __table_args__ = _WITHOUT_ROWID
    grant_id: str = _text(primary_key=True)
    outcome: str = _text()
    session_id: str | None = Field(default=None, sa_type=Text, nullable=True)
    recorded_at: str = _text()


class SessionRow(_NodeModel, table=True):
    __tablename__ = "sessions"
    session_id: str = _text(primary_key=True)
    peer: str = _text()
    grant_id: str = _text()
    role: str = _text()
    suite: str = _text()
    state: str = _text()
    established_at: str = _text()
    expires_at: int = Field(sa_type=Integer, nullable=False)
    wrapped_state: str = _text()
    renew_at: int | None = Field(default=None, sa_type=Integer, nullable=True)
    renewed_by: str | None = Field(default=None, sa_type=Text, nullable=True)


class InboxRow(_NodeModel, table=True):
    """A received message; ``body`` is still wrapped by the jail."""

    __tablename__ = "inbox"
    message_id: str = _text(primary_key=True)
    session_id: str = _text()
    peer: str = _text()
    size: int = Field(sa_type=Integer, nullable=False)
    body: str = _text()
    received_at: str = _text()


class OutboxRow(_NodeModel, table=True):
    """A sent message (body wrapped by the jail) and when its delivery receipt came back."""

    __tablename__ = "outbox"
    message_id: str = _text(primary_key=True)
    session_id: str = _text()
    peer: str = _text()
    size: int = Field(sa_type=Integer, nullable=False)
    body: str = _text()
    sent_at: str = _text()
    delivered_at: str | None = Field(default=None, sa_type=Text, nullable=True)


class DirectoryCheckpointRow(_NodeModel, table=True):
    """The newest directory checkpoint this node verified a grant against."""

    __tablename__ = "directory_checkpoint"
    __table_args__ = _WITHOUT_ROWID
    origin: str = _text(primary_key=True)
    size: int = Field(sa_type=Integer, nullable=False)
    checkpoint: str = _text()


class ReadModels:
    """An async engine over a node database (aiosqlite), for reading projection tables."""

    def __init__(self, engine: AsyncEngine) -> None:
        self.engine = engine

    @classmethod
    def open(cls, database: Path) -> ReadModels:
        engine = create_async_engine(f"sqlite+aiosqlite:///{database}")
        return cls(engine)

    @asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        async with AsyncSession(self.engine, expire_on_commit=False) as session:
            yield session

    async def close(self) -> None:
        await self.engine.dispose()


# The built-in modules' read models join the node's metadata (they subclass _NodeModel).
import openred.modules.file_sharing.readmodels as _file_sharing_readmodels  # noqa: E402, F401
