"""Property: for any sequence of node events, the live projections equal every replay of the log.

Hypothesis draws event sequences whose ids come from small pools (so upserts, updates and
deletes hit rows that exist, and sometimes rows that do not), appends them in random batch
splits, and compares the projection tables kept live by the store with (a) the store's own
``rebuild_projections``, (b) ``audit_tools.replay`` and (c) ``verify`` step 7 — and with a
plain-Python model of what each table must hold.
"""

from __future__ import annotations

import asyncio
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from audit_tools.replay import replay
from audit_tools.source import SQLiteSource
from audit_tools.verify import verify
from openred.node import events as ev
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store.events import NewEvent
from openred.store.migrate import upgrade
from openred.store.signer import InProcessSigner
from openred.store.sqlite import SQLiteEventStore
from tests.conftest import LONG
from tests.store.history import fake_id, store_tables
from tests.vectors.make_fixtures import FixedClock

PEERS = [fake_id(i) for i in range(4)]
GRANTS = [f"grant{i}" for i in range(4)]
SESSIONS = [f"session{i}" for i in range(3)]
MESSAGES = [f"message{i}" for i in range(4)]
DIRECTORIES = ["https://dir-a.example", "https://dir-b.example"]
SELF = fake_id(0, "self")
SIGNER = InProcessSigner.from_seed(b"\x31" * 32)
TABLES = node_projections().tables()

words = st.sampled_from(["a", "b", "c"])
instants = st.integers(1_790_000_000, 1_790_000_010)
roles = st.sampled_from(["initiator", "responder"])


def _event(stream: str, type_: str, **payload: Any) -> NewEvent:
    return NewEvent(stream, type_, payload)


node_events = st.one_of(
    st.builds(lambda d, url: _event(ev.node_stream(SELF), ev.NODE_REGISTERED, directory=d,
                                    node_id=SELF, api_url=url),
              st.sampled_from(DIRECTORIES), words),
    st.builds(lambda p, url, k: _event(ev.node_stream(p), ev.PEER_DISCOVERED, node_id=p,
                                       api_url=url, sign_key=k, box_key=k + "box"),
              st.sampled_from(PEERS), words, words),
    st.builds(lambda g, p, role, t, tok: _event(
        ev.grant_stream(g), ev.TOKEN_RECEIVED, grant_id=g, peer=p, role=role, suite="s",
        issued_at=t, expires_at=t + 300, grant="{}", grant_signature="sig", sealed_token=tok),
        st.sampled_from(GRANTS), st.sampled_from(PEERS), roles, instants, words),
    st.builds(lambda g, s: _event(ev.grant_stream(g), ev.TOKEN_CONSUMED, grant_id=g,
                                  session_id=s),
              st.sampled_from(GRANTS), st.sampled_from(SESSIONS)),
    st.builds(lambda g: _event(ev.grant_stream(g), ev.TOKEN_EXPIRED, grant_id=g),
              st.sampled_from(GRANTS)),
    st.builds(lambda s, p, g, role, t, w: _event(
        ev.session_stream(s), ev.SESSION_ESTABLISHED, session_id=s, peer=p, grant_id=g,
        role=role, suite="s", expires_at=t, wrapped_state=w),
        st.sampled_from(SESSIONS), st.sampled_from(PEERS), st.sampled_from(GRANTS), roles,
        instants, words),
    st.builds(lambda s: _event(ev.session_stream(s), ev.SESSION_EXPIRED, session_id=s),
              st.sampled_from(SESSIONS)),
    st.builds(lambda s: _event(ev.session_stream(s), ev.SESSION_CLOSED, session_id=s),
              st.sampled_from(SESSIONS)),
    st.builds(lambda m, s, p, n, body: _event(
        ev.session_stream(s), ev.MESSAGE_RECEIVED, message_id=m, session_id=s, peer=p,
        size=n, body=body),
        st.sampled_from(MESSAGES), st.sampled_from(SESSIONS), st.sampled_from(PEERS),
        st.integers(0, 5), words),
)


def batches(events: list[NewEvent], sizes: list[int]) -> Iterator[list[NewEvent]]:
    """Split ``events`` into consecutive batches of the given sizes (cycled)."""
    i = 0
    for n in sizes * (len(events) + 1):
        if i >= len(events):
            return
        yield events[i:i + n]
        i += n


def model(events: list[NewEvent]) -> dict[str, Any]:
    """What each table must hold, computed without SQL: keys present and session states."""
    registered: set[str] = set()
    peers: set[str] = set()
    tokens: set[str] = set()
    sessions: dict[str, str] = {}
    inbox: set[str] = set()
    for e in events:
        p = e.payload
        if e.type == ev.NODE_REGISTERED:
            registered.add(p["directory"])
        elif e.type == ev.PEER_DISCOVERED:
            peers.add(p["node_id"])
        elif e.type == ev.TOKEN_RECEIVED:
            tokens.add(p["grant_id"])
        elif e.type in (ev.TOKEN_CONSUMED, ev.TOKEN_EXPIRED):
            tokens.discard(p["grant_id"])
        elif e.type == ev.SESSION_ESTABLISHED:
            sessions[p["session_id"]] = "active"
        elif e.type in (ev.SESSION_EXPIRED, ev.SESSION_CLOSED) and p["session_id"] in sessions:
            sessions[p["session_id"]] = "expired" if e.type == ev.SESSION_EXPIRED else "closed"
        elif e.type == ev.MESSAGE_RECEIVED:
            inbox.add(p["message_id"])
    return {"registration": registered, "peers": peers, "tokens": tokens,
            "sessions": sessions, "inbox": inbox}


def observed(dump: dict[str, list[tuple[Any, ...]]]) -> dict[str, Any]:
    return {
        "registration": {r[0] for r in dump["registration"]},
        "peers": {r[0] for r in dump["peers"]},
        "tokens": {r[0] for r in dump["tokens"]},
        "sessions": {r[0]: r[5] for r in dump["sessions"]},
        "inbox": {r[0] for r in dump["inbox"]},
    }


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty database already migrated (migrating once, not once per example)."""
    path = tmp_path_factory.mktemp("template") / "template.db"
    upgrade(path)
    return path


async def scenario(db: Path, events: list[NewEvent], sizes: list[int]) -> None:
    store = await SQLiteEventStore.open(
        db, SIGNER, registry=node_registry(), projections=node_projections(),
        checkpoint_every=7, checkpoint_interval=0, clock=FixedClock(),
    )
    try:
        for chunk in batches(events, sizes):
            await store.append(chunk)
        size = store.head.size
        assert size == len(events) + 1
        live = await store_tables(store, TABLES)
        # The model agrees with the live tables (so equal-to-live below means right, too).
        assert observed(live) == model(events)
        positions = dict(await store.query("SELECT name, position FROM projection_positions"))
        assert positions == {name: size for name in store.projections.names}
        # (a) The store's own rebuild gives the same rows, byte for byte.
        assert await store.rebuild_projections() == size
        assert await store_tables(store, TABLES) == live
    finally:
        await store.close()
    # (b) audit_tools replay of the whole log.
    source = SQLiteSource(db)
    try:
        state = replay(source, size)
    finally:
        source.close()
    assert state.position == size
    assert {t: rows for t, (_cols, rows) in state.tables.items()} == live
    # (c) verify step 7 replays too and finds the stored tables equal.
    report = verify(db, jobs=1)
    assert report.ok, report.reason
    assert report.steps[-1].number == 7 and report.steps[-1].status == "ok"


@settings(max_examples=200 if LONG else 25, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(events=st.lists(node_events, max_size=40),
       sizes=st.lists(st.integers(1, 8), min_size=1, max_size=6))
def test_live_projections_equal_every_replay(
    template: Path, events: list[NewEvent], sizes: list[int]
) -> None:
    with tempfile.TemporaryDirectory(prefix="openred-prop-") as tmp:
        db = Path(tmp) / "node.db"
        shutil.copyfile(template, db)
        asyncio.run(scenario(db, events, sizes))


def test_replay_until_a_position_equals_the_live_state_at_that_position(
    template: Path, tmp_path: Path
) -> None:
    events = [
        _event(ev.grant_stream("g"), ev.TOKEN_RECEIVED, grant_id="g", peer=PEERS[0],
               role="initiator", suite="s", issued_at=1, expires_at=2, grant="{}",
               grant_signature="x", sealed_token="t"),
        _event(ev.session_stream("s"), ev.SESSION_ESTABLISHED, session_id="s", peer=PEERS[0],
               grant_id="g", role="initiator", suite="s", expires_at=3, wrapped_state="w"),
        _event(ev.grant_stream("g"), ev.TOKEN_CONSUMED, grant_id="g", session_id="s"),
        _event(ev.session_stream("s"), ev.SESSION_CLOSED, session_id="s"),
    ]

    async def live_states(db: Path) -> list[dict[str, list[tuple[Any, ...]]]]:
        store = await SQLiteEventStore.open(
            db, SIGNER, registry=node_registry(), projections=node_projections(),
            checkpoint_interval=0, clock=FixedClock())
        try:
            states = [await store_tables(store, TABLES)]
            for event in events:
                await store.append([event])
                states.append(await store_tables(store, TABLES))
            return states
        finally:
            await store.close()

    db = tmp_path / "node.db"
    shutil.copyfile(template, db)
    states = asyncio.run(live_states(db))
    source = SQLiteSource(db)
    try:
        for position, live in enumerate(states, start=1):
            replayed = replay(source, position)
            assert {t: rows for t, (_c, rows) in replayed.tables.items()} == live
    finally:
        source.close()
    assert [len(s["tokens"]) for s in states] == [0, 1, 1, 0, 0]
    assert [r[5] for s in states[2:] for r in s["sessions"]] == ["active", "active", "closed"]
