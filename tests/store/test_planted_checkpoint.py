"""A row planted in the checkpoints table at a size the log has not reached yet."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from openred.directory import events as ev
from openred.directory.events import directory_registry
from openred.directory.projections import directory_projections
from openred.store.checkpoint import verify_checkpoint
from openred.store.events import NewEvent
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore


def event(i: int) -> NewEvent:
    return ev.revoked_event(f"{i:032d}", "r", 1_800_000_000)


async def open_store(path: Path, signer: InProcessSigner) -> SQLiteEventStore:
    return await SQLiteEventStore.open(path, signer, kind="directory",
                                       registry=directory_registry(),
                                       projections=directory_projections(), checkpoint_every=10)


async def test_a_checkpoint_row_planted_ahead_of_the_log_does_not_stop_its_checkpoints(
    tmp_path: Path,
) -> None:
    """Before: the open took the table's largest size as its last checkpoint, so a row at
    size 10**12 written while the log was stopped stopped every checkpoint the store signs
    (every 100 entries, every 60 s) for good, and a row at the very size the log reaches next
    was returned by ``checkpoint()`` as its signed note (and kept: the real one was never
    stored)."""
    signer = InProcessSigner.generate()
    store = await open_store(tmp_path, signer)
    await store.append([event(0)])
    size = store.head.size
    await store.close()
    with sqlite3.connect(tmp_path / "openred.db") as conn:
        conn.executemany("INSERT INTO checkpoints (size, root_hash, note, signed_at) "
                         "VALUES (?, ?, ?, 'x')",
                         [(10**12, bytes(32), b"planted"), (size + 12, bytes(32), b"planted")])
    store = await open_store(tmp_path, signer)
    try:
        await store.append([event(i) for i in range(1, 12)])
        assert store.head.size == size + 11
        for _ in range(40):  # the writer task signs it after the group (a few ms)
            with sqlite3.connect(tmp_path / "openred.db") as conn:
                sizes = [r[0] for r in conn.execute("SELECT size FROM checkpoints")]
            if [s for s in sizes if size < s <= size + 11]:
                break
            await asyncio.sleep(0.05)
        assert [s for s in sizes if size < s <= size + 11], sizes
        await store.append([event(12)])
        note = await store.checkpoint()
        assert verify_checkpoint(note, store.origin, store.sign_key).size == size + 12
    finally:
        await store.close()
