"""The send path's peer URLs (:class:`~openred.node.services.PeerUrls`): remembered, never stale.

A URL read from the ``peers`` table is remembered per peer for at most ``ttl`` seconds and
forgotten as soon as this process appends a new record of that peer (the token receiver
announces the peer before and after its ``PeerDiscovered`` append, however the append ends).
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

from openred.crypto.records import NodeRecord, sign_record
from openred.errors import StoreUnavailable
from openred.node import events as ev
from openred.node.services import PeerUrls
from openred.node.token_service import TokenReceiver
from openred.store.events import NewEvent
from tests.node import test_app
from tests.node.test_app import World
from tests.node.world import NOW, Directory, Node

world = test_app.world  # the two served nodes of the app tests (a pytest fixture)


class Clock:
    def __init__(self) -> None:
        self.now = 50.0

    def __call__(self) -> float:
        return self.now


def peers_table(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("CREATE TABLE peers (node_id TEXT PRIMARY KEY, api_url TEXT)")
    conn.execute("INSERT INTO peers VALUES ('p', 'https://old.example')")
    return conn


def reads(urls: PeerUrls) -> list[str]:
    seen: list[str] = []
    urls.api_url("nobody")  # opens the connection
    assert urls._conn is not None
    urls._conn.set_trace_callback(lambda sql: seen.append(sql) if "peers" in sql else None)
    return seen


def test_a_url_is_read_once_per_ttl_and_again_once_the_peer_changes(tmp_path: Path) -> None:
    conn = peers_table(tmp_path / "node.db")
    clock = Clock()
    urls = PeerUrls(tmp_path / "node.db", clock=clock)
    seen = reads(urls)
    assert [urls.api_url("p") for _ in range(5)] == ["https://old.example"] * 5
    assert len(seen) == 1
    conn.execute("UPDATE peers SET api_url = 'https://new.example' WHERE node_id = 'p'")
    urls.changing("p")
    assert urls.api_url("p") == "https://new.example" and len(seen) == 2
    # Written behind this process's back (another process): read again once the TTL passed.
    conn.execute("UPDATE peers SET api_url = 'https://third.example' WHERE node_id = 'p'")
    clock.now += urls.ttl
    assert urls.api_url("p") == "https://third.example" and len(seen) == 3
    # An unknown peer is never remembered; no TTL remembers nothing.
    assert [urls.api_url("q"), urls.api_url("q")] == [None, None] and len(seen) == 5
    conn.execute("INSERT INTO peers VALUES ('q', 'https://q.example')")
    assert urls.api_url("q") == "https://q.example"
    fresh = PeerUrls(tmp_path / "node.db", ttl=0.0, clock=clock)
    seen = reads(fresh)
    assert [fresh.api_url("p") for _ in range(3)] == ["https://third.example"] * 3
    assert len(seen) == 3
    urls.close()
    fresh.close()


class _Store:
    def __init__(self, announced: list[str], fail: bool) -> None:
        self.announced = announced
        self.fail = fail
        self.appended: list[NewEvent] = []

    async def append(self, events: list[NewEvent]) -> list[Any]:
        self.announced.append("append")
        if self.fail:
            raise StoreUnavailable("disk full")
        self.appended += events
        return []


@pytest.mark.parametrize("fail", [False, True])
async def test_the_receiver_announces_a_peer_before_and_after_its_record_is_appended(
    fail: bool,
) -> None:
    announced: list[str] = []
    store = _Store(announced, fail)
    receiver = TokenReceiver.__new__(TokenReceiver)
    receiver.store = store  # type: ignore[assignment]
    receiver.peer_changing = announced.append
    events = [NewEvent("grant:g", ev.TOKEN_RECEIVED, {"grant_id": "g"}),
              NewEvent("node:p", ev.PEER_DISCOVERED, {"node_id": "p", "api_url": "u"})]
    if fail:
        with pytest.raises(StoreUnavailable):
            await receiver._append(events)
    else:
        await receiver._append(events)
    assert announced == ["p", "append", "p"]
    if not fail:
        announced.clear()
        await receiver._append(events[:1])
        assert announced == ["append"]  # no record: nobody to announce


async def test_a_served_node_wires_its_peer_urls_to_its_token_receiver(world: World) -> None:
    services = world.b.services
    assert services.peer_urls is not None and services.peer_urls.ttl > 0
    assert services.tokens.peer_changing == services.peer_urls.changing


async def test_a_new_record_of_the_peer_is_used_from_the_next_send_on(
    nodes: tuple[Node, Node, Node], directory: Directory
) -> None:
    a, b, _ = nodes
    clock = Clock()
    urls = PeerUrls(b.store.path, clock=clock)
    b.tokens.peer_changing = urls.changing
    _, _, for_b = await directory.pair(a, b)
    await b.tokens.receive(for_b, NOW)
    assert urls.api_url(str(a.id)) == "https://a.example:8443"
    # A moved: its next grant carries a newer signed record with another URL.
    a.record = await sign_record(NodeRecord.build(
        sign_key=a.keys.sign_key, box_key=a.keys.box_key, api_url="https://a2.example:9443",
        modules=("messaging",), issued_at=NOW + 10, version=2), a.jail.sign)
    _, _, for_b = await directory.pair(a, b)
    await b.tokens.receive(for_b, NOW + 10)
    assert (await b.types())[-1] == ev.PEER_DISCOVERED
    assert urls.api_url(str(a.id)) == "https://a2.example:9443"  # the clock never moved
    urls.close()
