"""The recognizers that decide what the jail agrees to sign."""

from __future__ import annotations

import base64
import hashlib

import pytest
from hypothesis import given
from hypothesis import strategies as st

from crypto_jail.structures import (
    is_canonical_grant,
    is_checkpoint_body,
    is_entry_hash,
    is_http_signature_base,
    is_node_record,
    is_peer_challenge,
)

ROOT = base64.b64encode(hashlib.sha256(b"root").digest()).decode()
CHECKPOINT = f"openred/{'a' * 32}\n42\n{ROOT}\n".encode()
DIGEST = base64.b64encode(hashlib.sha256(b"{}").digest()).decode()
BASE = (
    '"@method": POST\n'
    '"@target-uri": https://dir.example:8443/api/v3/nodes/register?x=1\n'
    f'"content-digest": sha-256=:{DIGEST}:\n'
    '"@signature-params": ("@method" "@target-uri" "content-digest");created=1700000000;'
    f'keyid="{"b" * 32}";alg="ed25519";nonce="AAAAAAAAAAAAAAAAAAAAAA"'
).encode()
GRANT = (
    '{"expires_at":1700000300,"grant_id":"AAECAwQFBgcICQoLDA0ODw",'
    f'"initiator":"{"a" * 32}","initiator_record":"{"A" * 43}","issued_at":1700000000,'
    f'"responder":"{"b" * 32}","responder_record":"{"B" * 42}A",'
    '"suite":"25519_ChaChaPoly_SHA256","v":3}'
).encode()
HASH = hashlib.sha256(b"entry").digest()
SIGN_KEY = bytes(range(32))
NODE_ID = base64.b32encode(hashlib.sha256(SIGN_KEY).digest()[:20]).decode().lower()
RECORD = (
    '{"api_url":"https://node.example:8443","box_key":"' + "B" * 42 + 'A",'
    '"issued_at":1700000000,"modules":["file_sharing","messaging"],'
    f'"node_id":"{NODE_ID}","sign_key":"'
    + base64.urlsafe_b64encode(SIGN_KEY).decode().rstrip("=") + '","version":1}'
).encode()

CHALLENGE = (
    "OpenRed peer challenge v1\n"
    "purpose: file_sharing.offer\n"
    f"challenger: {'a' * 32}\n"
    f"responder: {'b' * 32}\n"
    "session: AAAAAAAAAAAAAAAAAAAAAA\n"
    f"nonce: {'B' * 42}A"
).encode()

RECOGNIZERS = {
    "entry": is_entry_hash,
    "checkpoint": is_checkpoint_body,
    "grant": is_canonical_grant,
    "http": is_http_signature_base,
    "record": is_node_record,
    "challenge": is_peer_challenge,
}
SAMPLES = {"entry": HASH, "checkpoint": CHECKPOINT, "grant": GRANT, "http": BASE,
           "record": RECORD, "challenge": CHALLENGE}


@pytest.mark.parametrize("kind", sorted(SAMPLES))
def test_each_structure_is_recognized_by_exactly_one_recognizer(kind: str) -> None:
    accepted = {name for name, ok in RECOGNIZERS.items() if ok(SAMPLES[kind])}
    assert accepted == {kind}


@given(st.binary(max_size=300))
def test_random_bytes_are_never_two_structures(data: bytes) -> None:
    assert sum(1 for ok in RECOGNIZERS.values() if ok(data)) <= 1


@pytest.mark.parametrize("recognizer", list(RECOGNIZERS.values()))
def test_non_bytes_are_refused(recognizer: object) -> None:
    for value in (None, "text", 32, bytearray(32), memoryview(HASH)):
        assert recognizer(value) is False  # type: ignore[operator]


# --- entry hash ----------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 31, 33, 64])
def test_entry_hash_wrong_length(length: int) -> None:
    assert not is_entry_hash(b"\x00" * length)


# --- checkpoint body -----------------------------------------------------------------------


def test_checkpoint_with_extension_lines_and_origin() -> None:
    body = CHECKPOINT + b"extension line one\n\xe2\x80\x94 utf-8 ok\n"
    assert is_checkpoint_body(body)
    assert is_checkpoint_body(CHECKPOINT, origin=f"openred/{'a' * 32}")
    assert not is_checkpoint_body(CHECKPOINT, origin=f"openred/{'b' * 32}")
    assert is_checkpoint_body(f"o\n0\n{ROOT}\n".encode())


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(CHECKPOINT[:-1], id="no-final-newline"),
        pytest.param(CHECKPOINT + b"\n", id="empty-line-at-end"),
        pytest.param(CHECKPOINT.replace(b"\n42\n", b"\n\n42\n"), id="empty-line"),
        pytest.param(CHECKPOINT.replace(b"\n42\n", b"\n042\n"), id="leading-zero"),
        pytest.param(CHECKPOINT.replace(b"\n42\n", b"\n-1\n"), id="negative-size"),
        pytest.param(CHECKPOINT.replace(b"\n42\n", b"\n4 2\n"), id="space-in-size"),
        pytest.param(CHECKPOINT.replace(b"\n42\n", b"\n\xef\xbc\x94\n"), id="unicode-digit"),
        pytest.param(
            CHECKPOINT.replace(ROOT.encode(), ROOT[:-2].encode() + b"=="), id="short-root"
        ),
        pytest.param(CHECKPOINT.replace(ROOT.encode(), ROOT[:-1].encode()), id="unpadded-root"),
        pytest.param(
            CHECKPOINT.replace(ROOT.encode(), base64.urlsafe_b64encode(b"\xff" * 32)),
            id="urlsafe-root",
        ),
        pytest.param(CHECKPOINT.replace(ROOT.encode(), b"A" * 42 + b"B="), id="noncanonical-bits"),
        pytest.param(CHECKPOINT.replace(b"openred/", b"open red/"), id="space-in-origin"),
        pytest.param(CHECKPOINT.replace(b"openred/", b"openred+"), id="plus-in-origin"),
        pytest.param(CHECKPOINT + b"ext\r\n", id="carriage-return"),
        pytest.param(CHECKPOINT + b"ext\tline\n", id="tab"),
        pytest.param(CHECKPOINT + b"\xff\n", id="not-utf8"),
        pytest.param(b"origin\n42\n", id="two-lines"),
        pytest.param(b"", id="empty"),
        pytest.param(CHECKPOINT + b"x" * 9000 + b"\n", id="oversized"),
    ],
)
def test_checkpoint_rejects(body: bytes) -> None:
    assert not is_checkpoint_body(body)


# --- canonical grant -----------------------------------------------------------------------


def test_canonical_grant_recognized_and_pretty_one_refused() -> None:
    assert is_canonical_grant(GRANT)
    assert not is_canonical_grant(GRANT.replace(b",", b", "))
    assert not is_canonical_grant(b"{}")
    assert not is_canonical_grant(b"not json")


# --- HTTP signature base -------------------------------------------------------------------


def test_signature_base_variants_accepted() -> None:
    assert is_http_signature_base(BASE.replace(b"POST", b"DELETE"))
    assert is_http_signature_base(BASE.replace(b"https://", b"http://"))
    directory = BASE.replace(f'keyid="{"b" * 32}"'.encode(), b'keyid="directory"')
    assert is_http_signature_base(directory)
    assert is_http_signature_base(BASE.replace(b"created=1700000000", b"created=0"))


@pytest.mark.parametrize(
    "base",
    [
        pytest.param(BASE + b"\n", id="trailing-newline"),
        pytest.param(BASE.replace(b"\n", b"\r\n"), id="crlf"),
        pytest.param(BASE.replace(b"POST", b"post"), id="lowercase-method"),
        pytest.param(BASE.replace(b"https://", b"ftp://"), id="other-scheme"),
        pytest.param(BASE.replace(b"/register", b"/reg ister"), id="space-in-uri"),
        pytest.param(BASE.replace(b"sha-256=", b"sha-512="), id="other-digest"),
        pytest.param(BASE.replace(b'alg="ed25519"', b'alg="hmac-sha256"'), id="other-alg"),
        pytest.param(BASE.replace(b';alg="ed25519"', b""), id="no-alg"),
        pytest.param(BASE.replace(b';nonce="AAAAAAAAAAAAAAAAAAAAAA"', b""), id="no-nonce"),
        pytest.param(
            BASE.replace(b'nonce="AAAAAAAAAAAAAAAAAAAAAA"', b'nonce="short"'), id="short-nonce"
        ),
        pytest.param(BASE.replace(b"created=1700000000", b"created=01700000000"), id="zero-pad"),
        pytest.param(BASE.replace(b"created=1700000000", b"created=-1"), id="negative"),
        pytest.param(BASE.replace(b'keyid="' + b"b" * 32, b'keyid="' + b"B" * 32), id="bad-keyid"),
        pytest.param(
            BASE.replace(b' "content-digest")', b")"),
            id="params-miss-component",
        ),
        pytest.param(
            b"\n".join(BASE.split(b"\n")[i] for i in (1, 0, 2, 3)), id="components-reordered"
        ),
        pytest.param(BASE.split(b"\n", 1)[1], id="no-method-line"),
        pytest.param(b'"date": x\n' + BASE, id="extra-component"),
        pytest.param(BASE + b';tag="x"', id="extra-param"),
        pytest.param(BASE.replace(b"POST", b"P\xc3\x96ST"), id="non-ascii"),
        pytest.param(HASH, id="entry-hash"),
        pytest.param(b"", id="empty"),
        pytest.param(BASE.replace(b"register", b"r" * 9000), id="oversized"),
    ],
)
def test_signature_base_rejects(base: bytes) -> None:
    assert not is_http_signature_base(base)


def test_node_record_recognized_and_variants_refused() -> None:
    assert is_node_record(RECORD)
    assert not is_node_record(RECORD.replace(b",", b", "))  # not canonical
    assert not is_node_record(RECORD.replace(b'"version":1', b'"version":0'))
    assert not is_node_record(RECORD.replace(b'"version":1', b'"version":1.0'))
    assert not is_node_record(RECORD.replace(b'"version":1', b'"version":true'))
    assert not is_node_record(RECORD.replace(b'"issued_at":1700000000', b'"issued_at":-1'))
    assert not is_node_record(RECORD.replace(b"https://", b"ftp://"))
    assert not is_node_record(RECORD.replace(b'.example:8443"', b'.example:8443/a b"'))
    assert not is_node_record(RECORD.replace(b'"file_sharing","messaging"',
                                             b'"messaging","file_sharing"'))  # unsorted
    assert not is_node_record(RECORD.replace(b'"file_sharing","messaging"',
                                             b'"messaging","messaging"'))
    # The node id must be the id of sign_key: a record for someone else's key is not signed.
    other = base64.b32encode(hashlib.sha256(b"x").digest()[:20]).decode().lower()
    assert not is_node_record(RECORD.replace(NODE_ID.encode(), other.encode()))
    assert not is_node_record(RECORD[:-1] + b',"extra":1}')
    assert not is_node_record(b"{}")
    assert not is_node_record(b"[1]")


# --- peer challenge ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "data",
    [
        pytest.param(CHALLENGE + b"\n", id="trailing-newline"),
        pytest.param(CHALLENGE.replace(b"v1", b"v2"), id="other-version"),
        pytest.param(CHALLENGE.replace(b"file_sharing.offer", b"File"), id="uppercase-purpose"),
        pytest.param(CHALLENGE.replace(b"file_sharing.offer", b""), id="empty-purpose"),
        pytest.param(CHALLENGE.replace(b"file_sharing.offer", b"x" * 65), id="long-purpose"),
        pytest.param(CHALLENGE.replace(b"a" * 32, b"a" * 31), id="short-challenger"),
        pytest.param(CHALLENGE.replace(b"A" * 22, b"A" * 21 + b"B"), id="noncanonical-session"),
        pytest.param(CHALLENGE.replace(b"B" * 42 + b"A", b"B" * 43), id="noncanonical-nonce"),
        pytest.param(CHALLENGE.replace(b"\nsession", b"\r\nsession"), id="carriage-return"),
        pytest.param(CHALLENGE.replace(b"purpose: ", b"purpose:"), id="no-space"),
        pytest.param(b"\n".join(reversed(CHALLENGE.split(b"\n"))), id="reordered"),
    ],
)
def test_peer_challenge_rejects(data: bytes) -> None:
    assert is_peer_challenge(CHALLENGE)
    assert not is_peer_challenge(data)
