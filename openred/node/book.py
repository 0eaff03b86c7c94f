"""What the node's services read: token states, peers, sessions, from the read models.

Reads go through SQLModel's async session over aiosqlite (:mod:`openred.node.readmodels`);
the rows are turned into the domain values the decisions take.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlmodel import col, func, select
from sqlmodel.ext.asyncio.session import AsyncSession

from openred.crypto.grants import Grant
from openred.crypto.identity import BoxKey, NodeId, SignKey, from_b64url
from openred.errors import OpenRedError, StoreError
from openred.node.readmodels import (
    DirectoryCheckpointRow,
    GrantOutcomeRow,
    PeerRow,
    ReadModels,
    SessionRow,
    TokenRow,
)
from openred.node.tokens import (
    HeldCheckpoint,
    HeldToken,
    PeerInfo,
    TokenState,
    TokenStatus,
)

__all__ = ["NodeBook"]

_EVENTS_VERSION = text("SELECT max(stream_version) FROM events WHERE stream = :stream")


def _held(row: TokenRow) -> HeldToken:
    try:
        grant = Grant.from_canonical(from_b64url(row.grant))
        return HeldToken(grant, from_b64url(row.grant_signature), from_b64url(row.sealed_token),
                         row.role)
    except (ValueError, OpenRedError) as exc:
        raise StoreError(f"token row {row.grant_id} is damaged") from exc


class NodeBook:
    """Typed reads of the node's projection tables."""

    def __init__(self, reads: ReadModels) -> None:
        self.reads = reads

    async def token_state(self, grant_id: str) -> TokenState:
        async with self.reads.session() as s:
            outcome = await s.get(GrantOutcomeRow, grant_id)
            if outcome is not None:
                status = TokenStatus(outcome.outcome)
                return TokenState(status, version=await self._version(s, f"grant:{grant_id}"))
            row = await s.get(TokenRow, grant_id)
            if row is None:
                return TokenState(TokenStatus.UNKNOWN)
            version = await self._version(s, f"grant:{grant_id}")
        return TokenState(TokenStatus.RECEIVED, _held(row), version)

    async def received_tokens(self) -> list[TokenState]:
        """Every token received and not yet consumed or expired."""
        async with self.reads.session() as s:
            rows = (await s.exec(select(TokenRow))).all()
        return [TokenState(TokenStatus.RECEIVED, _held(r), 1) for r in rows]

    @staticmethod
    async def _version(s: AsyncSession, stream: str) -> int:
        conn = await s.connection()
        value = (await conn.execute(_EVENTS_VERSION, {"stream": stream})).scalar()
        return int(value or 0)

    async def peer(self, node_id: str) -> PeerInfo | None:
        async with self.reads.session() as s:
            row = await s.get(PeerRow, node_id)
        if row is None:
            return None
        return PeerInfo(NodeId(row.node_id), row.api_url, SignKey.from_b64url(row.sign_key),
                        BoxKey.from_b64url(row.box_key))

    async def directory_checkpoint(self, origin: str | None = None) -> HeldCheckpoint | None:
        """The largest directory checkpoint held; of the log ``origin`` when given (the
        pinned directory's: one held of a directory pinned before does not count)."""
        query = select(DirectoryCheckpointRow)
        if origin is not None:
            query = query.where(col(DirectoryCheckpointRow.origin) == origin)
        async with self.reads.session() as s:
            row = (await s.exec(
                query.order_by(col(DirectoryCheckpointRow.size).desc()).limit(1)
            )).first()
        if row is None:
            return None
        return HeldCheckpoint(row.origin, row.size, row.checkpoint)

    async def session(self, session_id: str) -> SessionRow | None:
        async with self.reads.session() as s:
            return await s.get(SessionRow, session_id)

    async def sessions(self, *, state: str | None = None) -> list[SessionRow]:
        query = select(SessionRow)
        if state is not None:
            query = query.where(col(SessionRow.state) == state)
        async with self.reads.session() as s:
            return list((await s.exec(query)).all())

    async def count_tokens(self) -> int:
        async with self.reads.session() as s:
            return int((await s.exec(select(func.count()).select_from(TokenRow))).one())
