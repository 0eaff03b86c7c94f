"""Signed node records: the node's own word about its URL and keys (DESIGN §2)."""

from __future__ import annotations

import json

import nacl.signing
import pytest
import rfc8785

from crypto_jail.structures import is_node_record
from openred.crypto.identity import BoxKey, SignKey, b64url
from openred.crypto.records import (
    NodeRecord,
    SignedNodeRecord,
    record_hash,
    sign_record,
    verify_signed_record,
)
from openred.errors import CryptoError, InvalidSignature


def keypair() -> tuple[nacl.signing.SigningKey, SignKey]:
    sk = nacl.signing.SigningKey.generate()
    return sk, SignKey(bytes(sk.verify_key))


def make_record(key: SignKey, **overrides: object) -> NodeRecord:
    args: dict[str, object] = {
        "sign_key": key, "box_key": BoxKey(b"\x09" * 32), "api_url": "https://n.example",
        "modules": ["messaging", "file_sharing"], "issued_at": 1_700_000_000, "version": 1,
    }
    args.update(overrides)
    return NodeRecord.build(**args)  # type: ignore[arg-type]


def signed(sk: nacl.signing.SigningKey, record: NodeRecord) -> SignedNodeRecord:
    return SignedNodeRecord(record, sk.sign(record.canonical_bytes()).signature)


def test_record_is_canonical_sorted_and_signable_by_the_jail() -> None:
    _, key = keypair()
    record = make_record(key)
    assert record.modules == ("file_sharing", "messaging")
    assert record.canonical_bytes() == rfc8785.dumps(json.loads(record.canonical_bytes()))
    assert is_node_record(record.canonical_bytes())
    assert record.node_id == key.node_id
    assert record_hash(record) == record.hash and len(record.hash) == 32


def test_signed_record_roundtrips_through_the_wire_form() -> None:
    sk, key = keypair()
    s = signed(sk, make_record(key))
    again = SignedNodeRecord.from_wire(json.loads(json.dumps(s.to_wire())))
    assert verify_signed_record(again) == s.record
    assert record_hash(again) == record_hash(s)


def test_a_record_signed_by_another_key_is_refused() -> None:
    _, key = keypair()
    other_sk, _ = keypair()
    with pytest.raises(InvalidSignature):
        verify_signed_record(signed(other_sk, make_record(key)))


@pytest.mark.parametrize("field,value", [
    ("api_url", "https://evil.example"),
    ("box_key", b64url(b"\x0a" * 32)),
    ("version", 2),
    ("modules", ["messaging"]),
])
def test_a_substituted_field_breaks_the_signature(field: str, value: object) -> None:
    sk, key = keypair()
    wire = signed(sk, make_record(key)).to_wire()
    wire["record"][field] = value
    with pytest.raises(InvalidSignature):
        verify_signed_record(SignedNodeRecord.from_wire(wire))


def test_a_record_claiming_another_nodes_id_is_malformed() -> None:
    sk, key = keypair()
    _, other = keypair()
    wire = signed(sk, make_record(key)).to_wire()
    wire["record"]["node_id"] = str(other.node_id)
    with pytest.raises(CryptoError):
        SignedNodeRecord.from_wire(wire)


@pytest.mark.parametrize("mutate", [
    lambda w: w | {"extra": 1},
    lambda w: {"record": w["record"]},
    lambda w: w | {"signature": "not base64!"},
    lambda w: w | {"signature": b64url(b"\x00" * 63)},
    lambda w: w | {"record": w["record"] | {"extra": 1}},
    lambda w: w | {"record": w["record"] | {"version": 0}},
    lambda w: w | {"record": w["record"] | {"issued_at": "now"}},
    lambda w: w | {"record": w["record"] | {"api_url": "gopher://x"}},
    lambda w: w | {"record": w["record"] | {"sign_key": "AAAA"}},
    lambda w: w | {"record": []},
    lambda w: [],
])
def test_malformed_wire_forms_are_refused(mutate: object) -> None:
    sk, key = keypair()
    wire = signed(sk, make_record(key)).to_wire()
    with pytest.raises(CryptoError):
        SignedNodeRecord.from_wire(mutate(wire))  # type: ignore[operator]


async def test_sign_record_uses_the_node_record_kind_and_checks_the_result() -> None:
    sk, key = keypair()
    kinds: list[str] = []

    async def sign(kind: str, data: bytes) -> bytes:
        kinds.append(kind)
        assert is_node_record(data)
        return bytes(sk.sign(data).signature)

    result = await sign_record(make_record(key), sign)
    assert kinds == ["node_record"]
    assert verify_signed_record(result) == result.record

    async def wrong(kind: str, data: bytes) -> bytes:
        return bytes(nacl.signing.SigningKey.generate().sign(data).signature)

    with pytest.raises(InvalidSignature):
        await sign_record(make_record(key), wrong)
