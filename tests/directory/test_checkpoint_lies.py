"""The checkpoint the directory serves is one it signed over its own log, whatever rows were
inserted into its ``checkpoints`` table (INSERT passes its append-only triggers)."""

from __future__ import annotations

import sqlite3
from typing import Any

import pytest

from openred.store.checkpoint import parse_checkpoint_body, parse_signed_note
from tests.directory.conftest import Directory

CHECKPOINT = "/api/v3/directory/checkpoint"


@pytest.mark.parametrize("note", [b"not a note", b"\xff\xfe", b"older"])
async def test_a_planted_checkpoint_row_is_not_served(
    directory: Directory, make_node: Any, note: bytes,
) -> None:
    """A row of a larger size than the log's, whose note is no signed note, or the
    directory's own older note. Before: every ``GET /checkpoint`` read it as the newest and
    answered 422 "unverifiable" (blaming the caller) or an older checkpoint than the log's, so
    a node holding a newer one could not have its consistency proved."""
    node = await make_node(receive=False)
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        first = bytes(conn.execute("SELECT note FROM checkpoints ORDER BY size").fetchone()[0])
    assert (await node.register()).status == 201
    await directory.service.store.checkpoint()
    before = await node.call("GET", CHECKPOINT)
    assert before.status == 200, before.body
    if note == b"older":
        note = first
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        conn.execute("INSERT INTO checkpoints (size, root_hash, note, signed_at) "
                     "VALUES (1000000, ?, ?, 'x')", (bytes(32), note))
    reply = await node.call("GET", CHECKPOINT)
    assert reply.status in (200, 503), reply.body
    if reply.status == 200:
        served = reply.json()["checkpoint"].encode()
        size = parse_checkpoint_body(parse_signed_note(served).body).size
        assert size == directory.service.store.head.size
