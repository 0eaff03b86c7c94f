"""A paired peer cannot grow the node's log without bound, nor fill the disk it lives on.

Two real nodes served on loopback (real jails, real SQLite logs, HTTP between them). The free
space on the log's file system is read through a port the node takes, so a full disk is a
reading, not a filled disk.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from openred.errors import NodeRefused
from openred.modules.file_sharing.domain import MIN_CHUNK_SIZE
from openred.modules.file_sharing.service import OFFER
from openred.modules.messaging import events as ev
from openred.modules.messaging.service import PeerBudget
from openred.node.diskreserve import DiskReserve, free_bytes
from openred.ratelimit import Allowance
from tests.modules.file_sharing.test_hostile import _json, crafted
from tests.modules.file_sharing.world import Pair, files, served_pair
from tests.node.world import Directory, JailPair

HOUR = 3600


@pytest.fixture
async def pair(jails: JailPair, directory: Directory, tmp_path: Path) -> AsyncIterator[Pair]:
    async with served_pair(jails, directory, tmp_path) as served:
        yield served


def test_an_allowance_refills_evenly_and_keeps_two_floats_per_key() -> None:
    budget = Allowance(10, 100.0, max_keys=2)
    for _ in range(10):
        assert budget.retry_after("p", 0.0) is None
        budget.take("p", 0.0)
    assert budget.retry_after("p", 0.0) == pytest.approx(10.0)  # one unit per 10 s
    assert budget.retry_after("p", 0.0, 3) == pytest.approx(30.0)
    assert budget.retry_after("p", 10.0) is None
    assert budget.retry_after("p", 0.0, 50) == pytest.approx(100.0)  # more than all: all
    assert budget.retry_after("q", 0.0) is None  # keys apart
    budget.take("q", 50.0)
    budget.take("r", 50.0)  # a third key: the one unused for a window ("p") is dropped
    assert set(budget._buckets) == {"q", "r"}
    budget.take("s", 60.0)  # all live: the stalest goes (a bounded table)
    assert len(budget._buckets) == 2 and "s" in budget._buckets
    with pytest.raises(ValueError):
        Allowance(0, 1.0)


def test_a_peer_budget_counts_messages_and_bytes_apart_per_peer() -> None:
    budget = PeerBudget(messages=2, text_bytes=1000, window=HOUR)
    budget.charge("a", 600, 0)
    with pytest.raises(NodeRefused) as caught:
        budget.charge("a", 600, 0)  # bytes
    assert caught.value.status == 429 and caught.value.retry_after == 720
    assert caught.value.extra == {"retry_after": 720}
    budget.charge("a", 400, 0)
    with pytest.raises(NodeRefused) as caught:
        budget.charge("a", 1, 0)  # count
    assert caught.value.retry_after == HOUR // 2
    budget.charge("b", 1000, 0)  # another peer has its own


def test_the_disk_reserve_reads_the_free_space_at_most_every_so_often() -> None:
    readings: list[int] = []
    free, now = [100], [0.0]

    def read() -> int:
        readings.append(free[0])
        if free[0] < 0:
            raise OSError("gone")
        return free[0]

    reserve = DiskReserve(read, 64, clock=lambda: now[0], every=0.1)
    reserve.check()
    free[0] = 10
    reserve.check()  # the reading of 100 is still used
    assert readings == [100]
    now[0] = 0.1
    with pytest.raises(NodeRefused) as caught:
        reserve.check()
    assert (caught.value.status, caught.value.reason) == (507, "disk-full")
    free[0], now[0] = -1, 0.2  # a reading that fails lets calls through (as before the guard)
    reserve.check()
    free[0], now[0] = 64, 0.4
    reserve.check()
    assert readings == [100, 10, -1, 64]
    assert DiskReserve(free_bytes(Path("/")), 0).free() > 0


async def received(pair: Pair) -> int:
    return sum(e.type == ev.MESSAGE_RECEIVED for e in await pair.b.services.store.read())


async def test_a_peer_cannot_fill_the_disk_the_nodes_log_lives_on(pair: Pair) -> None:
    # Below the reserve, nothing a peer's call causes is logged (507 disk-full, as a fetch
    # that would not fit), so the node keeps room for its own events; above it, all is as
    # before. The sender's node surfaces the peer's refusal (its 5xx as 502, slug kept).
    a, b = pair.a.services, pair.b.services
    free = [1 << 40]
    b.reserve = DiskReserve(lambda: free[0], 64 << 20, clock=lambda: 0.0, every=0.0)
    await a.send_message(pair.session_id, "room enough")
    free[0] = (64 << 20) - 1
    before = len(await b.store.read())
    with pytest.raises(NodeRefused) as caught:
        await a.send_message(pair.session_id, "no room")
    assert (caught.value.status, caught.value.reason) == (502, "disk-full")
    terms = crafted(1000, MIN_CHUNK_SIZE)  # file sharing's offers are peer-caused appends too
    with pytest.raises(NodeRefused) as caught:
        await files(pair.a)._call(pair.b.id, OFFER, _json(terms.to_json()))
    assert (caught.value.status, caught.value.reason) == (502, "disk-full")
    assert len(await b.store.read()) == before
    free[0] = 64 << 20
    await a.send_message(pair.session_id, "room again")
    assert await received(pair) == 2


async def test_a_peer_cannot_grow_the_log_with_messages_without_bound(pair: Pair) -> None:
    # Past its budget of messages logged (count or bytes, per hour), a peer gets 429 with
    # Retry-After and nothing is logged; the sending node passes the wait on, on the single
    # route (header) and in a batch (the problem's retry_after member) alike.
    a, b = pair.a.services, pair.b.services
    b.messaging.budget = PeerBudget(messages=3, text_bytes=1 << 20, window=HOUR)
    for i in range(3):
        await a.send_message(pair.session_id, f"message {i}")
    with pytest.raises(NodeRefused) as caught:
        await a.send_message(pair.session_id, "one too many")
    assert (caught.value.status, caught.value.reason) == (429, "too-many-messages")
    assert caught.value.retry_after is not None and 0 < caught.value.retry_after <= HOUR
    refusals = await asyncio.gather(
        *(a.send_message(pair.session_id, f"batched {i}") for i in range(8)),
        return_exceptions=True)
    assert all(isinstance(r, NodeRefused) and r.status == 429 and r.retry_after
               for r in refusals), refusals
    assert a.batchers and any(x.stats.batches for x in a.batchers.values())
    assert await received(pair) == 3
    # The bytes of text count too.
    b.messaging.budget = PeerBudget(messages=100, text_bytes=3000, window=HOUR)
    await a.send_message(pair.session_id, "x" * 2000)
    with pytest.raises(NodeRefused) as caught:
        await a.send_message(pair.session_id, "y" * 2000)
    assert (caught.value.status, caught.value.reason) == (429, "too-many-messages")
    assert await received(pair) == 4
