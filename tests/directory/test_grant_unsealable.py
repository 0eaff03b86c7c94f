"""A node whose record's box key nothing can be sealed to (a low-order X25519 point).

A served directory with its own jail (the jail mints and seals each grant's tokens).
"""

from __future__ import annotations

import sqlite3
from typing import Any

import nacl.public
import pytest

from crypto_jail import tokens
from openred.crypto.grants import Grant
from openred.crypto.identity import BoxKey, from_b64url
from tests.directory.conftest import Directory

PATH = "/api/v3/tokens/request-connection"


@pytest.mark.parametrize("role", ["target", "initiator"])
async def test_a_low_order_box_key_is_the_asking_clients_error_not_the_signers(
    directory: Directory, make_node: Any, role: str,
) -> None:
    """The jail refuses to seal a token to a low-order point, and that refusal came back as
    503 ``signer-unavailable`` ("try again later"): a failure the node chose (its own record's
    box key), answered as the directory's outage, retried forever, with a grant logged and
    marked undeliverable every time. When the web process sealed, it was 422. Now 422
    ``invalid-key`` before anything is logged; other grants are unaffected."""
    honest, other = await make_node(), await make_node()
    odd = await make_node()
    for node in (honest, other):
        assert (await node.register()).status == 201
    assert (await odd.register(odd.record(box_key=BoxKey(bytes(32))))).status == 201
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        logged = conn.execute("SELECT COUNT(*) FROM events").fetchone()[0]
    asker, target = (honest, odd) if role == "target" else (odd, honest)
    reply = await asker.call("POST", PATH, {"target": target.node_id})
    assert reply.status == 422, reply.json()
    problem = reply.json()
    assert problem["type"] == "urn:openred:problem:invalid-key"
    assert "box key" in problem["detail"]
    with sqlite3.connect(directory.settings.data_dir / "openred.db") as conn:
        assert conn.execute("SELECT COUNT(*) FROM events").fetchone()[0] == logged
    ok = await honest.call("POST", PATH, {"target": other.node_id})
    assert ok.status == 201, ok.json()
    # End to end: the initiator got token_a sealed to its box key, the responder token_b.
    (to_initiator,), (to_responder,) = honest.received, other.received
    token_a = nacl.public.SealedBox(honest.box).decrypt(from_b64url(to_initiator["sealed_token"]))
    token_b = nacl.public.SealedBox(other.box).decrypt(from_b64url(to_responder["sealed_token"]))
    canonical = Grant.from_dict(to_responder["grant"]).canonical_bytes()
    grant_id = tokens.decode_grant_id(to_responder["grant"]["grant_id"])
    assert tokens.tokens_match(token_a, token_b, grant_id, tokens.grant_hash(canonical))
