"""A compromised directory against served nodes: what it signs and pushes must not undo what a
node already verified.

The directory's key signs grants and checkpoints, so a compromised directory can mint a grant
naming any record a node ever signed and push it with a checkpoint of any history it signed.
A node must still never go back to an older record of a peer (its old URL, its old keys), nor
hold two checkpoints of forked histories without noticing.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from openred.crypto.records import NodeRecord, SignedNodeRecord, sign_record
from openred.node import events as ev
from tests.node.test_app import World, now, problem, push
from tests.node.test_fastpath import world

__all__ = ["world"]


async def a_record(world: World, api_url: str, version: int) -> SignedNodeRecord:
    """A record node A really signed (in its jail), with this URL and version."""
    keys = world.a.services.keys
    return await sign_record(NodeRecord.build(
        sign_key=keys.sign_key, box_key=keys.box_key, api_url=api_url, modules=("messaging",),
        issued_at=now(), version=version), world.jails[0].sign)


async def test_a_grant_naming_an_older_record_of_the_peer_does_not_roll_it_back(
    world: World,
) -> None:
    old_url = "http://127.0.0.1:9/moved-away"  # where A was once (version 1)
    old = await a_record(world, old_url, 1)
    world.a.record = await a_record(world, world.a.url, 2)  # where A is now
    _, _, for_b = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                             issued_at=now())
    assert (await push(world, world.b, for_b)).status == 200
    peer = await world.b.services.book.peer(str(world.a.id))
    assert peer is not None and peer.api_url == world.a.url
    # The directory mints a grant for A's version 1 record and pushes it to B.
    world.a.record = old
    _, _, stale = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                                 issued_at=now())
    reply = await push(world, world.b, stale)
    # The grant itself is genuine and logged; only the record it names is behind.
    assert reply.status == 200, reply.body
    peer = await world.b.services.book.peer(str(world.a.id))
    assert peer is not None and peer.api_url == world.a.url
    assert world.b.services.peer_urls is not None
    world.b.services.peer_urls.changing(str(world.a.id))
    assert world.b.services.peer_urls.api_url(str(world.a.id)) == world.a.url
    discovered = await world.b.services.store.read_stream(ev.node_stream(str(world.a.id)))
    assert [(e.type, e.payload["api_url"], e.payload["version"]) for e in discovered] == [
        (ev.PEER_DISCOVERED, world.a.url, 2)]
    # A newer record than the one held still replaces it.
    world.a.record = await a_record(world, old_url + "/back", 3)
    _, _, newer = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                             issued_at=now())
    assert (await push(world, world.b, newer)).status == 200
    peer = await world.b.services.book.peer(str(world.a.id))
    assert peer is not None and peer.api_url == old_url + "/back"


async def test_checkpoints_of_two_forked_histories_pushed_at_once_are_not_both_held(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each delivery is checked against the checkpoint held when it arrived: two pushed at
    once, from two histories the directory's key signed, were each consistent with that one
    (none yet, here) and were both accepted; the node then held whichever was logged last."""
    book = world.b.services.book
    read = book.directory_checkpoint
    both_read = asyncio.Event()
    readers = 0

    async def held_when_both_arrived() -> Any:
        nonlocal readers
        held = await read()
        readers += 1
        if readers == 2:
            both_read.set()
        await asyncio.wait_for(both_read.wait(), 5)
        return held

    monkeypatch.setattr(book, "directory_checkpoint", held_when_both_arrived)
    directory = world.directory
    _, _, honest = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                        issued_at=now())
    _, _, forked = await directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                        issued_at=now(), log=directory.fork)
    replies = await asyncio.gather(push(world, world.b, honest), push(world, world.b, forked))
    monkeypatch.setattr(book, "directory_checkpoint", read)
    assert sorted(r.status for r in replies) == [200, 409], [r.body for r in replies]
    refused = next(r for r in replies if r.status == 409)
    problem(refused, 409, "directory-fork")
    [evidence] = await world.b.services.store.read_stream("directory")
    assert evidence.type == ev.DIRECTORY_FORK_DETECTED
    held = await read()
    assert held is not None and evidence.payload["held_checkpoint"] == held.note
    assert {evidence.payload["received_checkpoint"], held.note} == {
        honest["checkpoint"], forked["checkpoint"]}
