"""Grants: rate limits, failed pushes, and a tampering directory caught by the node's checks."""

from __future__ import annotations

import sqlite3
from typing import Any

import nacl.signing
import pytest

from openred.crypto.grants import Grant
from openred.crypto.identity import BoxKey, b64url
from openred.crypto.records import NodeRecord, SignedNodeRecord, verify_signed_record
from openred.crypto.transparency import InclusionProof, entry_from_wire, verify_grant_delivery
from openred.errors import CryptoError, InvalidSignature, TransparencyError
from tests.directory.conftest import Directory, DirectoryFactory, Node

PATH = "/api/v3/tokens/request-connection"


async def test_rate_limits_per_initiator_and_per_target(
    directory_factory: DirectoryFactory,
) -> None:
    async with directory_factory(rate_per_initiator=2, rate_per_target=3) as directory:
        nodes = [Node(directory) for _ in range(4)]
        for n in nodes:
            n.api_url = "http://127.0.0.1:9"  # nobody answers: pushes fail, limits still count
            assert (await n.register()).status == 201
        a, b, c, d = nodes
        assert (await a.call("POST", PATH, {"target": b.node_id})).status == 502
        assert (await a.call("POST", PATH, {"target": c.node_id})).status == 502
        limited = await a.call("POST", PATH, {"target": d.node_id})
        assert limited.status == 429 and int(limited.headers["Retry-After"]) >= 1
        assert limited.json()["type"] == "urn:openred:problem:rate-limited"
        # b is now the target of one grant; two more initiators may ask, the third may not.
        assert (await c.call("POST", PATH, {"target": b.node_id})).status == 502
        assert (await d.call("POST", PATH, {"target": b.node_id})).status == 502
        assert (await c.call("POST", PATH, {"target": b.node_id})).status == 429


async def test_a_push_to_a_node_that_is_down_is_reported_and_logged(
    directory: Directory, make_node: Any,
) -> None:
    alice, bob = await make_node(), await make_node(receive=False)
    assert (await alice.register()).status == 201
    assert (await bob.register()).status == 201
    reply = await alice.call("POST", PATH, {"target": bob.node_id})
    assert reply.status == 502
    problem = reply.json()
    assert problem["type"] == "urn:openred:problem:push-failed"
    assert problem["delivered"] == {"initiator": True, "responder": False}
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        row = conn.execute("SELECT state, failure FROM directory_grants WHERE grant_id = ?",
                           (problem["grant_id"],)).fetchone()
        types = [r[0] for r in conn.execute("SELECT type FROM events ORDER BY seq")]
    assert row[0] == "failed" and bob.node_id in row[1]
    assert types[-2:] == ["ConnectionGranted", "ConnectionGrantFailed"]
    # A node answering with an error counts as not delivered too.
    bob.api_url, bob.answer = alice.api_url, 500
    alice.answer = 503
    assert (await alice.call("POST", PATH, {"target": bob.node_id})).status == 502


def check_push(push: dict[str, Any], directory: Directory, me: Node) -> NodeRecord:
    """Everything a receiving node checks before it trusts a push (the next issue's node)."""
    grant = Grant.from_dict(push["grant"])
    peer = verify_signed_record(SignedNodeRecord.from_wire(push["peer_record"]))
    other = grant.responder if str(grant.initiator) == me.node_id else grant.initiator
    if peer.node_id != other or grant.record_hash_of(peer.node_id) != peer.hash:
        raise CryptoError("the peer record is not the one the grant names")
    verify_grant_delivery(
        grant=grant, entry=entry_from_wire(push["entry"]),
        checkpoint_note=push["checkpoint"].encode(),
        inclusion_proof=InclusionProof.from_wire(push["inclusion_proof"]),
        directory_key=directory.key)
    return peer


async def test_a_tampering_directory_is_caught_by_the_node(
    directory: Directory, make_node: Any,
) -> None:
    alice, bob = await make_node(), await make_node()
    assert (await alice.register()).status == 201
    old_bob = bob.record()
    assert (await bob.register(old_bob)).status == 201
    assert (await bob.register()).status == 200  # bob moves on to version 2
    assert (await alice.call("POST", PATH, {"target": bob.node_id})).status == 201
    push = alice.received[0]
    assert check_push(push, directory, alice).box_key == BoxKey(bytes(bob.box.public_key))

    def tampered(**changes: Any) -> dict[str, Any]:
        peer = dict(push["peer_record"])
        peer["record"] = {**peer["record"], **changes}
        return {**push, "peer_record": peer}

    # The directory substitutes bob's X25519 key or URL with its own.
    evil_box = b64url(bytes(nacl.signing.SigningKey.generate().verify_key))
    with pytest.raises(InvalidSignature):
        check_push(tampered(box_key=evil_box), directory, alice)
    with pytest.raises(InvalidSignature):
        check_push(tampered(api_url="http://127.0.0.1:1"), directory, alice)
    # ...or shows bob's genuine but older record (his old URL and key).
    with pytest.raises(CryptoError, match="not the one the grant names"):
        check_push({**push, "peer_record": old_bob.to_wire()}, directory, alice)
    # ...or a record it signed itself for bob's id.
    mallory = nacl.signing.SigningKey.generate()
    record = dict(push["peer_record"]["record"])
    signature = b64url(mallory.sign(NodeRecord.from_dict(record).canonical_bytes()).signature)
    with pytest.raises(InvalidSignature):
        check_push({**push, "peer_record": {"record": record, "signature": signature}},
                   directory, alice)
    # ...or a grant that is not the one in its log.
    grant = {**push["grant"], "expires_at": push["grant"]["expires_at"] + 3600}
    with pytest.raises(TransparencyError):
        check_push({**push, "grant": grant}, directory, alice)
