"""A revocation written by another connection is never hidden by the node cache.

:meth:`~openred.directory.service._NodeCache.check` used to tell a foreign entry from one of
this process's appends only by counting: while ``size <= known_size + inflight`` it kept every
cached view, since the new entries could be this process's own appends in flight. So an
``openred directory revoke`` committed while the serving directory had an append in flight (a
loaded directory nearly always has one) left the revoked node's cached ``active`` view in
place, and the directory went on granting it connections. These tests hold one of the serving
directory's appends in flight, revoke through a second :class:`DirectoryService` on the same
data directory (what the CLI opens: its own SQLite connections), and ask the served directory,
over real HTTP, for a grant to the revoked node. The last one revokes from this process while
a read of the node is under way and another append of this process returns late: the read's
stale view was cached after the revocation's own invalidation had already run.
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
    # Held until the revocation and two requests are done (a second service opens the log
    # meanwhile: seconds on a loaded machine, past the client's 10 s once under xdist).
    registering = asyncio.create_task(carol.register(timeout=120))
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


async def test_a_view_read_while_an_own_write_lands_out_of_order_is_not_cached_stale(
    directory: Directory, make_node: Callable[..., Any],
) -> None:
    """This process's appends may return out of seq order (a group commit's callers resume in
    any order): a read of bob that began before bob's revocation was appended, and ends after
    that append returned while an earlier append was still on its way back, must not be
    cached — the revocation's own invalidation already ran before the read ended."""
    service = directory.service
    alice, bob = await make_node(), await make_node()
    for node in (alice, bob):
        assert (await node.register()).status == 201
    cache = service._cache
    cache.views.clear()
    # 1. A read of bob starts (bob active in what it read) and is slow to come back.
    real_entries = service._node_entries
    read, resume = asyncio.Event(), asyncio.Event()

    async def slow_entries(node_id: str) -> list[StoredEvent]:
        service._node_entries = real_entries  # type: ignore[method-assign]
        entries = await real_entries(node_id)
        read.set()
        await resume.wait()
        return entries

    service._node_entries = slow_entries  # type: ignore[method-assign]
    reading = asyncio.create_task(service.node(bob.node_id))
    await read.wait()
    # 2. Bob is revoked by this process; after its check and before its append commits,
    #    another append of ours commits first (seq N+1) and its caller resumes only later.
    store = service.store
    real_append = store.append
    committed, back = asyncio.Event(), asyncio.Event()
    tasks: list[asyncio.Task[list[StoredEvent]]] = []

    async def late(events: Sequence[NewEvent], *args: Any, **kwargs: Any) -> list[StoredEvent]:
        stored = await real_append(events, *args, **kwargs)
        committed.set()
        await back.wait()
        return stored

    async def ordered(events: Sequence[NewEvent], *args: Any,
                      **kwargs: Any) -> list[StoredEvent]:
        store.append = late  # type: ignore[method-assign]
        tasks.append(asyncio.create_task(service.append(
            [ev.revoked_event("c" * 32, "unrelated", service.now())])))
        await committed.wait()
        store.append = real_append  # type: ignore[method-assign]
        return await real_append(events, *args, **kwargs)  # seq N+2, returned at once

    store.append = ordered  # type: ignore[method-assign]
    await service.revoke(bob.node_id, "revoked by the operator")
    resume.set()
    stale = await reading
    assert stale is not None and stale.status == "active"  # what that read saw
    back.set()
    await tasks[0]
    view = await service.node(bob.node_id)
    assert view is not None and view.status == "revoked"
    refused = await alice.call("POST", CONNECT, {"target": bob.node_id})
    assert refused.status == 403, refused.body


class SlowRead:
    """The next node read (its stream in the log) stops after its entries came, until
    released."""

    def __init__(self, service: DirectoryService) -> None:
        real_entries = service._node_entries
        self.read, self.resume = asyncio.Event(), asyncio.Event()
        self.sessions = 0
        outer = self

        async def slow_entries(node_id: str) -> list[StoredEvent]:
            service._node_entries = real_entries  # type: ignore[method-assign]
            outer.sessions += 1
            entries = await real_entries(node_id)
            outer.read.set()
            await outer.resume.wait()
            return entries

        service._node_entries = slow_entries  # type: ignore[method-assign]


async def bob_read_held(directory: Directory, make_node: Callable[..., Any],
                        ) -> tuple[Any, Any, SlowRead, asyncio.Task[Any]]:
    """Alice and Bob registered, the cache empty, and a read of Bob held after its row came."""
    service = directory.service
    alice, bob = await make_node(), await make_node()
    for node in (alice, bob):
        assert (await node.register()).status == 201
    service._cache.views.clear()
    slow = SlowRead(service)
    reading = asyncio.create_task(service.node(bob.node_id))
    await slow.read.wait()
    return alice, bob, slow, reading


async def test_a_read_during_which_only_grants_landed_is_cached(
    directory: Directory, make_node: Callable[..., Any],
) -> None:
    """An entry of this process on another stream than a node's (a grant) changes no view:
    a read it lands during is cached, so a loaded directory does not read its nodes through
    the log again for every request while grants keep landing. A read during which an entry
    of that node's stream lands is still not cached (the next test, and the one above)."""
    service, cache = directory.service, directory.service._cache
    alice, bob, slow, reading = await bob_read_held(directory, make_node)
    # Grants of this process land while the read is out (their appends return, and the
    # cache accounts for them).
    for grant_id in ("g" * 22, "h" * 22):
        await service.append([ev.grant_failed_event(grant_id, ["initiator"], "test",
                                                    service.now())])
    cache.check()
    slow.resume.set()
    view = await reading
    assert view is not None and view.status == "active"
    assert cache.views.get(bob.node_id) == view  # cached: nothing it shows was touched
    reads = SlowRead(service)
    reads.resume.set()  # counts reads, holds none
    assert await service.node(bob.node_id) == view
    assert reads.sessions == 0  # answered from the cache
    granted = await alice.call("POST", CONNECT, {"target": bob.node_id})
    assert granted.status == 201, granted.body


async def test_a_read_during_which_its_node_changed_is_not_cached(
    directory: Directory, make_node: Callable[..., Any],
) -> None:
    """Bob's read starts before his revocation commits and ends after it returned: what it
    read (active) is answered to its caller but never cached; the next lookup reads again."""
    service, cache = directory.service, directory.service._cache
    alice, bob, slow, reading = await bob_read_held(directory, make_node)
    await service.revoke(bob.node_id, "revoked by the operator")
    slow.resume.set()
    stale = await reading
    assert stale is not None and stale.status == "active"  # what that read saw
    assert bob.node_id not in cache.views
    view = await service.node(bob.node_id)
    assert view is not None and view.status == "revoked"
    refused = await alice.call("POST", CONNECT, {"target": bob.node_id})
    assert refused.status == 403, refused.body
