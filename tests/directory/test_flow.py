"""The directory on a real Hypercorn server: the happy paths, end to end."""

from __future__ import annotations

from typing import Any

from openred.crypto.grants import Grant, verify_signed_grant
from openred.crypto.identity import from_b64url
from openred.crypto.records import SignedNodeRecord, verify_signed_record
from openred.crypto.transparency import InclusionProof, entry_from_wire, verify_grant_delivery
from tests.directory.conftest import Directory


async def test_register_discover_heartbeat_grant(directory: Directory, make_node: Any) -> None:
    alice, bob = await make_node(), await make_node()
    reply = await alice.register()
    assert reply.status == 201, reply.body
    assert reply.json()["status"] == "active"
    assert (await bob.register()).status == 201
    # The same record again: 200, nothing changes.
    page = await alice.call("GET", f"/api/v3/nodes/discover?node_id={bob.node_id}")
    assert page.status == 200, page.body
    (item,) = page.json()["items"]
    record = verify_signed_record(SignedNodeRecord.from_wire(
        {"record": item["record"], "signature": item["signature"]}))
    assert str(record.node_id) == bob.node_id and record.api_url == bob.api_url
    beat = await alice.call("POST", "/api/v3/nodes/heartbeat", {})
    assert beat.status == 200 and beat.json()["status"] == "active"
    listing = await alice.call("GET", "/api/v3/nodes/discover?limit=1")
    assert listing.status == 200 and len(listing.json()["items"]) == 1
    cursor = listing.json()["next_cursor"]
    rest = await alice.call("GET", f"/api/v3/nodes/discover?limit=5&cursor={cursor}")
    assert len(rest.json()["items"]) == 1 and rest.json()["next_cursor"] is None

    granted = await alice.call("POST", "/api/v3/tokens/request-connection",
                               {"target": bob.node_id})
    assert granted.status == 201, granted.body
    body = granted.json()
    assert body["delivered"] == {"initiator": True, "responder": True}
    assert len(alice.received) == len(bob.received) == 1
    for me, peer in ((alice, bob), (bob, alice)):
        push = me.received[0]
        grant = Grant.from_dict(push["grant"])
        verify_signed_grant(grant.canonical_bytes(), from_b64url(push["grant_signature"]),
                            directory.key)
        peer_record = verify_signed_record(SignedNodeRecord.from_wire(push["peer_record"]))
        assert str(peer_record.node_id) == peer.node_id
        assert grant.record_hash_of(peer_record.node_id) == peer_record.hash
        verify_grant_delivery(
            grant=grant, entry=entry_from_wire(push["entry"]),
            checkpoint_note=push["checkpoint"].encode(),
            inclusion_proof=InclusionProof.from_wire(push["inclusion_proof"]),
            directory_key=directory.key)
    # Health and the directory's facts.
    health = await alice.call("GET", "/api/v3/health", signed=False)
    assert health.json()["nodes"]["active"] == 2
    key = await alice.call("GET", "/api/v3/directory/key", signed=False)
    assert key.json()["key"] == directory.key.b64url()
    cp = await alice.call("GET", "/api/v3/directory/checkpoint?from=1", signed=False)
    assert cp.status == 200 and cp.json()["consistency_proof"] is not None
    # Deregistration.
    gone = await bob.call("DELETE", f"/api/v3/nodes/{bob.node_id}")
    assert gone.status == 200 and gone.json()["status"] == "deregistered"
    missing = await alice.call("GET", f"/api/v3/nodes/discover?node_id={bob.node_id}")
    assert missing.status == 404
