"""A grant raced by its target leaving (or being revoked): nothing is pushed after the fact."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from typing import Any

from openred.directory import events as ev
from openred.store.events import NewEvent, StoredEvent
from tests.directory.conftest import Directory

PATH = "/api/v3/tokens/request-connection"


async def test_a_target_that_deregisters_while_its_grant_is_minted_gets_nothing(
    directory: Directory, make_node: Any, monkeypatch: Any,
) -> None:
    """The grant's decision read the target active; it deregistered before the grant was
    logged. Before: the grant was logged after the target's ``NodeDeregistered`` and pushed to
    both nodes (201) — a grant to a node the directory no longer lists."""
    alice, bob = await make_node(), await make_node()
    assert (await alice.register()).status == 201
    assert (await bob.register()).status == 201
    svc = directory.service
    real_append = svc.append
    entered, release = asyncio.Event(), asyncio.Event()

    async def append(events: Sequence[NewEvent]) -> list[StoredEvent]:
        if any(e.type == ev.CONNECTION_GRANTED for e in events):
            entered.set()
            await release.wait()
        return await real_append(events)

    monkeypatch.setattr(svc, "append", append)
    grant = asyncio.ensure_future(alice.call("POST", PATH, {"target": bob.node_id}))
    await asyncio.wait_for(entered.wait(), 10)
    left = await bob.call("DELETE", f"/api/v3/nodes/{bob.node_id}")
    assert left.status == 200
    release.set()
    reply = await grant
    assert reply.status == 404, reply.body
    assert reply.json()["type"] == "urn:openred:problem:unknown-target"
    assert bob.received == [] and alice.received == []
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        types = [r[0] for r in conn.execute("SELECT type FROM events ORDER BY seq")]
    assert types[-3:] == ["NodeDeregistered", "ConnectionGranted", "ConnectionGrantFailed"]
