"""A grant signed in ``sign_many`` with ``seal_to``: the jail mints the two tokens and seals them.

The directory's jail draws the grant's secret, derives token_a and token_b (DESIGN §5) and
answers the grant's signature with token_a sealed to the initiator's X25519 key and token_b
sealed to the responder's: the directory's web process never holds a token it can read. What
comes out must be exactly what a node needs — the halves of one grant, which its own jail
opens and which complete a Noise handshake with the peer — and nothing a caller can misuse.
"""

from __future__ import annotations

import json
from typing import Any

import nacl.bindings
import nacl.public
import pytest

from crypto_jail import tokens
from crypto_jail.errors import OpRefused
from crypto_jail.keystore import Keystore
from crypto_jail.ops import JailState, dispatch
from crypto_jail.protocol import b64d, b64e
from tests.crypto_jail.test_ops import (
    WALL,
    Minted,
    _handshake,
    alice,  # noqa: F401 - fixture
    bob,  # noqa: F401 - fixture
    canonical_grant,
    clock,  # noqa: F401 - fixture
    refused,
    verify,
)


@pytest.fixture
def directory() -> JailState:
    return JailState(Keystore.generate(), wall_clock=lambda: WALL)


def _item(grant: bytes, *keys: Any) -> dict[str, Any]:
    return {"kind": "grant", "data": b64e(grant), "seal_to": list(keys)}


def _mint(directory: JailState, initiator: JailState, responder: JailState,
          grant: bytes | None = None) -> tuple[bytes, dict[str, Any]]:
    grant = grant or canonical_grant(initiator.public["node_id"], responder.public["node_id"],
                                     issued_at=WALL)
    (result,) = dispatch(directory, "sign_many", {"items": [_item(
        grant, initiator.public["box_key"], responder.public["box_key"])]})["results"]
    return grant, result


def _open(state: JailState, sealed: str) -> bytes:
    keystore = state.keystore
    clear: bytes = nacl.bindings.crypto_box_seal_open(
        b64d(sealed), keystore.box_public, bytes(keystore.box_private))
    return clear


def test_the_sealed_halves_complete_a_handshake_between_the_two_nodes(
    directory: JailState, alice: JailState, bob: JailState  # noqa: F811
) -> None:
    grant, result = _mint(directory, alice, bob)
    assert set(result) == {"signature", "sealed_tokens"}
    verify(directory, result["signature"], grant)
    sealed_a, sealed_b = result["sealed_tokens"]
    # Each half opens in its own node's jail only.
    assert dispatch(alice, "open_sealed", {"sealed": sealed_a})["length"] == tokens.TOKEN_LEN
    assert dispatch(bob, "open_sealed", {"sealed": sealed_b})["length"] == tokens.TOKEN_LEN
    assert refused(alice, "open_sealed", {"sealed": sealed_b}).code == "decrypt_failed"
    assert refused(bob, "open_sealed", {"sealed": sealed_a}).code == "decrypt_failed"
    # They are the two halves of this grant (token_a derives from token_b)...
    token_a, token_b = _open(alice, sealed_a), _open(bob, sealed_b)
    grant_id = tokens.decode_grant_id(str(tokens.check_canonical_grant(grant)["grant_id"]))
    assert tokens.tokens_match(token_a, token_b, grant_id, tokens.grant_hash(grant))
    # ...and the two jails finish the Noise handshake with them.
    m = Minted(grant, b64d(result["signature"]), token_a, token_b, b64d(sealed_a),
               b64d(sealed_b), str(tokens.check_canonical_grant(grant)["suite"]))
    _, second, done = _handshake(alice, bob, m)
    assert done["send_key"] == second["recv_key"] and done["recv_key"] == second["send_key"]
    # No token travels in the clear.
    text = json.dumps(result)
    assert b64e(token_a) not in text and b64e(token_b) not in text


def test_every_mint_draws_a_fresh_secret(
    directory: JailState, alice: JailState, bob: JailState  # noqa: F811
) -> None:
    grant, first = _mint(directory, alice, bob)
    _, second = _mint(directory, alice, bob, grant)
    assert first["signature"] == second["signature"]  # Ed25519 is deterministic
    assert _open(alice, first["sealed_tokens"][0]) != _open(alice, second["sealed_tokens"][0])
    assert _open(bob, first["sealed_tokens"][1]) != _open(bob, second["sealed_tokens"][1])


def test_a_grant_the_jail_will_not_sign_gets_no_tokens(
    directory: JailState, alice: JailState, bob: JailState  # noqa: F811
) -> None:
    stale = canonical_grant(alice.public["node_id"], bob.public["node_id"],
                            issued_at=WALL - 301)
    _, result = _mint(directory, alice, bob, stale)
    assert result == {"error": "refused",
                      "detail": "grant issued_at is outside the jail's time window"}
    _, result = _mint(directory, alice, bob, stale.replace(b",", b", "))
    assert result["error"] == "refused" and "sealed_tokens" not in result


@pytest.mark.parametrize("key", [bytes(32), (1).to_bytes(32, "little")])
def test_a_key_nothing_can_be_sealed_to_is_refused_for_that_item_only(
    directory: JailState, alice: JailState, key: bytes  # noqa: F811
) -> None:
    """Small-order X25519 points: libsodium refuses to seal to them."""
    grant = canonical_grant(alice.public["node_id"], "b" * 32, issued_at=WALL)
    good = canonical_grant(alice.public["node_id"], "c" * 32, issued_at=WALL)
    box = alice.public["box_key"]
    results = dispatch(directory, "sign_many", {"items": [
        _item(grant, box, b64e(key)), _item(good, box, box)]})["results"]
    assert results[0] == {"error": "refused", "detail": "cannot seal a token to that key"}
    assert set(results[1]) == {"signature", "sealed_tokens"}


@pytest.mark.parametrize(
    "seal_to",
    [
        None, "x", [], [b64e(bytes(32))], [b64e(bytes(32))] * 3,
        [b64e(bytes(31)), b64e(bytes(32))], [b64e(bytes(32)), b64e(bytes(33))],
        [b64e(bytes(32)), 7], [b64e(bytes(32)), "not base64url!"],
        {"initiator": b64e(bytes(32)), "responder": b64e(bytes(32))},
    ],
    ids=["null", "string", "empty", "one", "three", "short", "long", "number", "not-b64",
         "object"],
)
def test_malformed_seal_to_refuses_the_whole_call(
    directory: JailState, seal_to: Any
) -> None:
    grant = canonical_grant("a" * 32, "b" * 32, issued_at=WALL)
    item = {"kind": "grant", "data": b64e(grant), "seal_to": seal_to}
    good = {"kind": "entry_hash", "data": b64e(bytes(32))}
    assert refused(directory, "sign_many", {"items": [good, item]}).code == "bad_request"


@pytest.mark.parametrize("kind", ["entry_hash", "checkpoint", "http_signature_base"])
def test_only_a_grant_carries_seal_to(directory: JailState, kind: str) -> None:
    box = b64e(bytes(nacl.public.PrivateKey.generate().public_key))
    item = {"kind": kind, "data": b64e(bytes(32)), "seal_to": [box, box]}
    error = refused(directory, "sign_many", {"items": [item]})
    assert (error.code, error.detail) == ("bad_request", "only a grant carries seal_to")


def test_seal_to_and_a_consistency_proof_do_not_mix(directory: JailState) -> None:
    box = b64e(bytes(nacl.public.PrivateKey.generate().public_key))
    grant = canonical_grant("a" * 32, "b" * 32, issued_at=WALL)
    item = {"kind": "grant", "data": b64e(grant), "seal_to": [box, box],
            "consistency_proof": []}
    with pytest.raises(OpRefused) as info:
        dispatch(directory, "sign_many", {"items": [item]})
    assert info.value.code == "bad_request"
