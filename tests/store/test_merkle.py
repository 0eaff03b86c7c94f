"""RFC 6962 Merkle tree: known answers, an independent recursive oracle, and tampering."""

from __future__ import annotations

import hashlib
import os
import random
from collections.abc import Callable

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openred.errors import ProofError
from openred.store.merkle import (
    EMPTY_ROOT,
    BlockIndex,
    CompactRange,
    consistency_proof,
    consistency_proof_from_leaf_hashes,
    inclusion_proof,
    inclusion_proof_from_leaf_hashes,
    leaf_hash,
    leaf_hashes,
    node_hash,
    root_from_entry_hashes,
    root_from_leaf_hashes,
    verify_consistency,
    verify_inclusion,
    verify_inclusion_leaf_hash,
)

LONG = os.environ.get("OPENRED_TEST_LONG") == "1"

# --- RFC 6962 reference data ------------------------------------------------------------------
# The leaves, roots and proofs used by the Certificate Transparency / Trillian test suites, as in
# transparency-dev/merkle proof/verify_test.go (leaves are raw leaf data, not entry hashes).
REF_LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657",
              "606162636465666768696a6b6c6d6e6f"]
]
REF_ROOTS = [  # REF_ROOTS[n] is the root of the first n leaves
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
# (1-based leaf, tree size, audit path)
REF_INCLUSION = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (3, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (2, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
]
# (old size, new size, consistency proof)
REF_CONSISTENCY = [
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]
REF_LEAF_HASHES = [leaf_hash(d) for d in REF_LEAVES]
SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


# --- an independent oracle: the recursive definitions of RFC 6962 §2.1, straight from the text --

def _h(data: bytes) -> bytes:
    return hashlib.sha256(data).digest()


def _k(n: int) -> int:
    k = 1
    while k * 2 < n:
        k *= 2
    return k


def oracle_mth(entries: list[bytes]) -> bytes:
    n = len(entries)
    if n == 0:
        return _h(b"")
    if n == 1:
        return _h(b"\x00" + entries[0])
    k = _k(n)
    return _h(b"\x01" + oracle_mth(entries[:k]) + oracle_mth(entries[k:]))


def oracle_path(m: int, entries: list[bytes]) -> list[bytes]:
    n = len(entries)
    if n == 1:
        return []
    k = _k(n)
    if m < k:
        return [*oracle_path(m, entries[:k]), oracle_mth(entries[k:])]
    return [*oracle_path(m - k, entries[k:]), oracle_mth(entries[:k])]


def oracle_subproof(m: int, entries: list[bytes], whole: bool) -> list[bytes]:
    n = len(entries)
    if m == n:
        return [] if whole else [oracle_mth(entries)]
    k = _k(n)
    if m <= k:
        return [*oracle_subproof(m, entries[:k], whole), oracle_mth(entries[k:])]
    return [*oracle_subproof(m - k, entries[k:], False), oracle_mth(entries[:k])]


def entry_hashes(n: int, salt: bytes = b"") -> list[bytes]:
    return [_h(salt + i.to_bytes(4, "big")) for i in range(n)]


def flip(value: bytes, bit: int) -> bytes:
    out = bytearray(value)
    out[bit // 8] ^= 1 << (bit % 8)
    return bytes(out)


# --- known answers ------------------------------------------------------------------------------

def test_empty_tree_root_is_sha256_of_nothing() -> None:
    assert EMPTY_ROOT.hex() == REF_ROOTS[0]
    assert root_from_entry_hashes([]) == EMPTY_ROOT
    assert CompactRange().root() == EMPTY_ROOT


def test_hash_prefixes_separate_leaves_from_nodes() -> None:
    a, b = _h(b"a"), _h(b"b")
    assert leaf_hash(a) == _h(b"\x00" + a)
    assert node_hash(a, b) == _h(b"\x01" + a + b)
    assert leaf_hash(a + b) != node_hash(a, b)


@pytest.mark.parametrize("n", range(len(REF_ROOTS)))
def test_reference_roots_for_every_size(n: int) -> None:
    assert root_from_leaf_hashes(REF_LEAF_HASHES[:n]).hex() == REF_ROOTS[n]


@pytest.mark.parametrize(("leaf", "size", "path"), REF_INCLUSION)
def test_reference_inclusion_proofs(leaf: int, size: int, path: list[str]) -> None:
    proof = inclusion_proof_from_leaf_hashes(leaf - 1, REF_LEAF_HASHES[:size])
    assert [p.hex() for p in proof] == path
    root = bytes.fromhex(REF_ROOTS[size])
    verify_inclusion_leaf_hash(leaf - 1, size, REF_LEAF_HASHES[leaf - 1], proof, root)


@pytest.mark.parametrize(("old", "new", "path"), REF_CONSISTENCY)
def test_reference_consistency_proofs(old: int, new: int, path: list[str]) -> None:
    proof = consistency_proof_from_leaf_hashes(old, REF_LEAF_HASHES[:new])
    assert [p.hex() for p in proof] == path
    verify_consistency(old, new, bytes.fromhex(REF_ROOTS[old]), bytes.fromhex(REF_ROOTS[new]),
                       proof)


@pytest.mark.parametrize(("leaf", "size", "path"), REF_INCLUSION)
def test_reference_inclusion_corruptions_fail(leaf: int, size: int, path: list[str]) -> None:
    # The corruption probes of transparency-dev/merkle's verify_test.go.
    index, root, lh = leaf - 1, bytes.fromhex(REF_ROOTS[size]), REF_LEAF_HASHES[leaf - 1]
    proof = [bytes.fromhex(p) for p in path]
    probes = [
        (index - 1, size, lh, proof, root),
        (index + 1, size, lh, proof, root),
        (index ^ 2, size, lh, proof, root),
        (index, size * 2, lh, proof, root),
        (index, size // 2, lh, proof, root),
        (index, size, b"WrongLeaf", proof, root),
        (index, size, lh, proof, EMPTY_ROOT),
        (index, size, lh, proof, SOME_HASH),
        (index, size, lh, [*proof, b""], root),
        (index, size, lh, [*proof, root], root),
        (index, size, lh, [b"", *proof], root),
        (index, size, lh, [root, *proof], root),
        (index, size, lh, proof[:-1], root),
        (index, size, lh, [proof[0], SOME_HASH, *proof[1:]], root),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i], 3)
        probes.append((index, size, lh, bad, root))
    for probe in probes:
        with pytest.raises(ProofError):
            verify_inclusion_leaf_hash(*probe)


@pytest.mark.parametrize(("old", "new", "path"), REF_CONSISTENCY)
def test_reference_consistency_corruptions_fail(old: int, new: int, path: list[str]) -> None:
    r1, r2 = bytes.fromhex(REF_ROOTS[old]), bytes.fromhex(REF_ROOTS[new])
    proof = [bytes.fromhex(p) for p in path]
    probes = [
        (old - 1, new, r1, r2, proof),
        (old + 1, new, r1, r2, proof),
        (old ^ 2, new, r1, r2, proof),
        (old, new * 2, r1, r2, proof),
        (old, new // 2, r1, r2, proof),
        (old, new, b"WrongRoot", r2, proof),
        (old, new, r1, b"WrongRoot", proof),
        (old, new, r2, r1, proof),
        (old, new, r1, r2, []),
        (old, new, r1, r2, [*proof, b""]),
        (old, new, r1, r2, [*proof, r1]),
        (old, new, r1, r2, [*proof, r2]),
        (old, new, r1, r2, [b"", *proof]),
        (old, new, r1, r2, [r1, *proof]),
        (old, new, r1, r2, [r2, *proof]),
        (old, new, r1, r2, [proof[0], *proof]),
        (old, new, r1, r2, proof[:-1]),
    ]
    for i in range(len(proof)):
        bad = list(proof)
        bad[i] = flip(bad[i], 4)
        probes.append((old, new, r1, r2, bad))
    for o, n, a, b, p in probes:
        with pytest.raises(ProofError):
            verify_consistency(o, n, a, b, p)


# --- against the oracle -------------------------------------------------------------------------

def test_roots_match_oracle_for_every_size_up_to_300() -> None:
    leaves = entry_hashes(300)
    for n in range(301):
        assert root_from_entry_hashes(leaves[:n]) == oracle_mth(leaves[:n]), n


def test_compact_range_root_matches_for_every_prefix() -> None:
    leaves = entry_hashes(300)
    compact = CompactRange()
    for n, h in enumerate(leaves):
        assert compact.size == n
        assert compact.root() == oracle_mth(leaves[:n])
        compact.append(h)
    assert compact.root() == oracle_mth(leaves)


@pytest.mark.parametrize(("before", "count"),
                         [(0, 4096), (0, 4097), (5, 9000), (4095, 1), (4095, 4098), (1, 12287)])
def test_compact_range_extend_across_block_boundaries(before: int, count: int) -> None:
    leaves = entry_hashes(before + count)
    compact = CompactRange.from_entry_hashes(leaves[:before])
    compact.extend(iter(leaves[before:]))
    assert compact.size == before + count
    assert compact.root() == oracle_mth(leaves)


def test_compact_range_copy_is_independent() -> None:
    leaves = entry_hashes(10)
    original = CompactRange.from_entry_hashes(leaves[:7])
    clone = original.copy()
    clone.extend(leaves[7:])
    assert original.size == 7 and original.root() == oracle_mth(leaves[:7])
    assert clone.size == 10 and clone.root() == oracle_mth(leaves)


def test_builders_refuse_leaves_that_are_not_32_bytes() -> None:
    with pytest.raises(ValueError, match="32 bytes"):
        CompactRange().append(b"short")
    with pytest.raises(ValueError, match="32 bytes"):
        root_from_entry_hashes([_h(b"a"), b"x" * 33])
    with pytest.raises(ValueError, match="32 bytes"):
        inclusion_proof(0, [b"x" * 31])


def test_inclusion_proofs_match_oracle_and_verify_for_all_leaves_up_to_40() -> None:
    leaves = entry_hashes(40)
    for n in range(1, 41):
        root = oracle_mth(leaves[:n])
        for i in range(n):
            proof = inclusion_proof(i, leaves[:n])
            assert proof == oracle_path(i, leaves[:n]), (i, n)
            verify_inclusion(i, n, leaves[i], proof, root)


def test_consistency_proofs_match_oracle_and_verify_for_all_sizes_up_to_40() -> None:
    leaves = entry_hashes(40)
    roots = [oracle_mth(leaves[:n]) for n in range(41)]
    for n in range(41):
        for m in range(n + 1):
            proof = consistency_proof(m, leaves[:n])
            expected = [] if m in (0, n) else oracle_subproof(m, leaves[:n], True)
            assert proof == expected, (m, n)
            verify_consistency(m, n, roots[m], roots[n], proof)


def test_tampered_consistency_proofs_fail_for_all_sizes_up_to_40() -> None:
    leaves = entry_hashes(40)
    other = entry_hashes(40, salt=b"fork")
    roots = [oracle_mth(leaves[:n]) for n in range(41)]
    for n in range(2, 41):
        for m in range(1, n):
            proof = consistency_proof(m, leaves[:n])
            for i in range(len(proof)):
                with pytest.raises(ProofError):
                    verify_consistency(m, n, roots[m], roots[n],
                                       [*proof[:i], flip(proof[i], (7 * i + m) % 256),
                                        *proof[i + 1:]])
            with pytest.raises(ProofError):
                verify_consistency(m, n, flip(roots[m], n % 256), roots[n], proof)
            with pytest.raises(ProofError):
                verify_consistency(m, n, roots[m], flip(roots[n], m % 256), proof)
            # A fork: same size, one old leaf rewritten.
            forked = [*leaves[: m - 1], other[m - 1], *leaves[m:n]]
            with pytest.raises(ProofError):
                verify_consistency(m, n, roots[m], oracle_mth(forked),
                                   consistency_proof(m, forked))


def test_every_single_bit_flip_breaks_an_inclusion_proof() -> None:
    leaves = entry_hashes(13)
    root = root_from_entry_hashes(leaves)
    index = 6
    proof = inclusion_proof(index, leaves)
    verify_inclusion(index, 13, leaves[index], proof, root)
    for bit in range(256):
        with pytest.raises(ProofError):
            verify_inclusion(index, 13, flip(leaves[index], bit), proof, root)
        with pytest.raises(ProofError):
            verify_inclusion(index, 13, leaves[index], proof, flip(root, bit))
        for i in range(len(proof)):
            bad = [*proof[:i], flip(proof[i], bit), *proof[i + 1:]]
            with pytest.raises(ProofError):
                verify_inclusion(index, 13, leaves[index], bad, root)


@st.composite
def tree_and_index(draw: st.DrawFn) -> tuple[int, int]:
    size = draw(st.integers(min_value=1, max_value=1500))
    return size, draw(st.integers(min_value=0, max_value=size - 1))


@settings(max_examples=150, deadline=None)
@given(tree_and_index(), st.integers(min_value=0, max_value=255), st.data())
def test_property_inclusion_proofs_verify_and_bit_flips_fail(
    tree: tuple[int, int], bit: int, data: st.DataObject
) -> None:
    size, index = tree
    leaves = entry_hashes(size, salt=b"prop")
    root = root_from_entry_hashes(leaves)
    proof = inclusion_proof(index, leaves)
    verify_inclusion(index, size, leaves[index], proof, root)
    targets = ["leaf", "root"] + [f"proof{i}" for i in range(len(proof))]
    target = data.draw(st.sampled_from(targets))
    leaf, bad_root, bad_proof = leaves[index], root, list(proof)
    if target == "leaf":
        leaf = flip(leaf, bit)
    elif target == "root":
        bad_root = flip(root, bit)
    else:
        i = int(target.removeprefix("proof"))
        bad_proof[i] = flip(bad_proof[i], bit)
    with pytest.raises(ProofError):
        verify_inclusion(index, size, leaf, bad_proof, bad_root)
    # The same proof does not prove any other leaf position.
    other = data.draw(st.integers(min_value=0, max_value=size - 1).filter(lambda j: j != index)
                      if size > 1 else st.just(None))
    if other is not None:
        with pytest.raises(ProofError):
            verify_inclusion(other, size, leaves[index], proof, root)


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=1, max_value=1500), st.data())
def test_property_consistency_proofs_verify(new: int, data: st.DataObject) -> None:
    old = data.draw(st.integers(min_value=0, max_value=new))
    leaves = entry_hashes(new, salt=b"cons")
    old_root, new_root = root_from_entry_hashes(leaves[:old]), root_from_entry_hashes(leaves)
    proof = consistency_proof(old, leaves)
    verify_consistency(old, new, old_root, new_root, proof)
    if proof:
        i = data.draw(st.integers(min_value=0, max_value=len(proof) - 1))
        bit = data.draw(st.integers(min_value=0, max_value=255))
        with pytest.raises(ProofError):
            verify_consistency(old, new, old_root, new_root,
                               [*proof[:i], flip(proof[i], bit), *proof[i + 1:]])


# --- exact failure messages and edge cases ------------------------------------------------------

def test_inclusion_index_outside_tree_is_refused() -> None:
    leaf = _h(b"x")
    with pytest.raises(ProofError, match=r"^leaf index 3 is not below tree size 3$"):
        verify_inclusion(3, 3, leaf, [], SOME_HASH)
    with pytest.raises(ProofError, match=r"^leaf index 0 is not below tree size 0$"):
        verify_inclusion(0, 0, leaf, [], EMPTY_ROOT)
    with pytest.raises(ProofError, match="negative"):
        verify_inclusion(-1, 3, leaf, [], SOME_HASH)
    with pytest.raises(ValueError, match="outside"):
        inclusion_proof(2, entry_hashes(2))


def test_inclusion_proof_of_wrong_length_names_both_sizes() -> None:
    leaves = entry_hashes(8)
    proof = inclusion_proof(0, leaves)
    root = root_from_entry_hashes(leaves)
    with pytest.raises(ProofError, match=r"^inclusion proof has wrong size: expected 3, got 4$"):
        verify_inclusion(0, 8, leaves[0], [*proof, SOME_HASH], root)
    with pytest.raises(ProofError, match=r"^inclusion proof has wrong size: expected 3, got 2$"):
        verify_inclusion(0, 8, leaves[0], proof[:2], root)


def test_inclusion_wrong_root_message() -> None:
    leaves = entry_hashes(5)
    with pytest.raises(ProofError,
                       match=r"^inclusion proof for leaf 2 in tree of size 5 leads to a different"):
        verify_inclusion(2, 5, leaves[2], inclusion_proof(2, leaves), SOME_HASH)


def test_single_leaf_tree_has_empty_proof_and_root_equal_to_leaf_hash() -> None:
    entry = _h(b"only")
    assert inclusion_proof(0, [entry]) == []
    verify_inclusion(0, 1, entry, [], leaf_hash(entry))
    with pytest.raises(ProofError):
        verify_inclusion(0, 1, entry, [], entry)


def test_hashes_of_the_wrong_size_are_refused_by_verifiers() -> None:
    leaves = entry_hashes(4)
    root = root_from_entry_hashes(leaves)
    proof = inclusion_proof(1, leaves)
    with pytest.raises(ProofError, match=r"^entry hash has wrong size: expected 32 bytes, got 31$"):
        verify_inclusion(1, 4, leaves[1][:31], proof, root)
    with pytest.raises(ProofError, match=r"^root hash has wrong size"):
        verify_inclusion(1, 4, leaves[1], proof, root + b"\x00")
    with pytest.raises(ProofError, match=r"^inclusion proof element 1 has wrong size"):
        verify_inclusion(1, 4, leaves[1], [proof[0], b""], root)
    with pytest.raises(ProofError, match=r"^consistency proof element 0 has wrong size"):
        verify_consistency(1, 4, leaf_hash(leaves[0]), root, [b"x"] * 2)
    with pytest.raises(ProofError, match=r"^new root hash has wrong size"):
        verify_consistency(4, 4, root, b"", [])


def test_consistency_edge_cases() -> None:
    leaves = entry_hashes(9)
    root9, root5 = root_from_entry_hashes(leaves), root_from_entry_hashes(leaves[:5])
    # Equal sizes: empty proof and equal roots.
    verify_consistency(9, 9, root9, root9, [])
    with pytest.raises(ProofError, match=r"^trees of equal size 9 have different roots$"):
        verify_consistency(9, 9, root9, SOME_HASH, [])
    with pytest.raises(ProofError, match=r"^consistency proof has wrong size: expected 0, got 1$"):
        verify_consistency(9, 9, root9, root9, [root9])
    # From the empty tree: accepted with an empty proof, only with the empty tree's root.
    verify_consistency(0, 9, EMPTY_ROOT, root9, [])
    verify_consistency(0, 0, EMPTY_ROOT, EMPTY_ROOT, [])
    with pytest.raises(ProofError, match="empty tree's root"):
        verify_consistency(0, 9, SOME_HASH, root9, [])
    with pytest.raises(ProofError, match=r"expected 0, got 1$"):
        verify_consistency(0, 9, EMPTY_ROOT, root9, [EMPTY_ROOT])
    # Time does not run backwards.
    with pytest.raises(ProofError, match=r"^old tree size 9 is larger than new tree size 5$"):
        verify_consistency(9, 5, root9, root5, consistency_proof(5, leaves))
    with pytest.raises(ProofError, match="negative"):
        verify_consistency(-1, 5, root9, root5, [])
    # An empty proof between different sizes is never enough.
    with pytest.raises(ProofError, match=r"^consistency proof has wrong size: expected 5, got 0$"):
        verify_consistency(5, 9, root5, root9, [])
    assert len(consistency_proof(5, leaves)) == 5
    with pytest.raises(ValueError, match="outside"):
        consistency_proof(10, leaves)


def test_consistency_wrong_root_messages() -> None:
    leaves = entry_hashes(11)
    r6, r11 = root_from_entry_hashes(leaves[:6]), root_from_entry_hashes(leaves)
    proof = consistency_proof(6, leaves)
    with pytest.raises(ProofError, match=r"^consistency proof does not lead to the old root"):
        verify_consistency(6, 11, SOME_HASH, r11, proof)
    with pytest.raises(ProofError, match=r"^consistency proof does not lead to the new root"):
        verify_consistency(6, 11, r6, SOME_HASH, proof)


# --- scale --------------------------------------------------------------------------------------

@pytest.mark.slow
def test_a_million_leaves() -> None:
    """1,000,000 leaves with OPENRED_TEST_LONG=1; a bounded 2**17 + 3 otherwise."""
    n = 1_000_000 if LONG else (1 << 17) + 3
    leaves = entry_hashes(n, salt=b"big")
    root = root_from_entry_hashes(leaves)
    appended = CompactRange()
    for h in leaves:  # a different code path: one append at a time
        appended.append(h)
    assert appended.root() == root
    index = n - n // 3
    verify_inclusion(index, n, leaves[index], inclusion_proof(index, leaves), root)
    old = n // 2 + 1
    verify_consistency(old, n, root_from_entry_hashes(leaves[:old]), root,
                       consistency_proof(old, leaves))


@pytest.mark.parametrize("level", [2, 10])
def test_block_index_proofs_equal_the_reference_proofs(level: int) -> None:
    rng = random.Random(level)
    for size in [1, 2, 3, 5, 8, 17, 1023, 1024, 1025, 3000, 4097]:
        hashes = [hashlib.sha256(b"%d" % i).digest() for i in range(size)]
        index, tree = BlockIndex(level), CompactRange()
        i, reads = 0, []
        while i < size:
            j = min(size, i + rng.randint(1, 700))
            leaves = leaf_hashes(hashes[i:j])
            index = index.extended_leaf_hashes(leaves)
            tree.extend_leaf_hashes(leaves)
            i = j

        def read(start: int, end: int, hashes: list[bytes] = hashes,
                 reads: list[int] = reads) -> list[bytes]:
            reads.append(end - start)
            return hashes[start:end]

        assert tree.root() == root_from_entry_hashes(hashes)
        for leaf in {0, size // 2, size - 1, rng.randrange(size)}:
            assert index.inclusion_proof(leaf, read) == inclusion_proof(leaf, hashes)
        for old in {0, 1, size // 2, size - 1, size}:
            assert index.consistency_proof(old, read) == consistency_proof(old, hashes)
        assert max(reads, default=0) <= 1 << level  # never more than one block read


def test_block_index_extended_twice_from_one_index_keeps_both_exact() -> None:
    """Tails are shared append-only lists: an index extended again (a retry after a failed
    extension) starts a list of its own, and the index extended first still reads its own."""
    level = 3
    hashes = [hashlib.sha256(b"%d" % i).digest() for i in range(40)]
    other = [hashlib.sha256(b"other %d" % i).digest() for i in range(40)]

    def read_from(entries: list[bytes]) -> Callable[[int, int], list[bytes]]:
        return lambda start, end: entries[start:end]

    base = BlockIndex(level).extended(hashes[:11])  # one whole block, three in the tail
    first = base.extended(hashes[11:13])  # same block: the shared tail grows
    second = base.extended(other[:4])  # from base again: must not see first's leaves
    assert base.tail == leaf_hashes(hashes[8:11])
    assert first.tail == leaf_hashes(hashes[8:13])
    mixed = hashes[:11] + other[:4]
    assert second.tail == leaf_hashes(mixed[8:15])
    for index, entries in ((first, hashes[:13]), (second, mixed), (base, hashes[:11])):
        size = len(entries)
        for leaf in range(size):
            assert index.inclusion_proof(leaf, read_from(entries)) == inclusion_proof(
                leaf, entries)
        for old in range(size + 1):
            assert index.consistency_proof(old, read_from(entries)) == consistency_proof(
                old, entries)
    # Going on from the newest keeps working, across the block boundary.
    third = first.extended(hashes[13:30])
    assert third.tail == leaf_hashes(hashes[24:30])
    assert third.inclusion_proof(27, read_from(hashes[:30])) == inclusion_proof(27, hashes[:30])
