"""The directory's log as a Merkle tree kept in memory, for proofs at any checkpoint's size.

Every grant needs an inclusion proof at the size of the checkpoint it is pushed with, which is
not always the log's current size (other grants keep appending). The proofs themselves are the
store's RFC 9162 PATH and SUBPROOF (``openred.store.merkle.inclusion_path`` and
``consistency_path``); this cache answers the subtree roots they ask for from the leaf hashes
and the roots of every complete, aligned power-of-two block, so a proof costs O(log² n)
hashing and no database read. Pure: the service feeds it the entry hashes in order.
"""

from __future__ import annotations

from openred.store.merkle import (
    EMPTY_ROOT,
    consistency_path,
    inclusion_path,
    leaf_hash,
    node_hash,
)

__all__ = ["ProofTree"]


def _split(n: int) -> int:
    """The largest power of two smaller than ``n`` (n > 1)."""
    return 1 << ((n - 1).bit_length() - 1)


class ProofTree:
    """Leaf hashes plus cached roots of complete aligned blocks."""

    def __init__(self) -> None:
        self._levels: list[list[bytes]] = [[]]

    def __len__(self) -> int:
        return len(self._levels[0])

    def leaf(self, index: int) -> bytes:
        """The leaf hash of leaf ``index`` (seq ``index + 1``)."""
        return self._levels[0][index]

    def append(self, entry_hash: bytes) -> None:
        """Add the next leaf (the entry hash of seq len+1)."""
        if len(entry_hash) != 32:
            raise ValueError("an entry hash is 32 bytes")
        levels = self._levels
        levels[0].append(leaf_hash(entry_hash))
        level = 0
        while len(levels[level]) % 2 == 0:
            left, right = levels[level][-2:]
            if len(levels) == level + 1:
                levels.append([])
            levels[level + 1].append(node_hash(left, right))
            level += 1

    def range_root(self, start: int, end: int) -> bytes:
        """MTH of leaves ``start``..``end - 1`` (RFC 6962 §2.1)."""
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            return self._levels[n.bit_length() - 1][start // n]
        k = _split(n)
        return node_hash(self.range_root(start, start + k), self.range_root(start + k, end))

    def root(self, size: int) -> bytes:
        """The root of the tree of the first ``size`` leaves."""
        self._check(size)
        return EMPTY_ROOT if size == 0 else self.range_root(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of ``size`` leaves."""
        self._check(size)
        return inclusion_path(index, size, self.range_root)

    def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        """The proof that the tree of ``old_size`` leaves is a prefix of the one of ``size``."""
        self._check(size)
        return consistency_path(old_size, size, self.range_root)

    def _check(self, size: int) -> None:
        if not 0 <= size <= len(self):
            raise ValueError(f"the tree holds {len(self)} leaves, not {size}")
