"""A node record's canonical form (the store's fast encoder) is RFC 8785; node ids are memoized."""

from __future__ import annotations

import base64
import hashlib
import json
import random
import string

import nacl.signing
import pytest
import rfc8785

from crypto_jail.structures import check_node_record_fields
from openred.crypto.identity import BoxKey, NodeId, SignKey
from openred.crypto.records import NodeRecord
from openred.store.codec import canonical_json

# Every character check_node_record_fields lets into an api_url.
URL_CHARS = "".join(chr(c) for c in range(0x21, 0x7F) if chr(c) not in '"\\')
MODULE_CHARS = string.ascii_lowercase + string.digits + "_.-"


def random_record(rng: random.Random) -> NodeRecord:
    key = SignKey(bytes(nacl.signing.SigningKey(rng.randbytes(32)).verify_key))
    host = "".join(rng.choice(URL_CHARS) for _ in range(rng.randint(1, 120)))
    modules = {rng.choice(string.ascii_lowercase) + "".join(
        rng.choice(MODULE_CHARS) for _ in range(rng.randint(0, 63)))
        for _ in range(rng.randint(0, 32))}
    return NodeRecord.build(
        sign_key=key, box_key=BoxKey(rng.randbytes(32)),
        api_url=rng.choice(["http://", "https://"]) + host, modules=modules,
        issued_at=rng.choice([0, 1, 2**53 - 1, rng.randrange(2**53)]),
        version=rng.choice([1, 2**53 - 1, rng.randrange(1, 2**53)]))


def test_fast_canonical_bytes_are_rfc8785_over_random_records() -> None:
    rng = random.Random(9421)
    for _ in range(500):
        record = random_record(rng)
        obj = record.to_dict()
        check_node_record_fields(obj)
        assert record.canonical_bytes() == rfc8785.dumps(obj)
        assert canonical_json(obj) == rfc8785.dumps(obj)


def test_to_dict_is_a_fresh_copy_every_time() -> None:
    record = random_record(random.Random(1))
    first = record.to_dict()
    first["modules"].append("zzz")
    first["api_url"] = "https://elsewhere.example"
    assert record.to_dict() != first
    assert rfc8785.dumps(record.to_dict()) == record.canonical_bytes()


@pytest.mark.parametrize("odd", [
    {"a": "quote \" inside"}, {"a": "back\\slash"}, {"a": "tab\there"}, {"a": "é"},
    {"a": "\x7f"}, {"a": 2**53}, {"a": -(2**53) + 1}, {"a": ["x", "\n"]}, {"é": 1},
    {"b": 1, "a": [], "c": ""},
])
def test_anything_unusual_is_left_to_rfc8785(odd: dict[str, object]) -> None:
    try:
        expected = rfc8785.dumps(odd)
    except Exception as exc:  # the general canonicalizer refuses it: so must the fast one
        # (the store's encoder reports the library's refusal as a ValueError caused by it)
        with pytest.raises(ValueError) as refused:
            canonical_json(odd)
        assert type(refused.value.__cause__) is type(exc)
        return
    assert canonical_json(odd) == expected


def test_node_id_memo_is_the_derivation() -> None:
    rng = random.Random(7)
    for _ in range(200):
        raw = rng.randbytes(32)
        expected = base64.b32encode(hashlib.sha256(raw).digest()[:20]).decode().lower()
        assert NodeId.for_key(SignKey(raw)) == expected
        assert NodeId.for_key(SignKey(raw)) == expected  # from the memo
        assert type(NodeId.for_key(SignKey(raw))) is NodeId


def test_from_dict_builds_what_the_checked_constructor_builds() -> None:
    rng = random.Random(8785)
    for _ in range(300):
        built = random_record(rng)
        obj = json.loads(json.dumps(built.to_dict()))
        parsed = NodeRecord.from_dict(obj)
        assert parsed == built
        for name in ("node_id", "api_url", "sign_key", "box_key", "modules", "issued_at",
                     "version"):
            assert getattr(parsed, name) == getattr(built, name)
            assert type(getattr(parsed, name)) is type(getattr(built, name))
        assert parsed.canonical_bytes() == built.canonical_bytes() == rfc8785.dumps(obj)
        assert list(parsed.to_dict().items()) == list(built.to_dict().items())
        assert parsed.hash == built.hash
        obj["modules"].append("zzzz")  # the record keeps its own copy
        assert parsed.to_dict() == built.to_dict()


@pytest.mark.parametrize("change", [
    {"sign_key": "A" * 43}, {"node_id": "a" * 32}, {"modules": ["b", "a"]},
    {"version": 0}, {"issued_at": True}, {"api_url": "ftp://x"}, {"extra": 1},
    {"box_key": "A" * 42 + "B"},
])
def test_from_dict_still_refuses_what_the_check_refuses(change: dict[str, object]) -> None:
    from openred.errors import CryptoError

    obj = random_record(random.Random(2)).to_dict()
    obj.update(change)
    with pytest.raises(CryptoError):
        NodeRecord.from_dict(obj)
