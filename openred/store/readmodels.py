"""Read models over a log's projection tables: SQLModel's async session on aiosqlite, read-only.

The store writes projection rows in the append's transaction (one writer thread); services read
them here, through a separate pool of read-only connections (``mode=ro``), so a query never
takes the write lock and never can write. SQLite in WAL mode lets these readers run while the
writer commits; each read sees the last committed state.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import event
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlmodel.ext.asyncio.session import AsyncSession

from openred.errors import StoreError

__all__ = ["ReadModels"]


class ReadModels:
    """A pool of read-only aiosqlite connections to one database, handed out as sessions."""

    def __init__(self, path: Path, *, pool_size: int = 4) -> None:
        self.path = Path(path)
        url = f"sqlite+aiosqlite:///file:{quote(str(self.path))}?mode=ro&uri=true"
        self.engine: AsyncEngine = create_async_engine(
            url, pool_size=pool_size, max_overflow=pool_size, pool_pre_ping=False,
        )
        event.listen(self.engine.sync_engine, "connect", _configure)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[AsyncSession]:
        """A read-only session; database failures become StoreError."""
        try:
            async with AsyncSession(self.engine, expire_on_commit=False) as session:
                yield session
        except SQLAlchemyError as exc:
            raise StoreError(f"reading {self.path} failed: {exc}") from exc

    async def close(self) -> None:
        await self.engine.dispose()


def _configure(dbapi_connection: object, _record: object) -> None:
    cursor = dbapi_connection.cursor()  # type: ignore[attr-defined]
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.execute("PRAGMA query_only=1")
    cursor.close()
