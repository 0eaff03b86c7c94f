"""Identity types (DESIGN §2): the self-certifying node id and the two public-key roles."""

from __future__ import annotations

import base64
import hashlib

import nacl.signing
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openred.crypto.identity import BoxKey, NodeId, SignKey, b64url, from_b64url
from openred.errors import InvalidKey, InvalidSignature

# RFC 8032 §7.1 TEST 1 public key, so the node id below is checked against an independent value.
RFC8032_PUB = bytes.fromhex("d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a")


def test_node_id_is_lowercase_base32_of_first_20_bytes_of_sha256() -> None:
    key = SignKey(RFC8032_PUB)
    expected = base64.b32encode(hashlib.sha256(RFC8032_PUB).digest()[:20]).decode().lower()
    assert key.node_id == expected
    assert len(key.node_id) == 32
    assert key.node_id == key.node_id.lower()
    assert "=" not in key.node_id
    assert isinstance(key.node_id, NodeId)
    assert NodeId.for_key(key) == key.node_id


@given(st.binary(min_size=32, max_size=32))
def test_node_id_is_deterministic_and_valid_for_any_key(raw: bytes) -> None:
    node_id = SignKey(raw).node_id
    assert NodeId(str(node_id)) == node_id
    assert SignKey(raw).node_id == node_id


def test_different_keys_give_different_node_ids() -> None:
    a = SignKey(bytes(nacl.signing.SigningKey.generate().verify_key))
    b = SignKey(bytes(nacl.signing.SigningKey.generate().verify_key))
    assert a.node_id != b.node_id


@pytest.mark.parametrize(
    "text",
    [
        "",
        "a" * 31,
        "a" * 33,
        "A" * 32,  # uppercase is not the canonical spelling
        "a" * 31 + "1",  # 0, 1, 8, 9 are not in the base32 alphabet
        "a" * 31 + "8",
        "a" * 31 + "=",
        " " + "a" * 31,
        "a" * 32 + "\n",
    ],
)
def test_node_id_rejects_malformed_text(text: str) -> None:
    with pytest.raises(ValueError):
        NodeId(text)


def test_node_id_rejects_non_strings() -> None:
    with pytest.raises(ValueError):
        NodeId(b"a" * 32)  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [SignKey, BoxKey])
@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_keys_must_be_32_bytes(cls: type[SignKey] | type[BoxKey], length: int) -> None:
    with pytest.raises(InvalidKey):
        cls(b"\x01" * length)


@pytest.mark.parametrize("cls", [SignKey, BoxKey])
def test_keys_must_be_bytes(cls: type[SignKey] | type[BoxKey]) -> None:
    with pytest.raises(InvalidKey):
        cls(bytearray(32))  # type: ignore[arg-type]


@pytest.mark.parametrize("cls", [SignKey, BoxKey])
def test_key_base64url_roundtrip(cls: type[SignKey] | type[BoxKey]) -> None:
    raw = bytes(range(32))
    key = cls(raw)
    text = key.b64url()
    assert "=" not in text and "+" not in text and "/" not in text
    assert cls.from_b64url(text) == key
    assert cls.from_b64url(text).raw == raw


@pytest.mark.parametrize("cls", [SignKey, BoxKey])
@pytest.mark.parametrize("text", ["not base64!", "AAAA", "A" * 44, "+" * 43])
def test_key_from_b64url_rejects_bad_text(cls: type[SignKey] | type[BoxKey], text: str) -> None:
    with pytest.raises(InvalidKey):
        cls.from_b64url(text)


@given(st.binary(max_size=100))
def test_b64url_roundtrip(raw: bytes) -> None:
    text = b64url(raw)
    assert "=" not in text
    assert from_b64url(text) == raw


@pytest.mark.parametrize("text", ["a+b/", "ab cd", "abc$", "ab==="])
def test_from_b64url_rejects_other_alphabets(text: str) -> None:
    with pytest.raises(ValueError):
        from_b64url(text)


def test_sign_and_box_keys_with_same_bytes_are_distinct() -> None:
    raw = bytes(range(32))
    box: object = BoxKey(raw)
    assert SignKey(raw) != box
    assert SignKey(raw) == SignKey(raw)
    assert repr(SignKey(raw)).startswith("SignKey(")
    assert repr(BoxKey(raw)).startswith("BoxKey(")


def test_sign_key_verify_accepts_valid_and_rejects_tampered() -> None:
    sk = nacl.signing.SigningKey.generate()
    key = SignKey(bytes(sk.verify_key))
    sig = sk.sign(b"hello").signature
    key.verify(sig, b"hello")  # returns None, raises on failure
    with pytest.raises(InvalidSignature):
        key.verify(sig, b"hellO")
    with pytest.raises(InvalidSignature):
        key.verify(sig[:-1] + bytes([sig[-1] ^ 1]), b"hello")
    with pytest.raises(InvalidSignature):
        key.verify(sig[:63], b"hello")
    other = SignKey(bytes(nacl.signing.SigningKey.generate().verify_key))
    with pytest.raises(InvalidSignature):
        other.verify(sig, b"hello")


def _from_b64url_by_regex(text: str) -> bytes:
    """``from_b64url`` as it was written first (a regular expression, then urlsafe_b64decode)."""
    import base64
    import binascii
    import re

    if not isinstance(text, str) or not re.fullmatch(r"[A-Za-z0-9_-]*={0,2}", text):
        raise ValueError("not base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def _same_outcome(text: object) -> None:
    try:
        expected: bytes | None = _from_b64url_by_regex(text)  # type: ignore[arg-type]
    except ValueError:
        expected = None
    try:
        got: bytes | None = from_b64url(text)  # type: ignore[arg-type]
    except ValueError:
        got = None
    assert got == expected, text


_NEAR_ALPHABET = "ABCxyz0189-_+/=. \n\t\x00é\u0660"


@settings(max_examples=600)
@given(st.one_of(st.text(), st.text(alphabet=_NEAR_ALPHABET),
                 st.binary().map(lambda raw: b64url(raw)),
                 st.binary().map(lambda raw: b64url(raw) + "=" * (-len(b64url(raw)) % 4))))
def test_from_b64url_accepts_and_decodes_what_the_regular_expression_did(text: str) -> None:
    _same_outcome(text)


@pytest.mark.parametrize("text", [
    "", "=", "==", "===", "A", "AA", "AA=", "AA==", "AA===", "AAA=", "AAAA", "AAAA==",
    "A=A=", "=AAA", "AB+/", "AB-_", "AB-_\n", " AB", "AB==\n", "ABC=\x00", "٠١٢٣", "Zm9v",
    "Zm9vYg", "Zm9vYg=", "Zm9vYh", "Zm9vYmE", "Zm9vYmF", b64url(bytes(range(256))), None, 5,
    b"AAAA",
])
def test_from_b64url_edge_cases_match_the_regular_expression(text: object) -> None:
    _same_outcome(text)
