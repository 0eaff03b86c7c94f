"""Rows written into ``directory_nodes`` while the directory was stopped do not outlive its
start: it compares the table with its signed log and rebuilds it from the log."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import pytest

from openred.directory.service import DirectoryService
from tests.directory.conftest import Node
from tests.directory.test_witness import directory_jail, stopped_directory
from tests.servers import HOST


async def test_rows_edited_while_stopped_are_rebuilt_from_the_log_at_start(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:
    """Before: a revoked node set back to ``active`` and a node that never registered,
    written into the table while the directory was stopped, were listed by discovery as
    active nodes after the start (and a deleted row was missing from it)."""
    settings, _ = stopped_directory(tmp_path, monkeypatch)
    data_dir = settings.data_dir
    records = [Node(None, api_url=f"http://{HOST}:9").record()  # type: ignore[arg-type]
               for _ in range(3)]
    alice, bob, carol = (r.record.node_id for r in records)
    async with directory_jail(settings) as jail:
        service = await DirectoryService.open(settings, jail)
        try:
            for record in records:
                await service.register(record, signer=record.record.node_id)
            await service.revoke(bob, "compromised")
            honest = await service.discover_page(alice, status=None, limit=10, cursor=None)
        finally:
            await service.close()
        with sqlite3.connect(data_dir / "openred.db") as conn:
            conn.execute("UPDATE directory_nodes SET status = 'active' WHERE node_id = ?",
                         (bob,))
            conn.execute("DELETE FROM directory_nodes WHERE node_id = ?", (carol,))
            conn.execute("INSERT INTO directory_nodes SELECT 'aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa', "
                         "api_url, sign_key, box_key, version, issued_at, record, signature, "
                         "record_hash, status, last_seen, registered_at, updated_at "
                         "FROM directory_nodes WHERE node_id = ?", (alice,))
        caplog.set_level(logging.WARNING)
        service = await DirectoryService.open(settings, jail)
        try:
            page = await service.discover_page(alice, status=None, limit=10, cursor=None)
            counts = await service.counts()
        finally:
            await service.close()
    assert page == honest
    assert counts.get("revoked") == 1 and counts.get("active") == 2, counts
    assert "directory_nodes disagreed with the log" in caplog.text
    assert bob in caplog.text
