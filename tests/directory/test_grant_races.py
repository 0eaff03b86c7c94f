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
    async def leave(alice: Any, bob: Any) -> None:
        assert (await bob.call("DELETE", f"/api/v3/nodes/{bob.node_id}")).status == 200

    alice, bob, reply = await _held_grant(directory, make_node, monkeypatch, leave)
    assert reply.status == 404, reply.body
    assert reply.json()["type"] == "urn:openred:problem:unknown-target"
    assert bob.received == [] and alice.received == []
    assert _last_types(directory, 3) == ["NodeDeregistered", "ConnectionGranted",
                                         "ConnectionGrantFailed"]


async def _held_grant(directory: Directory, make_node: Any, monkeypatch: Any,
                      meanwhile: Any) -> tuple[Any, Any, Any]:
    """Alice asks for a grant to Bob; ``meanwhile(alice, bob)`` runs while its entry waits."""
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
    await meanwhile(alice, bob)
    release.set()
    return alice, bob, await grant


def _last_types(directory: Directory, n: int) -> list[str]:
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        types = [r[0] for r in conn.execute("SELECT type FROM events ORDER BY seq")]
    return types[-n:]


async def test_a_target_revoked_by_another_process_while_its_grant_is_minted_gets_nothing(
    directory: Directory, make_node: Any, monkeypatch: Any,
) -> None:
    """``openred directory revoke`` (its own connections) lands between the decision and the
    grant's entry: the grant is refused and never pushed, though no view of this process was
    touched by an append of its own."""
    from tests.directory.test_cache_revoke import revoke_elsewhere

    async def revoke(alice: Any, bob: Any) -> None:
        await revoke_elsewhere(directory, bob.node_id)

    alice, bob, reply = await _held_grant(directory, make_node, monkeypatch, revoke)
    assert reply.status == 403, reply.body
    assert bob.received == [] and alice.received == []
    assert _last_types(directory, 3) == ["NodeRevoked", "ConnectionGranted",
                                         "ConnectionGrantFailed"]


async def test_a_target_that_moves_its_record_while_its_grant_is_minted_gets_nothing(
    directory: Directory, make_node: Any, monkeypatch: Any,
) -> None:
    """Bob registers a new record (new hash) between the decision and the grant's entry: the
    grant names the old record, so it is refused (409 record-changed), never pushed."""

    async def move(alice: Any, bob: Any) -> None:
        assert (await bob.register()).status == 200

    alice, bob, reply = await _held_grant(directory, make_node, monkeypatch, move)
    assert reply.status == 409, reply.body
    assert reply.json()["type"] == "urn:openred:problem:record-changed"
    assert bob.received == [] and alice.received == []
    assert _last_types(directory, 3) == ["NodeUpdated", "ConnectionGranted",
                                         "ConnectionGrantFailed"]


async def test_a_grant_with_nothing_logged_meanwhile_is_delivered(
    directory: Directory, make_node: Any, monkeypatch: Any,
) -> None:
    """The other side of the check: an unrelated node registering meanwhile changes nothing."""

    async def unrelated(alice: Any, bob: Any) -> None:
        assert (await (await make_node()).register()).status == 201

    alice, bob, reply = await _held_grant(directory, make_node, monkeypatch, unrelated)
    assert reply.status == 201, reply.body
    assert len(bob.received) == 1 and len(alice.received) == 1


async def test_a_revocation_seen_by_another_request_during_the_decisions_read_still_counts(
    directory: Directory, make_node: Any,
) -> None:
    """The decision's read of Bob is under way when another process revokes him, and another
    request's cache check accounts for that revocation before the read returns what it saw
    (active). The grant must still be refused: the post-append check compares with the cache's
    state from before the decision's reads, not after."""
    from tests.directory.test_cache_revoke import SlowRead, revoke_elsewhere

    service = directory.service
    alice, bob = await make_node(), await make_node()
    for node in (alice, bob):
        assert (await node.register()).status == 201
    assert await service.node(alice.node_id) is not None  # cached: only Bob's read is held
    service._cache.views.pop(bob.node_id, None)
    slow = SlowRead(service)
    grant = asyncio.ensure_future(alice.call("POST", PATH, {"target": bob.node_id}))
    await asyncio.wait_for(slow.read.wait(), 10)
    await revoke_elsewhere(directory, bob.node_id)
    service._cache.check()  # what any other request arriving now does first
    slow.resume.set()
    reply = await grant
    assert reply.status == 403, reply.body
    assert bob.received == [] and alice.received == []
    assert _last_types(directory, 3) == ["NodeRevoked", "ConnectionGranted",
                                         "ConnectionGrantFailed"]
