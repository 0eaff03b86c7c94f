"""File sharing's pure domain: names, the chunk hash tree, offer terms, the capability check."""

from __future__ import annotations

import hashlib
import os

import pytest

from openred.crypto.identity import b64url
from openred.errors import NodeRefused
from openred.modules.file_sharing.domain import (
    EMPTY_ROOT,
    HashTree,
    OfferTerms,
    check_name,
    leaf_hash,
    refuse_unless_usable,
    verify_chunk,
)


@pytest.mark.parametrize("name", ["report.pdf", "Fotos 2026 (1).tar.gz", "héllo — ü.txt",
                                  "日本語.md", "a" * 200])
def test_safe_names_pass(name: str) -> None:
    assert check_name(name) == name


@pytest.mark.parametrize("name", [
    "../etc/passwd", "..", ".", "/etc/passwd", "a/b", "a\\b", "C:evil", "nul\x00byte",
    "bell\x07", "new\nline", "", "a" * 201, "é" * 101, ".hidden", " lead", "trail ",
    "trail.", "zero\u200bwidth", "bidi\u202eexe.txt", "e\u0301", "what?", "pipe|", 42, None,
])
def test_unsafe_names_are_refused(name: object) -> None:
    with pytest.raises(NodeRefused) as caught:
        check_name(name)
    assert (caught.value.status, caught.value.reason) == (422, "invalid-name")


@pytest.mark.parametrize("count", [1, 2, 3, 4, 5, 7, 8, 9, 16, 17, 33])
def test_every_chunk_proves_itself_and_nothing_else_does(count: int) -> None:
    chunks = [os.urandom(40) for _ in range(count)]
    tree = HashTree([leaf_hash(c) for c in chunks])
    for i, chunk in enumerate(chunks):
        proof = tree.proof(i)
        assert verify_chunk(i, count, chunk, proof, tree.root) == leaf_hash(chunk)
        assert verify_chunk(i, count, chunk + b"x", proof, tree.root) is None
        assert verify_chunk(i, count, chunk, [*proof, proof[0]] if proof else [b"x" * 32],
                            tree.root) is None
        if count > 1:
            other = (i + 1) % count
            assert verify_chunk(other, count, chunk, proof, tree.root) is None
            assert verify_chunk(i, count, chunk, proof[:-1], tree.root) is None
    assert verify_chunk(count, count, chunks[0], tree.proof(0), tree.root) is None
    assert verify_chunk(-1, count, chunks[0], tree.proof(0), tree.root) is None


def test_the_tree_is_the_documented_one() -> None:
    a, b, c = b"a", b"b", b"c"

    def h(*parts: bytes) -> bytes:
        return hashlib.sha256(b"".join(parts)).digest()

    la, lb, lc = h(b"\0", a), h(b"\0", b), h(b"\0", c)
    assert HashTree([la, lb, lc]).root == h(b"\1", h(b"\1", la, lb), lc)
    assert HashTree([la]).root == la
    assert HashTree([]).root == EMPTY_ROOT == hashlib.sha256(b"").digest()
    # A leaf can never pass for an inner node: the prefixes differ.
    assert HashTree([la, lb]).root != h(b"\0", la + lb)
    # Levels are stored side by side: 3 + 2 + 1 hashes of 32 bytes.
    assert HashTree([la, lb, lc]).nbytes == 6 * 32
    assert HashTree.from_leaves(la + lb + lc).proof(2) == HashTree([la, lb, lc]).proof(2)
    for bad in (lambda: HashTree([la, b"short"]), lambda: HashTree.from_leaves(la + b"x")):
        with pytest.raises(ValueError):
            bad()


def terms(**change: object) -> dict[str, object]:
    base: dict[str, object] = {
        "offer_id": b64url(os.urandom(16)), "name": "file.bin", "size": 10,
        "digest": b64url(os.urandom(32)), "root": b64url(os.urandom(32)),
        "chunk_size": 192 * 1024, "expires_at": 1_800_000_000,
    }
    return {**base, **change}


def test_offer_terms_round_trip_and_refuse_bad_fields() -> None:
    good = terms()
    assert OfferTerms.from_json(good).to_json() == good
    for bad in (terms(size=-1), terms(size=True), terms(size=1 << 60), terms(chunk_size=0),
                terms(chunk_size=10 << 20), terms(digest="x"), terms(offer_id="../x"),
                terms(expires_at="soon"), {**terms(), "extra": 1}, [], "offer"):
        with pytest.raises(NodeRefused) as caught:
            OfferTerms.from_json(bad)
        assert caught.value.status == 422
    with pytest.raises(NodeRefused) as caught:
        OfferTerms.from_json(terms(name="../../etc/passwd"))
    assert caught.value.reason == "invalid-name"


def test_the_capability_is_for_one_peer_until_it_ends() -> None:
    refuse_unless_usable(exists=True, for_peer=True, state="offered", expires_at=100, now=99)
    cases = [
        (dict(exists=False, for_peer=False, state="", expires_at=0), 404, "unknown-offer"),
        (dict(exists=True, for_peer=False, state="offered", expires_at=100), 404,
         "unknown-offer"),
        (dict(exists=True, for_peer=True, state="offered", expires_at=99), 410, "offer-expired"),
        (dict(exists=True, for_peer=True, state="expired", expires_at=200), 410,
         "offer-expired"),
        (dict(exists=True, for_peer=True, state="revoked", expires_at=200), 410,
         "offer-revoked"),
        (dict(exists=True, for_peer=True, state="declined", expires_at=200), 410,
         "offer-declined"),
        # Another peer learns nothing, not even that the offer was revoked.
        (dict(exists=True, for_peer=False, state="revoked", expires_at=200), 404,
         "unknown-offer"),
    ]
    for kwargs, status, reason in cases:
        with pytest.raises(NodeRefused) as caught:
            refuse_unless_usable(now=99, **kwargs)  # type: ignore[arg-type]
        assert (caught.value.status, caught.value.reason) == (status, reason)


def test_the_largest_chunk_and_deepest_proof_fit_one_envelope() -> None:
    # Chunk answers travel in the binary envelope (openred.node.envelope_binary).
    from openred.modules.file_sharing.domain import MAX_CHUNK_SIZE, MAX_SIZE, MIN_CHUNK_SIZE
    from openred.node.envelope_binary import MAX_ANSWER_CIPHERTEXT

    depth = (MAX_SIZE // MIN_CHUNK_SIZE - 1).bit_length()
    assert 2 + 32 * depth + MAX_CHUNK_SIZE + 16 <= MAX_ANSWER_CIPHERTEXT
