"""Paired connection tokens (DESIGN §5): derivation, one-way link, constant-time match."""

from __future__ import annotations

import hashlib
import hmac
import inspect
import os

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from crypto_jail import tokens as jail_tokens
from openred.crypto.grants import Grant, mint_tokens, new_grant
from openred.crypto.identity import NodeId
from openred.crypto.tokens import derive_token_a, tokens_match
from openred.errors import CryptoError

A = NodeId("a" * 32)
B = NodeId("b" * 32)


def grant(grant_id: bytes = b"\x07" * 16, issued_at: int = 1_700_000_000) -> Grant:
    return new_grant(A, B, grant_id=grant_id, issued_at=issued_at, suite="25519_AESGCM_SHA256",
                     initiator_record=b"\x01" * 32, responder_record=b"\x02" * 32)


def test_derivation_follows_design_section_5() -> None:
    g, secret = grant(), os.urandom(32)
    token_a, token_b = mint_tokens(g, secret)
    # Recompute with the formula written out, independently of crypto_jail.tokens.
    gh = hashlib.sha256(g.canonical_bytes()).digest()
    b = HKDF(hashes.SHA256(), 32, salt=b"\x07" * 16, info=b"openred/v3 token beta" + gh).derive(
        secret
    )
    a = HKDF(hashes.SHA256(), 32, salt=b"\x07" * 16, info=b"openred/v3 token alpha" + gh).derive(b)
    assert (token_a, token_b) == (a, b)
    assert g.grant_hash == gh == jail_tokens.grant_hash(g.canonical_bytes())


def test_tokens_differ_and_are_32_bytes() -> None:
    token_a, token_b = mint_tokens(grant(), os.urandom(32))
    assert token_a != token_b
    assert len(token_a) == len(token_b) == 32


def test_responder_derives_token_a_from_token_b() -> None:
    g = grant()
    token_a, token_b = mint_tokens(g, os.urandom(32))
    assert derive_token_a(token_b, g) == token_a
    assert tokens_match(token_a, token_b, g)


def test_token_a_does_not_yield_token_b() -> None:
    # The link is one way: deriving "forward" from token_a gives neither half.
    g = grant()
    token_a, token_b = mint_tokens(g, os.urandom(32))
    assert derive_token_a(token_a, g) not in (token_a, token_b)
    assert not tokens_match(token_b, token_a, g)  # halves swapped


def test_fresh_secrets_give_fresh_tokens() -> None:
    g = grant()
    assert mint_tokens(g, os.urandom(32)) != mint_tokens(g, os.urandom(32))


def test_tokens_from_two_grants_never_match() -> None:
    g1, g2 = grant(b"\x01" * 16), grant(b"\x02" * 16)
    a1, b1 = mint_tokens(g1, os.urandom(32))
    a2, b2 = mint_tokens(g2, os.urandom(32))
    assert not tokens_match(a1, b2, g1)
    assert not tokens_match(a1, b2, g2)
    assert not tokens_match(a2, b1, g2)
    # Even the same secret under a different grant (hash differs) gives unrelated tokens.
    secret = os.urandom(32)
    a3, b3 = mint_tokens(g1, secret)
    a4, b4 = mint_tokens(grant(b"\x01" * 16, issued_at=1_700_000_001), secret)
    assert a3 != a4 and b3 != b4
    assert not tokens_match(a3, b3, grant(b"\x01" * 16, issued_at=1_700_000_001))


def test_flipping_any_bit_breaks_the_match() -> None:
    g = grant()
    token_a, token_b = mint_tokens(g, os.urandom(32))
    for i in range(32):
        flipped_a = bytearray(token_a)
        flipped_a[i] ^= 1 << (i % 8)
        assert not tokens_match(bytes(flipped_a), token_b, g)
        flipped_b = bytearray(token_b)
        flipped_b[i] ^= 1 << (i % 8)
        assert not tokens_match(token_a, bytes(flipped_b), g)


def test_tokens_match_compares_in_constant_time() -> None:
    # The comparison goes through hmac.compare_digest, never ==.
    source = inspect.getsource(jail_tokens.tokens_match)
    assert "hmac.compare_digest" in source
    assert "==" not in source
    assert jail_tokens.hmac is hmac  # type: ignore[attr-defined]


@pytest.mark.parametrize("length", [0, 16, 31, 33])
def test_wrong_token_lengths_are_refused(length: int) -> None:
    g = grant()
    token_a, token_b = mint_tokens(g, os.urandom(32))
    with pytest.raises(CryptoError):
        tokens_match(b"\x00" * length, token_b, g)
    with pytest.raises(CryptoError):
        tokens_match(token_a, b"\x00" * length, g)
    with pytest.raises(CryptoError):
        derive_token_a(b"\x00" * length, g)


@pytest.mark.parametrize(
    ("secret", "grant_id", "ghash"),
    [
        (b"\x00" * 31, b"\x00" * 16, b"\x00" * 32),
        (b"\x00" * 32, b"\x00" * 15, b"\x00" * 32),
        (b"\x00" * 32, b"\x00" * 17, b"\x00" * 32),
        (b"\x00" * 32, b"\x00" * 16, b"\x00" * 31),
    ],
)
def test_jail_derivation_validates_lengths(secret: bytes, grant_id: bytes, ghash: bytes) -> None:
    with pytest.raises(ValueError):
        jail_tokens.derive_token_b(secret, grant_id, ghash)
    with pytest.raises(ValueError):
        jail_tokens.derive_token_a(secret, grant_id, ghash)
    with pytest.raises(ValueError):
        jail_tokens.tokens_match(secret, secret, grant_id, ghash)


def test_jail_grant_hash_refuses_non_bytes() -> None:
    with pytest.raises(ValueError):
        jail_tokens.grant_hash("{}")  # type: ignore[arg-type]


# --- check_canonical_grant (what the jail accepts) -----------------------------------------


def canonical() -> bytes:
    return grant().canonical_bytes()


def test_check_canonical_grant_accepts_real_grant() -> None:
    fields = jail_tokens.check_canonical_grant(canonical())
    assert fields == grant().to_dict()
    assert jail_tokens.decode_grant_id(str(fields["grant_id"])) == b"\x07" * 16


@pytest.mark.parametrize(
    "mutate",
    [
        pytest.param(lambda b: b.replace(b",", b", "), id="space-after-comma"),
        pytest.param(lambda b: b.replace(b":", b": "), id="space-after-colon"),
        pytest.param(lambda b: b + b"\n", id="trailing-newline"),
        pytest.param(lambda b: b" " + b, id="leading-space"),
        pytest.param(lambda b: b'{"v":3,' + b[1:].replace(b',"v":3', b""), id="key-order"),
        pytest.param(lambda b: b[:-1] + b',"x":1}', id="extra-field"),
        pytest.param(lambda b: b.replace(b'"v":3', b'"v":2'), id="wrong-v"),
        pytest.param(lambda b: b.replace(b'"v":3', b'"v":3.0'), id="float-v"),
        pytest.param(lambda b: b.replace(b'"v":3', b'"v":true'), id="bool-v"),
        pytest.param(lambda b: b.replace(b"1700000300", b"1.7000003e9"), id="exponent"),
        pytest.param(lambda b: b.replace(b"1700000300", b"01700000300"), id="leading-zero"),
        pytest.param(lambda b: b.replace(b'"v":3', b'"v":3,"v":3'), id="duplicate-key"),
        pytest.param(lambda b: b.replace(b'"suite":"', b'"suite":"\\u0032'), id="escape"),
        pytest.param(lambda b: b.replace(b"1700000300", b"NaN"), id="nan"),
        pytest.param(lambda b: b.replace(b"1700000300", b"1699999999"), id="expires-first"),
        pytest.param(lambda b: b"[" + b + b"]", id="array"),
        pytest.param(lambda b: b"\xff" + b, id="not-utf8"),
        pytest.param(lambda b: b[:-1], id="truncated"),
        pytest.param(lambda b: b"", id="empty"),
        pytest.param(lambda b: b[:-1] + b',"pad":"' + b"x" * 1024 + b'"}', id="oversized"),
    ],
)
def test_check_canonical_grant_rejects(mutate: object) -> None:
    data = mutate(canonical())  # type: ignore[operator]
    assert data != canonical()
    with pytest.raises(ValueError):
        jail_tokens.check_canonical_grant(data)


def test_check_canonical_grant_rejects_non_bytes() -> None:
    with pytest.raises(ValueError):
        jail_tokens.check_canonical_grant(canonical().decode())  # type: ignore[arg-type]
