"""``sign_many``: ``sign`` for several items in one call, with the same checks per item."""

from __future__ import annotations

import hashlib
import json
from typing import Any

import pytest

from crypto_jail.errors import OpRefused
from crypto_jail.ops import JailState, dispatch
from crypto_jail.protocol import MAX_SIGN_MANY, b64d, b64e
from tests.crypto_jail.test_ops import (
    HTTP_BASE,
    WALL,
    alice,  # noqa: F401 - fixture
    canonical_grant,
    checkpoint_for,
    clock,  # noqa: F401 - fixture
    refused,
    verify,
)


def _base(*, keyid: str = "directory", created: int = WALL, nonce: str = "abcdefghijklmnop",
          uri: str = "http://127.0.0.1:8711/api/v3/tokens/receive") -> bytes:
    digest = HTTP_BASE.split(b"\n")[2].decode()
    return (
        '"@method": POST\n'
        f'"@target-uri": {uri}\n'
        f"{digest}\n"
        '"@signature-params": ("@method" "@target-uri" "content-digest");'
        f'created={created};keyid="{keyid}";alg="ed25519";nonce="{nonce}"'
    ).encode()


def _items(*pairs: tuple[str, bytes]) -> dict[str, Any]:
    return {"items": [{"kind": kind, "data": b64e(data)} for kind, data in pairs]}


def _sign_answer(state: JailState, kind: str, data: bytes) -> dict[str, str]:
    """What ``sign`` answers for one item, as a sign_many result."""
    try:
        return dispatch(state, "sign", {"kind": kind, "data": b64e(data)})
    except OpRefused as exc:
        return {"error": exc.code, "detail": exc.detail}


def test_each_item_is_signed_as_sign_signs_it_in_order(alice: JailState) -> None:  # noqa: F811
    pairs = [
        ("grant", canonical_grant("a" * 32, "b" * 32, issued_at=WALL)),
        ("http_signature_base", _base(nonce="n" * 22)),
        ("http_signature_base", _base(nonce="m" * 22)),
        ("checkpoint", checkpoint_for(alice.public["node_id"])),
        ("entry_hash", hashlib.sha256(b"e").digest()),
        ("http_signature_base", HTTP_BASE),
    ]
    results = dispatch(alice, "sign_many", _items(*pairs))["results"]
    assert len(results) == len(pairs)
    for (kind, data), result in zip(pairs, results, strict=True):
        assert set(result) == {"signature"}
        verify(alice, result["signature"], data)
        assert result == _sign_answer(alice, kind, data)  # Ed25519 is deterministic


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        # wrong key ids: the profile allows a node id or "directory" only
        ("http_signature_base", _base(keyid="Directory")),
        ("http_signature_base", _base(keyid="admin")),
        ("http_signature_base", _base(keyid="a" * 31)),
        ("http_signature_base", _base(keyid="")),
        # outside the jail's clock window
        ("http_signature_base", _base(created=WALL - 61)),
        ("http_signature_base", _base(created=WALL + 61)),
        ("grant", canonical_grant("a" * 32, "b" * 32, issued_at=WALL - 301)),
        # another log's checkpoint, not a structure at all, an unknown kind
        ("checkpoint", checkpoint_for("c" * 32)),
        ("http_signature_base", b"GET / HTTP/1.1 please sign me"),
        ("grant", canonical_grant("a" * 32, "b" * 32).replace(b",", b", ")),
        ("entry_hash", bytes(31)),
        ("raw", bytes(32)),
        ("", bytes(32)),
    ],
)
def test_an_item_sign_refuses_gets_the_same_refusal_and_the_others_are_signed(
    alice: JailState, kind: str, data: bytes  # noqa: F811
) -> None:
    good = _base(nonce="g" * 22)
    results = dispatch(alice, "sign_many", _items(
        ("http_signature_base", good), (kind, data), ("http_signature_base", good)))["results"]
    with pytest.raises(OpRefused) as info:
        dispatch(alice, "sign", {"kind": kind, "data": b64e(data)})
    assert results[1] == {"error": info.value.code, "detail": info.value.detail}
    assert results[1]["error"] in {"refused", "bad_request"}
    for result in (results[0], results[2]):
        verify(alice, result["signature"], good)


@pytest.mark.parametrize(
    "args",
    [
        {},
        {"items": []},
        {"items": None},
        {"items": {"kind": "entry_hash", "data": b64e(bytes(32))}},
        {"items": "x"},
        {"items": [{"kind": "entry_hash", "data": b64e(bytes(32))}], "extra": 1},
        {"items": [["entry_hash", b64e(bytes(32))]]},
        {"items": [{"kind": "entry_hash"}]},
        {"items": [{"data": b64e(bytes(32))}]},
        {"items": [{"kind": "entry_hash", "data": b64e(bytes(32)), "more": 1}]},
        {"items": [{"kind": 7, "data": b64e(bytes(32))}]},
        {"items": [{"kind": "entry_hash", "data": 7}]},
        {"items": [{"kind": "entry_hash", "data": "not base64url!"}]},
        {"items": [{"kind": "entry_hash", "data": b64e(bytes(32)) + "="}]},
        {"items": [{"kind": "entry_hash", "data": "AB"}]},  # non-zero trailing bits
        # one malformed item refuses the whole call, however many good ones come first
        {"items": [{"kind": "entry_hash", "data": b64e(bytes(32))}, 5]},
        {"items": [{"kind": "entry_hash", "data": b64e(bytes(32))}] * (MAX_SIGN_MANY + 1)},
    ],
)
def test_malformed_or_oversized_requests_are_refused_whole(
    alice: JailState, args: dict[str, Any]  # noqa: F811
) -> None:
    assert refused(alice, "sign_many", args).code == "bad_request"


def test_the_largest_batch_is_signed(alice: JailState) -> None:  # noqa: F811
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(MAX_SIGN_MANY)]
    results = dispatch(alice, "sign_many", _items(*(("entry_hash", h) for h in hashes)))
    for h, result in zip(hashes, results["results"], strict=True):
        verify(alice, result["signature"], h)


def test_answers_hold_signatures_and_refusals_only(alice: JailState) -> None:  # noqa: F811
    answer = dispatch(alice, "sign_many", _items(("entry_hash", bytes(32)), ("raw", b"x")))
    assert set(answer) == {"results"}
    text = json.dumps(answer)
    assert b64e(bytes(alice.keystore.signing_key))[:20] not in text
    assert len(b64d(answer["results"][0]["signature"])) == 64
