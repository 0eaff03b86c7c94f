"""Grants, their canonical bytes and signatures, and sealed token delivery (DESIGN §5)."""

from __future__ import annotations

import json
import os

import nacl.exceptions
import nacl.public
import nacl.signing
import pytest
import rfc8785
from hypothesis import given
from hypothesis import strategies as st

from crypto_jail.tokens import check_canonical_grant
from openred.crypto.grants import (
    DEFAULT_TTL,
    SEALED_TOKEN_LEN,
    Grant,
    check_sealed_token,
    mint_tokens,
    new_grant,
    seal_token,
    verify_grant_signature,
    verify_signed_grant,
)
from openred.crypto.identity import BoxKey, NodeId, SignKey
from openred.errors import CryptoError, InvalidSignature

A = NodeId("a" * 32)
B = NodeId("b" * 32)
SUITE = "25519_ChaChaPoly_SHA256"
GRANT_ID = bytes(range(16))
R1 = "AQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQEBAQE"
R2 = "AgICAgICAgICAgICAgICAgICAgICAgICAgICAgICAgI"
RECORDS = {"initiator_record": b"\x01" * 32, "responder_record": b"\x02" * 32}


def make_grant(**overrides: object) -> Grant:
    args: dict[str, object] = {"grant_id": GRANT_ID, "issued_at": 1_700_000_000, "suite": SUITE,
                               **RECORDS}
    args.update(overrides)
    return new_grant(A, B, **args)  # type: ignore[arg-type]


def test_new_grant_fields() -> None:
    g = make_grant()
    assert g.v == 3
    assert g.grant_id == "AAECAwQFBgcICQoLDA0ODw"
    assert g.grant_id_bytes == GRANT_ID
    assert (g.initiator, g.responder) == (A, B)
    assert g.expires_at == g.issued_at + DEFAULT_TTL == 1_700_000_300
    assert make_grant(ttl=60).expires_at == 1_700_000_060


def test_canonical_bytes_are_rfc8785_with_sorted_keys() -> None:
    g = make_grant()
    expected = (
        '{"expires_at":1700000300,"grant_id":"AAECAwQFBgcICQoLDA0ODw",'
        f'"initiator":"{A}","initiator_record":"{R1}",'
        f'"issued_at":1700000000,"responder":"{B}","responder_record":"{R2}",'
        f'"suite":"{SUITE}","v":3}}'
    ).encode()
    assert g.canonical_bytes() == expected
    assert rfc8785.dumps(json.loads(expected)) == expected
    # Stable: the same fields always give the same bytes and hash.
    assert make_grant().canonical_bytes() == expected
    assert make_grant().grant_hash == g.grant_hash


def test_every_field_changes_the_hash() -> None:
    base = make_grant()
    variants = [
        make_grant(grant_id=bytes(16)),
        make_grant(issued_at=1_700_000_001),
        make_grant(ttl=301),
        make_grant(suite="25519_AESGCM_SHA256"),
        new_grant(B, A, grant_id=GRANT_ID, issued_at=1_700_000_000, suite=SUITE, **RECORDS),
    ]
    hashes = {v.grant_hash for v in variants} | {base.grant_hash}
    assert len(hashes) == len(variants) + 1


@given(
    grant_id=st.binary(min_size=16, max_size=16),
    issued_at=st.integers(min_value=0, max_value=2**40),
    ttl=st.integers(min_value=1, max_value=10**6),
    suite=st.from_regex(r"[A-Za-z0-9_.-]{1,64}", fullmatch=True),
)
def test_canonical_roundtrip(grant_id: bytes, issued_at: int, ttl: int, suite: str) -> None:
    g = new_grant(A, B, grant_id=grant_id, issued_at=issued_at, ttl=ttl, suite=suite, **RECORDS)
    data = g.canonical_bytes()
    # The jail's stdlib check and the rfc8785 library agree on what is canonical.
    assert check_canonical_grant(data) == g.to_dict()
    assert Grant.from_canonical(data) == g
    assert Grant.from_dict(json.loads(data)) == g


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("v", 2),
        ("v", True),
        ("grant_id", "short"),
        ("grant_id", "AAECAwQFBgcICQoLDA0ODx"),  # non-zero trailing bits
        ("initiator", "A" * 32),
        ("responder", "a" * 32),  # same as the initiator
        ("issued_at", -1),
        ("issued_at", 1.5),
        ("issued_at", 2**53),
        ("expires_at", 1_700_000_000),  # not after issued_at
        ("suite", ""),
        ("suite", "has space"),
        ("suite", "x" * 65),
    ],
)
def test_from_dict_rejects_malformed_fields(field: str, value: object) -> None:
    obj = make_grant().to_dict() | {field: value}
    with pytest.raises(CryptoError, match="grant is malformed"):
        Grant.from_dict(obj)


def test_from_dict_rejects_missing_and_extra_fields() -> None:
    obj = make_grant().to_dict()
    with pytest.raises(CryptoError):
        Grant.from_dict({k: v for k, v in obj.items() if k != "suite"})
    with pytest.raises(CryptoError):
        Grant.from_dict(obj | {"extra": 1})


def test_constructor_validates_too() -> None:
    with pytest.raises(CryptoError):
        Grant(grant_id="x", initiator=A, responder=B, issued_at=0, expires_at=1, suite=SUITE,
              initiator_record=R1, responder_record=R2)
    with pytest.raises(CryptoError):
        make_grant(grant_id=bytes(15))
    with pytest.raises(CryptoError):
        make_grant(ttl=0)


def test_from_canonical_rejects_non_canonical_bytes() -> None:
    data = make_grant().canonical_bytes()
    pretty = json.dumps(json.loads(data), sort_keys=True).encode()
    with pytest.raises(CryptoError):
        Grant.from_canonical(pretty)


def test_expired() -> None:
    g = make_grant()
    assert not g.expired(g.issued_at)
    assert not g.expired(g.expires_at - 1)
    assert g.expired(g.expires_at)
    assert g.expired(g.expires_at + 10**6)


def test_involves() -> None:
    g = make_grant()
    assert g.involves(A) and g.involves(B)
    assert not g.involves(NodeId("c" * 32))


# --- signatures ----------------------------------------------------------------------------


@pytest.fixture
def directory() -> nacl.signing.SigningKey:
    return nacl.signing.SigningKey.generate()


def test_grant_signature_verifies(directory: nacl.signing.SigningKey) -> None:
    g = make_grant()
    sig = directory.sign(g.canonical_bytes()).signature
    key = SignKey(bytes(directory.verify_key))
    verify_grant_signature(g, sig, key)  # returns None, raises on failure
    assert verify_signed_grant(g.canonical_bytes(), sig, key) == g


def test_grant_signature_by_wrong_key_fails(directory: nacl.signing.SigningKey) -> None:
    g = make_grant()
    sig = nacl.signing.SigningKey.generate().sign(g.canonical_bytes()).signature
    key = SignKey(bytes(directory.verify_key))
    with pytest.raises(InvalidSignature):
        verify_grant_signature(g, sig, key)
    with pytest.raises(InvalidSignature):
        verify_signed_grant(g.canonical_bytes(), sig, key)


def test_tampered_grant_fails(directory: nacl.signing.SigningKey) -> None:
    g = make_grant()
    sig = directory.sign(g.canonical_bytes()).signature
    key = SignKey(bytes(directory.verify_key))
    for tampered in (make_grant(ttl=3600), make_grant(suite="25519_AESGCM_SHA256"),
                     new_grant(A, NodeId("c" * 32), grant_id=GRANT_ID, issued_at=g.issued_at,
                               suite=SUITE, **RECORDS),
                     make_grant(initiator_record=b"\x03" * 32)):
        with pytest.raises(InvalidSignature):
            verify_grant_signature(tampered, sig, key)
    raw = g.canonical_bytes().replace(b"1700000300", b"1700009999")
    with pytest.raises(InvalidSignature):
        verify_signed_grant(raw, sig, key)
    with pytest.raises(InvalidSignature):
        verify_grant_signature(g, sig[:-1] + bytes([sig[-1] ^ 0x80]), key)


def test_signed_but_malformed_grant_is_refused(directory: nacl.signing.SigningKey) -> None:
    data = make_grant().canonical_bytes().replace(b'"v":3', b'"v":4')
    sig = directory.sign(data).signature
    with pytest.raises(CryptoError):
        verify_signed_grant(data, sig, SignKey(bytes(directory.verify_key)))


# --- sealed delivery -----------------------------------------------------------------------


def test_sealed_token_roundtrip_with_test_key() -> None:
    node = nacl.public.PrivateKey.generate()
    token = os.urandom(32)
    sealed = seal_token(token, BoxKey(bytes(node.public_key)))
    assert len(sealed) == SEALED_TOKEN_LEN == 80
    assert sealed.find(token) == -1
    assert check_sealed_token(bytes(sealed)) == sealed
    assert nacl.public.SealedBox(node).decrypt(sealed) == token
    # Sealing is randomized (fresh ephemeral key): two deliveries never look alike.
    assert seal_token(token, BoxKey(bytes(node.public_key))) != sealed


def test_sealed_token_wrong_key_fails() -> None:
    node = nacl.public.PrivateKey.generate()
    other = nacl.public.PrivateKey.generate()
    sealed = seal_token(os.urandom(32), BoxKey(bytes(node.public_key)))
    with pytest.raises(nacl.exceptions.CryptoError):
        nacl.public.SealedBox(other).decrypt(sealed)


def test_tampered_sealed_token_fails() -> None:
    node = nacl.public.PrivateKey.generate()
    sealed = bytearray(seal_token(os.urandom(32), BoxKey(bytes(node.public_key))))
    sealed[-1] ^= 1
    with pytest.raises(nacl.exceptions.CryptoError):
        nacl.public.SealedBox(node).decrypt(bytes(sealed))


@pytest.mark.parametrize("length", [0, 31, 33])
def test_seal_token_rejects_wrong_length(length: int) -> None:
    key = BoxKey(bytes(nacl.public.PrivateKey.generate().public_key))
    with pytest.raises(CryptoError):
        seal_token(b"\x00" * length, key)


@pytest.mark.parametrize("length", [0, 79, 81])
def test_check_sealed_token_rejects_wrong_length(length: int) -> None:
    with pytest.raises(CryptoError):
        check_sealed_token(b"\x00" * length)


def test_mint_tokens_needs_a_32_byte_secret() -> None:
    with pytest.raises(CryptoError):
        mint_tokens(make_grant(), b"\x00" * 31)
