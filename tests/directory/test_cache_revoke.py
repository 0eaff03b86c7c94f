"""A revocation written by another connection is never hidden by the node cache.

:meth:`~openred.directory.service._NodeCache.check` used to tell a foreign entry from one of
this process's appends only by counting: while ``size <= known_size + inflight`` it kept every
cached view, since the new entries could be this process's own appends in flight. So an
``openred directory revoke`` committed while the serving directory had an append in flight (a
loaded directory nearly always has one) left the revoked node's cached ``active`` view in
place, and the directory went on granting it connections. These tests hold one of the serving
directory's appends in flight, revoke through a second :class:`DirectoryService` on the same
data directory (what the CLI opens: its own SQLite connections), and ask the served directory,
over real HTTP, for a grant to the revoked node.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from openred.directory import events as ev
from openred.directory.service import DirectoryService
from openred.store.events import NewEvent, StoredEvent
from tests.directory.conftest import Directory

CONNECT = "/api/v3/tokens/request-connection"


class HeldAppend:
    """The next append of ``service`` waits in flight until :meth:`release` (then commits)."""

    def __init__(self, service: DirectoryService) -> None:
        self.store = service.store
        self.real = service.store.append
        self.entered = asyncio.Event()
        self.gate = asyncio.Event()

        async def held(events: Sequence[NewEvent], *args: Any, **kwargs: Any,
                       ) -> list[StoredEvent]:
            self.store.append = self.real  # type: ignore[method-assign]
            self.entered.set()
            await self.gate.wait()
            return await self.real(events, *args, **kwargs)

        self.store.append = held  # type: ignore[method-assign]

    def release(self) -> None:
        self.gate.set()


async def revoke_elsewhere(directory: Directory, node_id: str) -> None:
    """``openred directory revoke``: a second service on the data directory revokes."""
    other = await DirectoryService.open(directory.settings, directory.service.jail)
    try:
        await other.revoke(node_id, "revoked by the operator")
    finally:
        await other.close()


async def test_a_revocation_committed_while_an_append_is_in_flight_stops_grants(
    directory: Directory, make_node: Callable[..., Any],
) -> None:
    service = directory.service
    alice, bob, carol = await make_node(), await make_node(), await make_node()
    for node in (alice, bob):
        assert (await node.register()).status == 201
    granted = await alice.call("POST", CONNECT, {"target": bob.node_id})
    assert granted.status == 201, granted.body  # bob's active view is cached now
    held = HeldAppend(service)
    registering = asyncio.create_task(carol.register())
    await held.entered.wait()  # carol's NodeRegistered is in flight, not committed
    try:
        await revoke_elsewhere(directory, bob.node_id)
        refused = await alice.call("POST", CONNECT, {"target": bob.node_id})
        assert refused.status == 403, refused.body
        beat = await bob.call("POST", "/api/v3/nodes/heartbeat", {})
        assert beat.status == 403, beat.body
    finally:
        held.release()
        assert (await registering).status == 201
    # Once carol's append is in, bob stays refused and the others are served from the cache.
    assert (await alice.call("POST", CONNECT, {"target": bob.node_id})).status == 403
    assert (await alice.call("POST", CONNECT, {"target": carol.node_id})).status == 201


async def test_a_foreign_entry_among_in_flight_ones_drops_only_the_views_it_touches(
    directory: Directory, make_node: Callable[..., Any],
) -> None:
    """What is known to be untouched stays cached; what another writer touched is read again."""
    service = directory.service
    alice, bob, carol = await make_node(), await make_node(), await make_node()
    for node in (alice, bob, carol):
        assert (await node.register()).status == 201
    for node in (alice, bob):
        await service.node(node.node_id)
    cache = service._cache
    cache.check()
    assert {alice.node_id, bob.node_id} <= set(cache.views)
    held = HeldAppend(service)
    appending = asyncio.create_task(service.append(
        [ev.revoked_event("c" * 32, "unrelated", service.now())]))
    await held.entered.wait()
    try:
        await revoke_elsewhere(directory, bob.node_id)
        cache.check()
        assert bob.node_id not in cache.views
        assert alice.node_id in cache.views
        view = await service.node(bob.node_id)
        assert view is not None and view.status == "revoked"
    finally:
        held.release()
        await appending
    cache.check()
    view = await service.node(bob.node_id)
    assert view is not None and view.status == "revoked"
