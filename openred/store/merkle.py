"""RFC 6962 Merkle tree over the log's entry hashes: roots, compact ranges, proofs (DESIGN §8).

Hashing is RFC 6962 §2.1: a leaf is the 32-byte ``entry_hash`` of one log entry (leaf ``i`` is
the entry at ``seq = i + 1``), its leaf hash is SHA-256(0x00 ‖ entry_hash), an interior node is
SHA-256(0x01 ‖ left ‖ right), and the root of the empty tree is SHA-256("").

Proof *generation* follows the recursive definitions of RFC 9162 §2.1.3.1 (PATH) and §2.1.4.1
(SUBPROOF), unrolled into loops: each step hashes one disjoint sub-range once, so a proof costs
O(n) hashing in total and no recursion. Proof *verification* is the iterative algorithm of
RFC 9162 §2.1.3.2 and §2.1.4.2, preceded by an exact proof-length check so that a wrong proof
fails with a precise message ("inclusion proof has wrong size: expected 3, got 4").

Decisions written down here:

* Consistency with the empty tree (``old_size == 0``) is accepted with an empty proof: every
  tree extends the empty tree (RFC 9162 §2.1.4 defines proofs only for ``0 < m < n``;
  transparency-dev/merkle makes the same choice). The old root must then be the empty tree's
  root SHA-256("") (stricter than transparency-dev, which ignores it), and a non-empty proof is
  refused.
* ``old_size == new_size`` needs an empty proof and equal roots.
* Every hash handed to a verifier must be exactly 32 bytes; anything else is a ProofError.

Pure code: no I/O, no clock, no randomness.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Sequence
from itertools import islice

from openred.errors import ProofError

HASH_SIZE = 32
EMPTY_ROOT = hashlib.sha256(b"").digest()

_sha256 = hashlib.sha256
_LEAF_PREFIX = b"\x00"
_NODE_PREFIX = b"\x01"
# CompactRange.extend hashes aligned blocks of this many leaves level by level (fast list
# comprehensions) and folds only the block roots into the frontier.
_BLOCK_LEVEL = 12
_BLOCK = 1 << _BLOCK_LEVEL


def leaf_hash(entry_hash: bytes) -> bytes:
    """RFC 6962 §2.1 leaf hash: SHA-256(0x00 ‖ leaf data).

    Defined for any leaf data (so the RFC's published test vectors can be checked); the tree
    builders below additionally require OpenRed leaves to be 32-byte entry hashes.
    """
    return _sha256(_LEAF_PREFIX + entry_hash).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """RFC 6962 §2.1 interior node hash: SHA-256(0x01 ‖ left ‖ right)."""
    return _sha256(_NODE_PREFIX + left + right).digest()


def _check_entry_hashes(entry_hashes: Sequence[bytes]) -> None:
    if entry_hashes and set(map(len, entry_hashes)) != {HASH_SIZE}:
        raise ValueError("every entry hash must be 32 bytes")


def _leaf_hashes(entry_hashes: Sequence[bytes]) -> list[bytes]:
    _check_entry_hashes(entry_hashes)
    return [_sha256(_LEAF_PREFIX + h).digest() for h in entry_hashes]


def leaf_hashes(entry_hashes: Sequence[bytes]) -> list[bytes]:
    """The RFC 6962 leaf hash of each 32-byte entry hash (computed once, used twice)."""
    return _leaf_hashes(entry_hashes)


def _reduce(level: list[bytes]) -> bytes:
    """MTH of a non-empty list of leaf hashes, hashing level by level.

    Pairing neighbours and carrying a lone last node up unchanged builds exactly the tree of
    RFC 6962 §2.1 (left subtree = the largest power of two smaller than n).
    """
    while len(level) > 1:
        # Lone last node (odd length) is dropped by zip and carried up below.
        pairs = iter(level)
        nxt = [
            _sha256(_NODE_PREFIX + left + right).digest()
            for left, right in zip(pairs, pairs, strict=False)
        ]
        if len(level) & 1:
            nxt.append(level[-1])
        level = nxt
    return level[0]


def root_from_leaf_hashes(leaf_hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 §2.1 Merkle Tree Hash of already-hashed leaves (any leaf data)."""
    if not leaf_hashes:
        return EMPTY_ROOT
    return _reduce(list(leaf_hashes))


def root_from_entry_hashes(entry_hashes: Sequence[bytes]) -> bytes:
    """RFC 6962 §2.1 Merkle Tree Hash of the log whose leaves are these entry hashes."""
    return CompactRange.from_entry_hashes(entry_hashes).root()


def _largest_power_of_two_below(n: int) -> int:
    """The k of RFC 6962 §2.1: the largest power of two strictly smaller than n (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class CompactRange:
    """The frontier of a growing tree: the roots of its perfect subtrees, left to right.

    A tree of ``size`` leaves has one perfect subtree per set bit of ``size``; appending a leaf
    merges equal-sized neighbours (O(1) amortized hashing) and ``root()`` folds the frontier
    right to left (O(log n)). This is the "compact range" of transparency-dev/merkle.
    """

    __slots__ = ("_nodes", "_size")

    def __init__(self) -> None:
        self._nodes: list[bytes] = []
        self._size = 0

    @classmethod
    def from_entry_hashes(cls, entry_hashes: Iterable[bytes]) -> CompactRange:
        """A compact range holding these entry hashes as leaves 0, 1, …"""
        compact = cls()
        compact.extend(entry_hashes)
        return compact

    @property
    def size(self) -> int:
        """How many leaves have been appended."""
        return self._size

    def _push(self, subtree_root: bytes, level: int) -> None:
        """Append the root of a perfect subtree of 2**level leaves (size must be aligned)."""
        nodes = self._nodes
        nodes.append(subtree_root)
        carry = self._size >> level
        while carry & 1:
            right = nodes.pop()
            nodes[-1] = _sha256(_NODE_PREFIX + nodes[-1] + right).digest()
            carry >>= 1
        self._size += 1 << level

    def append(self, entry_hash: bytes) -> None:
        """Append one leaf (a 32-byte entry hash)."""
        if len(entry_hash) != HASH_SIZE:
            raise ValueError("every entry hash must be 32 bytes")
        self._push(_sha256(_LEAF_PREFIX + entry_hash).digest(), 0)

    def extend(self, entry_hashes: Iterable[bytes]) -> None:
        """Append many leaves; hashes whole aligned blocks level by level for speed."""
        items = iter(entry_hashes)
        # Single appends until the size is block-aligned, so block roots are perfect subtrees.
        while self._size % _BLOCK:
            head = next(items, None)
            if head is None:
                return
            self.append(head)
        while True:
            block = list(islice(items, _BLOCK))
            if not block:
                return
            self._extend_aligned(_leaf_hashes(block))

    def extend_leaf_hashes(self, leaves: Sequence[bytes]) -> None:
        """Append leaves whose leaf hashes (:func:`leaf_hashes`) the caller computed already."""
        start = 0
        while self._size % _BLOCK and start < len(leaves):
            self._push(leaves[start], 0)
            start += 1
        for i in range(start, len(leaves), _BLOCK):
            self._extend_aligned(leaves[i:i + _BLOCK])

    def _extend_aligned(self, leaves: Sequence[bytes]) -> None:
        """Append up to one block of leaf hashes at a block-aligned size."""
        if len(leaves) == _BLOCK:
            self._push(_reduce(list(leaves)), _BLOCK_LEVEL)
            return
        # A short last block: push its perfect pieces, largest first (each stays aligned).
        start = 0
        for level in range(_BLOCK_LEVEL - 1, -1, -1):
            if len(leaves) >> level & 1:
                self._push(_reduce(list(leaves[start:start + (1 << level)])), level)
                start += 1 << level

    def root(self) -> bytes:
        """RFC 6962 §2.1 Merkle Tree Hash of the leaves appended so far."""
        if not self._nodes:
            return EMPTY_ROOT
        nodes = self._nodes
        root = nodes[-1]
        for left in reversed(nodes[:-1]):
            root = _sha256(_NODE_PREFIX + left + root).digest()
        return root

    def copy(self) -> CompactRange:
        """An independent copy (appending to one does not change the other)."""
        other = CompactRange()
        other._nodes = list(self._nodes)
        other._size = self._size
        return other

    def __repr__(self) -> str:
        return f"CompactRange(size={self._size})"


# --- proof generation: RFC 9162 §2.1.3.1 and §2.1.4.1, unrolled ---------------------------------


def _range_root(leaf_hashes: Sequence[bytes], start: int, end: int) -> bytes:
    return _reduce(list(leaf_hashes[start:end]))


RangeRoot = Callable[[int, int], bytes]
"""MTH(D[start:end]) of a tree's leaves, given start and end."""


def inclusion_path(index: int, size: int, range_root: RangeRoot) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[size]), bottom sibling first, from subtree roots.

    ``range_root`` gives the root of any range the path needs; every range starts at a multiple
    of a power of two no smaller than the range, so a caller can answer from cached subtrees.
    """
    if not 0 <= index < size:
        raise ValueError(f"leaf index {index} is outside a tree of size {size}")
    top_down: list[bytes] = []
    lo, n, m = 0, size, index
    while n > 1:
        k = _largest_power_of_two_below(n)
        if m < k:  # PATH(m, D[0:k]) : MTH(D[k:n])
            top_down.append(range_root(lo + k, lo + n))
            n = k
        else:  # PATH(m - k, D[k:n]) : MTH(D[0:k])
            top_down.append(range_root(lo, lo + k))
            lo, n, m = lo + k, n - k, m - k
    top_down.reverse()
    return top_down


def consistency_path(old_size: int, size: int, range_root: RangeRoot) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(old_size, D[size]) from subtree roots; [] when m is 0 or n."""
    if not 0 <= old_size <= size:
        raise ValueError(f"old size {old_size} is outside 0..{size}")
    if old_size in (0, size):
        return []
    # SUBPROOF(m, D[n], b), outermost level first; the result lists the innermost first.
    top_down: list[bytes] = []
    lo, n, m, whole_old_tree = 0, size, old_size, True
    while m != n:
        k = _largest_power_of_two_below(n)
        if m <= k:  # SUBPROOF(m, D[0:k], b) : MTH(D[k:n])
            top_down.append(range_root(lo + k, lo + n))
            n = k
        else:  # SUBPROOF(m - k, D[k:n], false) : MTH(D[0:k])
            top_down.append(range_root(lo, lo + k))
            lo, n, m, whole_old_tree = lo + k, n - k, m - k, False
    if not whole_old_tree:  # SUBPROOF(m, D[m], false) = MTH(D[m])
        top_down.append(range_root(lo, lo + n))
    top_down.reverse()
    return top_down


def inclusion_proof_from_leaf_hashes(index: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.3.1 PATH(index, D[n]) over already-hashed leaves, bottom sibling first."""
    return inclusion_path(index, len(leaf_hashes),
                          lambda start, end: _range_root(leaf_hashes, start, end))


def inclusion_proof(index: int, entry_hashes: Sequence[bytes]) -> list[bytes]:
    """The audit path proving leaf ``index`` (0-based, seq - 1) is in the tree of all leaves."""
    return inclusion_proof_from_leaf_hashes(index, _leaf_hashes(entry_hashes))


def consistency_proof_from_leaf_hashes(old_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """RFC 9162 §2.1.4.1 PROOF(m, D[n]) over already-hashed leaves; [] when m is 0 or n."""
    return consistency_path(old_size, len(leaf_hashes),
                            lambda start, end: _range_root(leaf_hashes, start, end))


def consistency_proof(old_size: int, entry_hashes: Sequence[bytes]) -> list[bytes]:
    """Proof that the tree of the first ``old_size`` leaves is a prefix of the tree of all."""
    return consistency_proof_from_leaf_hashes(old_size, _leaf_hashes(entry_hashes))


# --- proofs over a large log: cached block roots -----------------------------------------------


class BlockIndex:
    """Roots of the log's complete aligned blocks of leaves, and the leaf hashes of the last one.

    With it, any subtree root a proof needs costs hashing block roots (one per 4096 leaves) plus
    at most one block of leaves, read through ``read_entry_hashes(start, end)`` (entry hashes
    of leaves ``start``..``end - 1``): a proof on a log of a million entries hashes a few
    thousand nodes instead of two million. An index is a value: :meth:`extended` returns a new
    one and never changes what a reader of this one sees (the roots list is only appended to).
    """

    __slots__ = ("_block", "_level", "_roots", "_tail", "size")

    def __init__(self, level: int = _BLOCK_LEVEL) -> None:
        self._level = level
        self._block = 1 << level
        self._roots: list[bytes] = []
        self.size = 0
        # Leaf hashes of the incomplete last block: the first ``size % block`` of this list.
        # Like the roots it is shared with the indexes extended from this one and only ever
        # appended to, so extending costs the new leaves only (not a copy of up to a block),
        # and an older index still reads exactly its own prefix.
        self._tail: list[bytes] = []

    @property
    def tail(self) -> list[bytes]:
        """The leaf hashes of the incomplete last block (a copy)."""
        return self._tail[:self.size % self._block]

    def extended(self, entry_hashes: Sequence[bytes]) -> BlockIndex:
        """A new index with ``entry_hashes`` appended as the next leaves."""
        return self.extended_leaf_hashes(_leaf_hashes(entry_hashes))

    def extended_leaf_hashes(self, leaves: Sequence[bytes]) -> BlockIndex:
        """:meth:`extended`, given the leaf hashes (:func:`leaf_hashes`) of the entries."""
        other = BlockIndex.__new__(BlockIndex)
        other._level, other._block, other._roots = self._level, self._block, self._roots
        block = self._block
        roots = self._roots
        complete, partial = divmod(self.size, block)
        if len(roots) != complete:
            raise ValueError("this block index is stale: a newer one was extended from it")
        tail = self._tail
        if len(tail) != partial:
            # A newer index was extended from this one within the same block (its leaves
            # follow ours in the shared list): start a list of our own from our prefix.
            tail = tail[:partial]
        start = 0
        while start < len(leaves):
            take = min(block - len(tail), len(leaves) - start)
            tail.extend(leaves[start:start + take])
            start += take
            if len(tail) == block:
                roots.append(_reduce(tail))
                tail = []
        other.size = self.size + len(leaves)
        other._tail = tail
        return other

    def range_root(
        self, start: int, end: int, read_entry_hashes: Callable[[int, int], Sequence[bytes]]
    ) -> bytes:
        """MTH(D[start:end]) for a range a proof asks for (``start`` aligned as in RFC 9162)."""
        if not 0 <= start < end <= self.size:
            raise ValueError(f"range {start}..{end} is outside a tree of size {self.size}")
        block = self._block
        if start % block == 0 and (end - start) >= block:
            # MTH splits at the largest power of two below the size, a multiple of the block
            # size here: whole blocks on the left, the rest (aligned) on the right.
            whole = (end - start) // block
            if whole * block == end - start:
                return _reduce(self._roots[start // block:start // block + whole])
            k = _largest_power_of_two_below(end - start)
            left = _reduce(self._roots[start // block:(start + k) // block])
            return node_hash(left, self.range_root(start + k, end, read_entry_hashes))
        first_block = start // block
        if first_block != (end - 1) // block:
            raise ValueError(f"range {start}..{end} is not aligned as a proof's ranges are")
        tail_start = self.size - self.size % block
        if start >= tail_start:
            return _reduce(self._tail[start - tail_start:end - tail_start])
        hashes = read_entry_hashes(start, end)
        if len(hashes) != end - start:
            raise ValueError(f"read {len(hashes)} entry hashes for leaves {start}..{end}")
        return _reduce(_leaf_hashes(hashes))

    def inclusion_proof(
        self, index: int, read_entry_hashes: Callable[[int, int], Sequence[bytes]]
    ) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of :attr:`size` leaves."""
        return inclusion_path(index, self.size,
                              lambda s, e: self.range_root(s, e, read_entry_hashes))

    def consistency_proof(
        self, old_size: int, read_entry_hashes: Callable[[int, int], Sequence[bytes]]
    ) -> list[bytes]:
        """The proof that the tree of ``old_size`` leaves is a prefix of this one."""
        return consistency_path(old_size, self.size,
                                lambda s, e: self.range_root(s, e, read_entry_hashes))


# --- proof verification: RFC 9162 §2.1.3.2 and §2.1.4.2 ----------------------------------------


def _check_hash(what: str, value: bytes) -> None:
    if not isinstance(value, bytes) or len(value) != HASH_SIZE:
        size = len(value) if isinstance(value, bytes | bytearray) else type(value).__name__
        raise ProofError(f"{what} has wrong size: expected {HASH_SIZE} bytes, got {size}")


def _check_proof_hashes(kind: str, proof: Sequence[bytes]) -> None:
    for i, element in enumerate(proof):
        _check_hash(f"{kind} proof element {i}", element)


def _inclusion_path_length(index: int, size: int) -> int:
    """Nodes in the audit path of leaf ``index`` in a tree of ``size`` leaves."""
    inner = (index ^ (size - 1)).bit_length()  # levels where the path has a full sibling
    border = (index >> inner).bit_count()  # levels along the right border of a ragged tree
    return inner + border


def root_from_inclusion_proof(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root an audit path leads to from leaf hash ``leaf`` (RFC 9162 §2.1.3.2 steps 1-4)."""
    # 1. The index must be inside the tree.
    if index < 0 or size < 0:
        raise ProofError(f"negative index or size: index {index}, size {size}")
    if index >= size:
        raise ProofError(f"leaf index {index} is not below tree size {size}")
    _check_hash("leaf hash", leaf)
    _check_proof_hashes("inclusion", proof)
    expected = _inclusion_path_length(index, size)
    if len(proof) != expected:
        raise ProofError(f"inclusion proof has wrong size: expected {expected}, got {len(proof)}")
    # 2.-3. fn = leaf_index, sn = tree_size - 1, r = hash.
    fn, sn, r = index, size - 1, leaf
    # 4. Walk the path.
    for p in proof:
        if sn == 0:
            raise ProofError("inclusion proof is longer than the path to the root")
        if fn & 1 or fn == sn:
            r = _sha256(_NODE_PREFIX + p + r).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            r = _sha256(_NODE_PREFIX + r + p).digest()
        fn >>= 1
        sn >>= 1
    # 5. (first half) The walk must end at the root.
    if sn != 0:
        raise ProofError("inclusion proof is shorter than the path to the root")
    return r


def verify_inclusion_leaf_hash(
    index: int, size: int, leaf: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check an audit path for an already-hashed leaf; raise ProofError if it is wrong."""
    _check_hash("root hash", root)
    computed = root_from_inclusion_proof(index, size, leaf, proof)
    # 5. Compare r against the root hash.
    if computed != root:
        raise ProofError(
            f"inclusion proof for leaf {index} in tree of size {size} leads to a different root"
        )


def verify_inclusion(
    index: int, size: int, entry_hash: bytes, proof: Sequence[bytes], root: bytes
) -> None:
    """Check that ``entry_hash`` is leaf ``index`` of the tree with ``size`` leaves and ``root``.

    Returns None on success; raises ProofError with the reason otherwise.
    """
    _check_hash("entry hash", entry_hash)
    verify_inclusion_leaf_hash(index, size, leaf_hash(entry_hash), proof, root)


def _consistency_proof_length(old_size: int, new_size: int) -> int:
    """Nodes in the consistency proof from ``old_size`` to ``new_size`` (0 < old < new)."""
    shift = (old_size & -old_size).bit_length() - 1  # trailing zeros: the old tree's last subtree
    length = _inclusion_path_length(old_size - 1, new_size) - shift
    # The proof carries that subtree's root unless it is the whole old tree.
    return length if old_size == 1 << shift else length + 1


def verify_consistency(
    old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (old_size, old_root) is a prefix of (new_size, new_root).

    Returns None on success; raises ProofError with the reason otherwise. Follows RFC 9162
    §2.1.4.2; see the module docstring for the empty-tree and equal-size cases.
    """
    if old_size < 0 or new_size < 0:
        raise ProofError(f"negative tree size: old {old_size}, new {new_size}")
    if old_size > new_size:
        raise ProofError(f"old tree size {old_size} is larger than new tree size {new_size}")
    _check_hash("old root hash", old_root)
    _check_hash("new root hash", new_root)
    _check_proof_hashes("consistency", proof)
    if old_size == 0 or old_size == new_size:
        if proof:
            raise ProofError(f"consistency proof has wrong size: expected 0, got {len(proof)}")
        if old_size == 0 and old_root != EMPTY_ROOT:
            raise ProofError("old root of size 0 is not the empty tree's root SHA-256(\"\")")
        if old_size == new_size and old_root != new_root:
            raise ProofError(f"trees of equal size {old_size} have different roots")
        return
    expected = _consistency_proof_length(old_size, new_size)
    # 1. An empty proof fails (covered: expected >= 1 whenever 0 < old_size < new_size).
    if len(proof) != expected:
        raise ProofError(f"consistency proof has wrong size: expected {expected}, got {len(proof)}")
    path = list(proof)
    # 2. If first is an exact power of 2, prepend first_hash to the path.
    if old_size & (old_size - 1) == 0:
        path.insert(0, old_root)
    # 3. fn = first - 1, sn = second - 1.
    fn, sn = old_size - 1, new_size - 1
    # 4. Right-shift both while LSB(fn) is set.
    while fn & 1:
        fn >>= 1
        sn >>= 1
    # 5. fr = sr = the first value of the path.
    fr = sr = path[0]
    # 6. Walk the rest.
    for c in path[1:]:
        if sn == 0:
            raise ProofError("consistency proof is longer than the path to the new root")
        if fn & 1 or fn == sn:
            fr = _sha256(_NODE_PREFIX + c + fr).digest()
            sr = _sha256(_NODE_PREFIX + c + sr).digest()
            while fn and not fn & 1:
                fn >>= 1
                sn >>= 1
        else:
            sr = _sha256(_NODE_PREFIX + sr + c).digest()
        fn >>= 1
        sn >>= 1
    # 7. fr must be the old root, sr the new root, and sn 0.
    if sn != 0:
        raise ProofError("consistency proof is shorter than the path to the new root")
    if fr != old_root:
        raise ProofError(f"consistency proof does not lead to the old root of size {old_size}")
    if sr != new_root:
        raise ProofError(f"consistency proof does not lead to the new root of size {new_size}")
