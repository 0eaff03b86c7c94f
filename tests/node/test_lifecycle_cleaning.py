"""The lifecycle's projection sweep and offer expiry, over real jails, real logs and real files.

Two nodes live through 43 days of a virtual clock (the node's and the store's): sessions
established, expired and renewed, tokens consumed and expired unused, file offers fetched,
revoked and expired by the periodic task. The sweep with a 30-day retention removes exactly the
rows that ended before the cut-off, by one logged ``ProjectionsCleaned``; the log verifies with
``audit_tools`` (projections included) and a replay rebuilds the cleaned state.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any, cast

import pytest

from audit_tools.verify import verify
from openred.crypto.client import JailClient, JailSigner
from openred.crypto.records import NodeRecord, sign_record
from openred.errors import ConfigurationError, NodeRefused
from openred.modules.file_sharing import events as fev
from openred.modules.file_sharing.expiry import TASK_NAME, expire_offers, register_expiry
from openred.modules.file_sharing.service import CHUNK, DECLINE, OFFER, REVOKE, FileSharing
from openred.node import events as ev
from openred.node.cleaning import MAX_ROWS_PER_EVENT, cleaned_events
from openred.node.envelope import Envelope, Route
from openred.node.events import node_registry
from openred.node.lifecycle import LIFECYCLE_TASKS, Housekeeper, LifecycleTasks
from openred.node.p2p import dispatch
from openred.node.projections import node_projections
from openred.node.readmodels import ReadModels
from openred.node.settings import DEFAULT_RETENTION, NodeSettings
from openred.store.sqlite import SQLiteEventStore
from tests.node.world import NOW, Directory, JailPair, Node, transport_to

DAY = 86400
RETENTION = 30 * DAY
TABLES = node_projections().tables()


class Clock:
    """One virtual clock for a node's services and its store."""

    def __init__(self) -> None:
        self.now = NOW

    def seconds(self) -> int:
        return self.now

    def store(self) -> datetime:
        return datetime.fromtimestamp(self.now, UTC)


async def open_node(name: str, socket: Path, data: Path, directory: Directory,
                    clock: Clock) -> Node:
    jail = JailClient(socket, timeout=10)
    keys = await jail.public_keys()
    record = await sign_record(NodeRecord.build(
        sign_key=keys.sign_key, box_key=keys.box_key, api_url=f"https://{name}.example:8443",
        modules=("messaging", "file_sharing"), issued_at=NOW, version=1), jail.sign)
    data.mkdir(parents=True, exist_ok=True)
    store = await SQLiteEventStore.open(
        data, await JailSigner.create(jail), registry=node_registry(),
        projections=node_projections(), checkpoint_interval=0, clock=clock.store)
    return Node(name, jail, keys, store, ReadModels.open(data / "openred.db"), record,
                directory)


def file_sharing(node: Node, peers: dict[str, Node], clock: Clock, **extra: Any) -> FileSharing:
    """The node's file_sharing service, its P2P actions, and transports into its peers.

    ``extra`` goes to :class:`FileSharing` (e.g. a ``write`` that fails like a full disk).
    """

    async def transport_for(peer: str) -> Any:
        target = peers[peer]

        async def send(route: Route, envelope: Envelope) -> Envelope:
            return await dispatch(route, envelope.to_json(), actions=target.actions,
                                  keeper=target.keeper, store=target.store, now=clock.now)

        return send

    service = FileSharing(store=node.store, reads=node.reads, keeper=node.keeper,
                          book=node.book, data_dir=node.store.path.parent,
                          transport_for=transport_for, clock=clock.seconds, **extra)
    for route, handler in ((OFFER, service.receive_offer), (CHUNK, service.serve_chunk),
                           (REVOKE, service.receive_revoke), (DECLINE, service.receive_decline)):
        node.actions.add(route.module, route.action, handler)
    return service


def housekeeper(node: Node, clock: Clock, retention: int | None = RETENTION) -> Housekeeper:
    services = SimpleNamespace(
        settings=NodeSettings(data_dir=node.store.path.parent, projection_retention=retention),
        now=clock.seconds, reads=node.reads, store=node.store, keys=node.keys)
    return Housekeeper(cast(Any, services))


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return {t: sorted(map(tuple, conn.execute(f"SELECT * FROM {t}"))) for t in TABLES}
    finally:
        conn.close()


def keys(path: Path, table: str) -> set[str]:
    return {str(row[0]) for row in dump(path)[table]}


@pytest.fixture
async def pair(jails: JailPair, directory: Directory, tmp_path: Path,
               ) -> AsyncIterator[tuple[Node, Node, Clock]]:
    clock = Clock()
    a = await open_node("a", jails.procs[0].socket_path, tmp_path / "a", directory, clock)
    b = await open_node("b", jails.procs[1].socket_path, tmp_path / "b", directory, clock)
    try:
        yield a, b, clock
    finally:
        for node in (a, b):
            await node.close()


async def connect(directory: Directory, a: Node, b: Node, at: int) -> str:
    grant, for_a, for_b = await directory.pair(a, b, issued_at=at)
    await a.tokens.receive(for_a, at)
    await b.tokens.receive(for_b, at)
    return (await a.handshakes.connect(grant.grant_id, transport_to(b, at), at)).session_id


def test_retention_is_a_setting_with_a_floor_and_never(tmp_path: Path) -> None:
    assert NodeSettings.load(tmp_path, environ={}).projection_retention == DEFAULT_RETENTION
    assert DEFAULT_RETENTION == 30 * DAY
    env = {"OPENRED_PROJECTION_RETENTION": "never"}
    assert NodeSettings.load(tmp_path, environ=env).projection_retention is None
    env = {"OPENRED_PROJECTION_RETENTION": "7200"}
    assert NodeSettings.load(tmp_path, environ=env).projection_retention == 7200
    for bad in ("59", "0", "-1", "1d"):
        with pytest.raises(ConfigurationError):
            NodeSettings.load(tmp_path, environ={"OPENRED_PROJECTION_RETENTION": bad})


def test_a_large_sweep_is_split_into_bounded_events() -> None:
    due = {"sessions": [f"s{i:04}" for i in range(MAX_ROWS_PER_EVENT + 7)],
           "file_offers": ["o1"], "file_transfers": ["o1"]}
    events = cleaned_events("node:x", due, before=5, retention=RETENTION)
    assert len(events) == 2
    named = [k for e in events for keys_ in e.payload["rows"].values() for k in keys_]
    assert len(named) == MAX_ROWS_PER_EVENT + 9
    assert all(e.type == ev.PROJECTIONS_CLEANED and e.payload["before"] == 5 for e in events)
    assert cleaned_events("node:x", {}, before=5, retention=RETENTION) == []


async def test_the_sweep_removes_what_ended_before_the_retention_and_the_log_replays_it(
    pair: tuple[Node, Node, Clock], directory: Directory, jails: JailPair, tmp_path: Path,
) -> None:
    a, b, clock = pair
    peers = {str(a.id): a, str(b.id): b}
    files_a, files_b = file_sharing(a, peers, clock), file_sharing(b, peers, clock)
    (tmp_path / "f").write_bytes(b"x" * 1000)
    db_a, db_b = a.store.path, b.store.path

    # Day 0: a session, a token that expires unused, offers fetched, revoked and left to expire.
    old_session = await connect(directory, a, b, NOW)
    grant, for_a, _ = await directory.pair(a, b, issued_at=NOW)
    await a.tokens.receive(for_a, NOW)
    clock.now = NOW + 400
    assert await a.tokens.expire(clock.now) == 1
    fetched = await files_a.share(str(b.id), tmp_path / "f", expires_in=3600)
    await files_b.fetch(fetched.offer_id, out=tmp_path)
    revoked = await files_a.share(str(b.id), tmp_path / "f", expires_in=3600)
    await files_a.revoke(revoked.offer_id)
    assert grant.grant_id in keys(db_a, "grant_outcomes")
    # The expiry task logs the fetched offer's expiry on both sides, on time, once.
    clock.now = NOW + 400 + 3600
    assert await expire_offers(files_a, clock.now) == 1
    assert await expire_offers(files_b, clock.now) == 1
    assert await expire_offers(files_a, clock.now) == 0
    for service in (files_a, files_b):
        offer = await service.offer(fetched.offer_id)
        assert offer is not None and offer.state == "expired"
    # At 80 % of its life the session is renewed (closed), and the new one expires on day 2.
    clock.now = NOW + 70000
    renewal, for_a, for_b = await directory.pair(a, b, issued_at=clock.now)
    await a.tokens.receive(for_a, clock.now)
    await b.tokens.receive(for_b, clock.now)
    renewed = (await a.handshakes.connect(renewal.grant_id, transport_to(b, clock.now),
                                          clock.now, renews=old_session)).session_id
    clock.now += DAY + 1
    assert await a.keeper.expire(clock.now) == [renewed]
    assert await b.keeper.expire(clock.now) == [renewed]
    old_sessions = {old_session, renewed}
    for db in (db_a, db_b):
        states = {r[0]: r[5] for r in dump(db)["sessions"]}
        assert states == {old_session: "closed", renewed: "expired"}
    old_grants = keys(db_a, "grant_outcomes")
    assert len(old_grants) == 3  # two consumed by handshakes, one expired unused

    # Day 40: a new session that stays active, one that expires a day later, a recent offer.
    clock.now = NOW + 40 * DAY
    recent_ended = await connect(directory, a, b, clock.now)
    recent_offer = await files_a.share(str(b.id), tmp_path / "f", expires_in=3600)
    await files_a.revoke(recent_offer.offer_id)
    clock.now = NOW + 41 * DAY + 1
    assert await a.keeper.expire(clock.now) == [recent_ended]
    active = await connect(directory, a, b, clock.now)
    standing = await files_a.share(str(b.id), tmp_path / "f", expires_in=3600)
    recent_grants = keys(db_a, "grant_outcomes") - old_grants

    # Day 43 with a 30-day retention: the cut-off is day 13.
    clock.now = NOW + 43 * DAY
    clock.now += 7200  # the standing offer is past its time, but not yet logged expired
    before = {"a": dump(db_a), "b": dump(db_b)}
    assert await housekeeper(a, clock, retention=None).clean() == 0
    assert dump(db_a) == before["a"]
    # a: the closed and the expired session, three grant outcomes, the fetched and revoked offer
    assert await housekeeper(a, clock).clean() == 2 + 3 + 2
    assert await housekeeper(b, clock).clean() > 0
    for db in (db_a, db_b):
        assert keys(db, "sessions") == {recent_ended, active}
        assert keys(db, "file_offers") == {recent_offer.offer_id, standing.offer_id}
        assert keys(db, "tokens") == set()
    assert keys(db_a, "grant_outcomes") == recent_grants
    assert keys(db_b, "file_transfers") == set()
    # Nothing else moved: every other table, and the rows that stay, are as they were.
    for name, db in (("a", db_a), ("b", db_b)):
        after = dump(db)
        for table in TABLES:
            assert set(after[table]) <= set(before[name][table]), table
        for table in ("peers", "registration", "inbox", "outbox", "directory_checkpoint"):
            assert after[table] == before[name][table], table
    # One event per sweep naming what it removed; a second sweep finds nothing, logs nothing.
    cleaned = [json.loads(e.payload) for e in await a.store.read()
               if e.type == ev.PROJECTIONS_CLEANED]
    assert len(cleaned) == 1
    assert cleaned[0]["before"] == clock.now - RETENTION
    assert set(cleaned[0]["rows"]["sessions"]) == old_sessions
    assert set(cleaned[0]["rows"]["grant_outcomes"]) == old_grants
    size = a.store.head.size
    assert await housekeeper(a, clock).clean() == 0
    assert a.store.head.size == size

    # A replay rebuilds exactly the cleaned state, and audit_tools agrees (step 7).
    for node, db in ((a, db_a), (b, db_b)):
        cleaned_state = dump(db)
        await node.store.rebuild_projections()
        assert dump(db) == cleaned_state
    for node in (a, b):
        await node.store.close()
        report = verify(node.store.path.parent, key=node.keys.sign_key)
        assert report.ok, report.reason
        assert any(s.number == 7 and s.status == "ok" for s in report.steps)


async def test_a_cleaned_grant_is_still_used_at_most_once(
    pair: tuple[Node, Node, Clock], directory: Directory,
) -> None:
    a, b, clock = pair
    grant, for_a, for_b = await directory.pair(a, b, issued_at=NOW)
    await a.tokens.receive(for_a, NOW)
    await b.tokens.receive(for_b, NOW)
    await a.handshakes.connect(grant.grant_id, transport_to(b, NOW), NOW)
    clock.now = NOW + 31 * DAY
    assert await housekeeper(b, clock).clean() >= 1
    assert keys(b.store.path, "grant_outcomes") == set()
    # The same delivery again is refused (the grant's stream already has entries), not stored.
    with pytest.raises(NodeRefused) as caught:
        await b.tokens.receive(for_b, NOW + 10)
    assert caught.value.status == 409
    assert keys(b.store.path, "tokens") == set()


async def test_the_served_node_runs_module_tasks_and_the_sweep(
    pair: tuple[Node, Node, Clock], tmp_path: Path,
) -> None:
    a, _, clock = pair
    tasks = LifecycleTasks()
    calls: list[int] = []

    async def failing(now: int) -> int:
        raise RuntimeError("a module task that fails")

    async def counting(now: int) -> int:
        calls.append(now)
        return 1

    tasks.add("failing", failing)
    tasks.add("counting", counting)
    with pytest.raises(ValueError):
        tasks.add("counting", counting)
    keeper = housekeeper(a, clock)
    keeper.tasks = tasks
    done = await keeper.run_once()
    assert done == {"counting": 1, "clean": 0}  # the failing task is logged, the rest runs
    assert calls == [clock.now]
    assert "clean" not in await keeper.run_once()  # the sweep runs about once an hour
    # file_sharing adds its expiry task through the hook when the app has the registry.
    app = SimpleNamespace(extensions={LIFECYCLE_TASKS: LifecycleTasks()})
    register_expiry(app, cast(Any, object()))
    assert app.extensions[LIFECYCLE_TASKS].names == [TASK_NAME]
    register_expiry(SimpleNamespace(extensions={}), cast(Any, object()))  # not served: no-op
    assert fev.FILE_OFFER_EXPIRED == "FileOfferExpired"
