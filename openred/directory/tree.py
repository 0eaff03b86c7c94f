"""The directory's log as a Merkle tree kept in memory, for fast proofs (RFC 9162 §2.1.3–2.1.4).

Every grant needs an inclusion proof at the size of the checkpoint just signed. The store can
compute one from the database (reading every entry hash each time: O(n)); this cache keeps the
leaf hashes and the roots of every complete, aligned power-of-two block, so a proof costs
O(log² n) hashing. Proofs follow the recursive PATH and SUBPROOF definitions of RFC 9162; the
left part of every split is an aligned complete block (a lookup), only the right edge is
computed. Pure: the service feeds it the entry hashes the store returns.
"""

from __future__ import annotations

from openred.store.merkle import EMPTY_ROOT, leaf_hash, node_hash

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

    def append(self, entry_hash: bytes) -> None:
        """Add the next leaf (the entry hash of seq len+1)."""
        if len(entry_hash) != 32:
            raise ValueError("an entry hash is 32 bytes")
        levels = self._levels
        levels[0].append(leaf_hash(entry_hash))
        level = 0
        while len(levels[level]) % 2 == 0:
            pair = levels[level][-2:]
            if len(levels) == level + 1:
                levels.append([])
            levels[level + 1].append(node_hash(pair[0], pair[1]))
            level += 1

    def _subtree(self, start: int, end: int) -> bytes:
        n = end - start
        if n & (n - 1) == 0 and start % n == 0:
            return self._levels[n.bit_length() - 1][start // n]
        k = _split(n)
        return node_hash(self._subtree(start, start + k), self._subtree(start + k, end))

    def root(self, size: int) -> bytes:
        """The root of the tree of the first ``size`` leaves."""
        self._check(size)
        return EMPTY_ROOT if size == 0 else self._subtree(0, size)

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        """The audit path of leaf ``index`` in the tree of ``size`` leaves."""
        self._check(size)
        if not 0 <= index < size:
            raise ValueError(f"leaf {index} is not in a tree of size {size}")
        proof: list[bytes] = []
        start, end, m = 0, size, index
        while end - start > 1:
            k = _split(end - start)
            if m < k:
                proof.append(self._subtree(start + k, end))
                end = start + k
            else:
                proof.append(self._subtree(start, start + k))
                start, m = start + k, m - k
        proof.reverse()
        return proof

    def consistency_proof(self, old_size: int, size: int) -> list[bytes]:
        """The proof that the tree of ``old_size`` leaves is a prefix of the one of ``size``."""
        self._check(size)
        if not 0 <= old_size <= size:
            raise ValueError(f"cannot prove size {old_size} against size {size}")
        if old_size in (0, size):
            return []
        proof: list[bytes] = []
        start, end, m, complete = 0, size, old_size, True
        while True:
            n = end - start
            if m == n:
                if not complete:
                    proof.append(self._subtree(start, end))
                break
            k = _split(n)
            if m <= k:
                proof.append(self._subtree(start + k, end))
                end = start + k
            else:
                proof.append(self._subtree(start, start + k))
                start, m, complete = start + k, m - k, False
        proof.reverse()
        return proof

    def _check(self, size: int) -> None:
        if not 0 <= size <= len(self):
            raise ValueError(f"the tree holds {len(self)} leaves, not {size}")
