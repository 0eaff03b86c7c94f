"""A node's key is its id's: a key planted in the directory's projection signs for nobody."""

from __future__ import annotations

import sqlite3
from typing import Any

import nacl.signing

from openred.crypto.identity import SignKey
from openred.web.client import HttpClient, Signer
from tests.directory.conftest import Directory


async def test_a_sign_key_planted_in_the_nodes_table_does_not_sign_for_the_node(
    directory: Directory, make_node: Any,
) -> None:
    """A process of the directory's user rewrote ``directory_nodes.sign_key`` of a node to its
    own key (the projection is not the log: nothing signed covers it). Before: requests signed
    with that key under the node's id verified, and it deregistered the node (200, logged as
    the node's own act)."""
    victim = await make_node(receive=False)
    assert (await victim.register()).status == 201
    mallory = nacl.signing.SigningKey.generate()
    planted = SignKey(bytes(mallory.verify_key)).b64url()
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        conn.execute("UPDATE directory_nodes SET sign_key = ? WHERE node_id = ?",
                     (planted, victim.node_id))
    directory.service._cache.views.clear()  # as after a restart: the row is read again

    async def sign_base(base: bytes) -> bytes:
        return bytes(mallory.sign(base).signature)

    async with HttpClient(signer=Signer(victim.node_id, sign_base), allow_private=True,
                          attempts=1) as client:
        for method, path, body in (
                ("POST", "/api/v3/nodes/heartbeat", {}),
                ("DELETE", f"/api/v3/nodes/{victim.node_id}", None)):
            reply = await client.request(method, directory.url + path, json_body=body,
                                         signed=True)
            assert reply.status == 401, (path, reply.body)
    # Nothing was logged in the node's name, and the node itself keeps its service: its view
    # (key included) comes from its stream in the signed log, not from the edited row.
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        types = [r[0] for r in conn.execute("SELECT type FROM events ORDER BY seq")]
    assert types[-1] == "NodeRegistered"
    assert (await victim.call("POST", "/api/v3/nodes/heartbeat", {})).status == 200


async def test_a_record_planted_in_the_nodes_table_gets_no_grant(
    directory: Directory, make_node: Any,
) -> None:
    """The same writer replaced a node's record in ``directory_nodes`` (its URL and box key
    now Mallory's; the node's signature left as it was). Before: a grant to the node was
    sealed to Mallory's box key and pushed to Mallory's URL (201), the directory's own
    signature over a grant naming the forged record's hash."""
    alice, bob, mallory = await make_node(), await make_node(), await make_node()
    for node in (alice, bob, mallory):
        assert (await node.register()).status == 201
    # A record registered through this process is not verified again for its grants.
    view = await directory.service.node(alice.node_id)
    assert view is not None
    assert (view.record_json, view.signature) in directory.service._records
    forged = bob.record(api_url=mallory.api_url, box_key=mallory.record().record.box_key)
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        conn.execute("UPDATE directory_nodes SET record = ?, api_url = ?, box_key = ? "
                     "WHERE node_id = ?",
                     (forged.record.canonical_bytes().decode(), mallory.api_url,
                      forged.record.box_key.b64url(), bob.node_id))
    directory.service._cache.views.clear()
    reply = await alice.call("POST", "/api/v3/tokens/request-connection",
                             {"target": bob.node_id})
    # Bob's view comes from his stream in the log: the grant goes to his own record.
    assert reply.status == 201, reply.body
    assert mallory.received == [] and len(alice.received) == len(bob.received) == 1
