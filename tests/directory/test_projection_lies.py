"""The directory decides on its signed log, not on rows a local process wrote into its tables.

A process of the directory's user (with the jail under its own user, that is what a
compromised directory process still is) can write ``openred.db``: the projections are tables
nothing signed covers, and the events table is append-only only by triggers it can drop.
"""

from __future__ import annotations

import json
import sqlite3
from typing import Any

import pytest

from tests.directory.conftest import Directory, Node
from tests.servers import free_port

GRANT = "/api/v3/tokens/request-connection"


def _db(directory: Directory) -> sqlite3.Connection:
    return sqlite3.connect(directory.settings.data_dir / "openred.db")


async def registered_with_bob_revoked(directory: Directory, make_node: Any) -> tuple[Node, Node]:
    """Alice and bob registered (201), then bob revoked by the directory."""
    alice, bob = await make_node(), await make_node()
    for node in (alice, bob):
        assert (await node.register()).status == 201
    await directory.service.revoke(bob.node_id, "compromised")
    return alice, bob


async def grant_refused_unavailable(alice: Node, bob: Node) -> None:
    """Alice's grant to bob is 503 ``store-unavailable``, and neither got a push."""
    reply = await alice.call("POST", GRANT, {"target": bob.node_id})
    assert reply.status == 503, reply.body
    assert reply.json()["type"] == "urn:openred:problem:store-unavailable"
    assert bob.received == [] and alice.received == []


async def test_a_revoked_node_un_revoked_in_the_nodes_table_gets_no_grant(
    directory: Directory, make_node: Any,
) -> None:
    """The row of a revoked node set back to ``active`` while the directory serves (its view
    not cached: nothing read it since the revocation). Before: the next grant read the row,
    and the revoked node got a grant pushed (201)."""
    alice, bob = await registered_with_bob_revoked(directory, make_node)
    with _db(directory) as conn:
        conn.execute("UPDATE directory_nodes SET status = 'active' WHERE node_id = ?",
                     (bob.node_id,))
    reply = await alice.call("POST", GRANT, {"target": bob.node_id})
    assert reply.status == 403, reply.body
    reply = await bob.call("POST", GRANT, {"target": alice.node_id})
    assert reply.status == 403, reply.body
    assert alice.received == [] and bob.received == []


async def test_a_revoked_node_whose_row_was_deleted_cannot_register_again(
    directory: Directory, make_node: Any,
) -> None:
    """The row of a revoked node deleted: the node looked unknown, so its registration was a
    first one — ``NodeRegistered`` logged after its ``NodeRevoked``, signed by the directory,
    and the node active again (201)."""
    bob = await make_node()
    assert (await bob.register()).status == 201
    await directory.service.revoke(bob.node_id, "compromised")
    with _db(directory) as conn:
        conn.execute("DELETE FROM directory_nodes WHERE node_id = ?", (bob.node_id,))
    reply = await bob.register()
    assert reply.status == 403, reply.body
    with _db(directory) as conn:
        types = [r[0] for r in conn.execute(
            "SELECT type FROM events WHERE stream = ? ORDER BY seq", (f"node:{bob.node_id}",))]
    assert types == ["NodeRegistered", "NodeRevoked"]


async def test_a_record_moved_in_the_nodes_table_to_an_older_signed_one_is_not_used(
    directory: Directory, make_node: Any,
) -> None:
    """The row of a node rolled back to its older record (the node's own signature, so
    ``_signed_record`` verifies it), whose URL nobody answers any more. Before: the grant was
    pushed to the old URL and bob never got his half."""
    alice, bob = await make_node(), await make_node()
    assert (await alice.register()).status == 201
    old = bob.record(api_url=f"http://127.0.0.1:{free_port()}")
    assert (await bob.register(old)).status == 201
    with _db(directory) as conn:
        row = conn.execute("SELECT record, signature, record_hash, version, api_url "
                           "FROM directory_nodes WHERE node_id = ?", (bob.node_id,)).fetchone()
    assert (await bob.register()).status == 200
    with _db(directory) as conn:
        conn.execute("UPDATE directory_nodes SET record = ?, signature = ?, record_hash = ?, "
                     "version = ?, api_url = ? WHERE node_id = ?", (*row, bob.node_id))
    directory.service._cache.views.clear()  # as after a restart: the row is read again
    reply = await alice.call("POST", GRANT, {"target": bob.node_id})
    assert reply.status == 201, reply.body
    assert len(bob.received) == 1


def _unguarded(conn: sqlite3.Connection) -> None:
    """What a writer of the file does first: the append-only triggers dropped."""
    conn.execute("DROP TRIGGER events_no_update")
    conn.execute("DROP TRIGGER events_no_delete")


async def test_a_revocation_rewritten_in_the_events_table_is_refused_not_believed(
    directory: Directory, make_node: Any,
) -> None:
    """The revocation entry itself rewritten (the triggers dropped) into a status change back
    to active: the node's stream now un-revokes it. Its entry no longer hashes to the leaf
    every checkpoint covers, so the directory refuses (503) instead of granting."""
    alice, bob = await registered_with_bob_revoked(directory, make_node)
    with _db(directory) as conn:
        _unguarded(conn)
        conn.execute(
            "UPDATE events SET type = 'NodeStatusChanged', payload = ? WHERE stream = ? "
            "AND type = 'NodeRevoked'",
            (json.dumps({"node_id": bob.node_id, "status": "active", "previous": "revoked",
                         "last_seen": 1, "at": 1}).encode(), f"node:{bob.node_id}"))
    await grant_refused_unavailable(alice, bob)


async def test_a_revocation_deleted_from_the_events_table_while_serving_stops_the_grants(
    directory: Directory, make_node: Any, caplog: pytest.LogCaptureFixture,
) -> None:
    """The revocation entry deleted (the last of its stream: what is left still reads as a
    whole stream). The schema changed under the serving directory (a trigger dropped), which
    it never does itself: it answers 503 until restarted, and its open refuses the file."""
    alice, bob = await registered_with_bob_revoked(directory, make_node)
    with _db(directory) as conn:
        _unguarded(conn)
        conn.execute("DELETE FROM events WHERE stream = ? AND type = 'NodeRevoked'",
                     (f"node:{bob.node_id}",))
    await grant_refused_unavailable(alice, bob)
    assert "schema was changed by another program" in caplog.text


@pytest.mark.parametrize("updates", [0, 12])  # 12: bob's stream folded in memory (long)
async def test_a_revocation_deleted_with_the_schema_cookie_put_back_stops_the_grants(
    directory: Directory, make_node: Any, updates: int,
) -> None:
    """As above, but the writer puts the triggers back as they were and the schema cookie
    with them (``PRAGMA schema_version = N``: one statement, no page edits), so the serving
    directory's schema check sees nothing. Before: the stream without its revocation read as
    whole and the revoked node got a grant (201). The directory knows the last entry of each
    node's stream its tree holds, and a stream read that lacks it is refused."""
    alice, bob = await make_node(), await make_node()
    for node in (alice, bob):
        assert (await node.register()).status == 201
    for _ in range(updates):
        assert (await bob.register()).status == 200
    reply = await alice.call("POST", GRANT, {"target": bob.node_id})
    assert reply.status == 201, reply.body
    await directory.service.revoke(bob.node_id, "compromised")
    bob.received.clear()
    alice.received.clear()
    with _db(directory) as conn:
        cookie = conn.execute("PRAGMA schema_version").fetchone()[0]
        triggers = [r[0] for r in conn.execute(
            "SELECT sql FROM sqlite_master WHERE type = 'trigger' AND tbl_name = 'events' "
            "AND name IN ('events_no_update', 'events_no_delete')")]
        assert len(triggers) == 2
        _unguarded(conn)
        conn.execute("DELETE FROM events WHERE stream = ? AND type = 'NodeRevoked'",
                     (f"node:{bob.node_id}",))
        for sql in triggers:
            conn.execute(sql)
        conn.execute(f"PRAGMA schema_version = {int(cookie)}")
    with _db(directory) as conn:
        assert conn.execute("PRAGMA schema_version").fetchone()[0] == cookie
    await grant_refused_unavailable(alice, bob)


async def test_health_says_503_once_the_schema_changed_under_the_serving_directory(
    directory: Directory, make_node: Any,
) -> None:
    """After a schema change every decision is 503 "until restarted", but ``/health`` said
    200 ok: a supervisor or load balancer probing it never restarted the directory."""
    alice = await make_node()
    assert (await alice.register()).status == 201
    reply = await alice.call("GET", "/api/v3/health", signed=False)
    assert reply.status == 200, reply.body
    with _db(directory) as conn:
        _unguarded(conn)
    reply = await alice.call("GET", "/api/v3/health", signed=False)
    assert reply.status == 503, reply.body
    assert reply.json()["type"] == "urn:openred:problem:store-unavailable"
