"""File sharing's pure domain: safe names, the chunk hash tree, offers and the capability check.

**The hash tree.** A file of ``size`` bytes is cut into chunks of ``chunk_size`` bytes (the last
one shorter; an empty file has no chunk). Leaf ``i`` is ``SHA-256(0x00 ‖ chunk_i)``; an inner
node is ``SHA-256(0x01 ‖ left ‖ right)``; a level with an odd number of nodes carries its last
node up unchanged. The root of a file without chunks is ``SHA-256("")``. The proof of chunk
``i`` is the list of siblings met on the way up, bottom first (none where the node is carried
up). The offer carries the root and the whole file's plain ``SHA-256`` digest: each chunk is
checked against the root as it arrives, the whole file against the digest before it is moved
into place. The 0x00/0x01 prefixes keep a leaf from ever passing for an inner node.

**Names.** An offered name is one path component a receiver can create anywhere: NFC text of
1..:data:`MAX_NAME_BYTES` bytes of UTF-8, no ``/`` or ``\\``, no control or format character
(NUL included), none of ``<>:"|?*``, not starting with ``.`` or a space, not ending with a space
or ``.``. Anything else is refused (a 422 problem, or a CLI error on the sender), never
rewritten silently.

**Capability.** An offer is for exactly one peer until it expires, is revoked or declined:
another peer gets the same 404 as for an unknown offer, the right peer after that a 410.
"""

from __future__ import annotations

import hashlib
import re
import unicodedata
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from openred.errors import NodeRefused

__all__ = [
    "CHUNK_SIZE",
    "MAX_CHUNKS",
    "MAX_CHUNK_SIZE",
    "MAX_NAME_BYTES",
    "OFFER_ID",
    "HashTree",
    "OfferTerms",
    "check_name",
    "chunk_count",
    "chunk_range",
    "leaf_hash",
    "refuse_unless_usable",
    "root_of",
    "verify_chunk",
]

CHUNK_SIZE: Final = 4 * 1024 * 1024
"""Default chunk size: one chunk, its proof and the tag fit a binary answer envelope
(:data:`openred.node.envelope_binary.MAX_ANSWER_CIPHERTEXT`, 4 MiB + 64 KiB)."""
MAX_CHUNK_SIZE: Final = 4 * 1024 * 1024
MIN_CHUNK_SIZE: Final = 4 * 1024
MAX_NAME_BYTES: Final = 200
MAX_CHUNKS: Final = 1 << 20
"""Most chunks an offer may have (4 TiB in chunks of 4 MiB, 4 GiB in chunks of 4 KiB): both
sides keep a few small objects per chunk (the sender's tree, the receiver's fetch state)."""
MAX_SIZE: Final = 1 << 50
"""Largest file an offer may describe (1 PiB): keeps chunk counts and offsets sane."""
EMPTY_ROOT: Final = hashlib.sha256(b"").digest()
HASH_BYTES: Final = 32
_FORBIDDEN = set('/\\<>:"|?*')
OFFER_ID: Final = re.compile(r"[A-Za-z0-9_-]{22}")
_DIGEST = re.compile(r"[A-Za-z0-9_-]{43}")


def _invalid(detail: str) -> NodeRefused:
    return NodeRefused(422, "invalid-name", detail)


def check_name(name: object) -> str:
    """``name`` if it is a safe single file name (see module doc); else NodeRefused 422."""
    if not isinstance(name, str):
        raise _invalid("the name is a string")
    if unicodedata.normalize("NFC", name) != name:
        raise _invalid("the name is NFC-normalized text")
    raw = name.encode("utf-8", errors="surrogatepass")
    if not 1 <= len(raw) <= MAX_NAME_BYTES:
        raise _invalid(f"the name is 1..{MAX_NAME_BYTES} bytes of UTF-8")
    for ch in name:
        if ch in _FORBIDDEN:
            raise _invalid(f"the name may not contain {ch!r} (one file name, no path)")
        if unicodedata.category(ch) in ("Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"):
            raise _invalid("the name may not contain control, format or unassigned characters")
    if name[0] in ". " or name[-1] in ". ":
        raise _invalid("the name may not start with '.' or a space, nor end with '.' or a space")
    return name


def chunk_count(size: int, chunk_size: int) -> int:
    return (size + chunk_size - 1) // chunk_size


def chunk_range(index: int, size: int, chunk_size: int) -> tuple[int, int]:
    """(offset, length) of chunk ``index``."""
    offset = index * chunk_size
    return offset, min(chunk_size, size - offset)


def leaf_hash(chunk: bytes | bytearray | memoryview) -> bytes:
    """``SHA-256(0x00 ‖ chunk)``, hashing the chunk where it lies (no copy)."""
    h = hashlib.sha256(b"\x00")
    h.update(chunk)
    return h.digest()


def _node(left: bytes, right: bytes) -> bytes:
    return hashlib.sha256(b"\x01" + left + right).digest()


class HashTree:
    """The whole tree over a file's leaves, for the sender's proofs.

    Each level is one ``bytes`` of 32-byte hashes side by side: ``2 × 32`` bytes per chunk in
    all (:attr:`nbytes`), what the sender's cache of trees is bounded by. A list of one
    ``bytes`` object per hash took about 73 bytes per hash (object header and pointer).
    """

    def __init__(self, leaves: Sequence[bytes]) -> None:
        level = b"".join(leaves)
        if len(level) != HASH_BYTES * len(leaves):
            raise ValueError("every leaf is a 32-byte hash")
        self.levels: list[bytes] = self._build(level)

    @classmethod
    def from_leaves(cls, raw: bytes) -> HashTree:
        """The tree over ``raw``, leaves side by side (a ``trees/<offer>.leaves`` file)."""
        if len(raw) % HASH_BYTES:
            raise ValueError("the leaves are not a whole number of 32-byte hashes")
        tree = cls.__new__(cls)
        tree.levels = cls._build(raw)
        return tree

    @staticmethod
    def _build(level: bytes) -> list[bytes]:
        levels = [level]
        while len(level) > HASH_BYTES:
            # A pair of neighbours is one 64-byte slice of the level below.
            up = [hashlib.sha256(b"\x01" + level[i:i + 2 * HASH_BYTES]).digest()
                  for i in range(0, len(level) - HASH_BYTES, 2 * HASH_BYTES)]
            if len(level) // HASH_BYTES % 2:
                up.append(level[-HASH_BYTES:])
            level = b"".join(up)
            levels.append(level)
        return levels

    @property
    def size(self) -> int:
        return len(self.levels[0]) // HASH_BYTES

    @property
    def nbytes(self) -> int:
        """The bytes of hashes this tree holds (what it costs the sender's cache)."""
        return sum(len(level) for level in self.levels)

    @property
    def root(self) -> bytes:
        return self.levels[-1] if self.size else EMPTY_ROOT

    def leaf(self, index: int) -> bytes:
        if not 0 <= index < self.size:
            raise IndexError(index)
        return self.levels[0][index * HASH_BYTES:(index + 1) * HASH_BYTES]

    def proof(self, index: int) -> list[bytes]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        path: list[bytes] = []
        for level in self.levels[:-1]:
            sibling = index ^ 1
            if sibling < len(level) // HASH_BYTES:
                path.append(level[sibling * HASH_BYTES:(sibling + 1) * HASH_BYTES])
            index //= 2
        return path


def root_of(leaves: Sequence[bytes]) -> bytes:
    return HashTree(leaves).root


def verify_chunk(index: int, count: int, chunk: bytes | bytearray | memoryview,
                 proof: Sequence[bytes], root: bytes) -> bytes | None:
    """The chunk's leaf hash if ``proof`` places it at ``index`` under ``root``; else None."""
    if not 0 <= index < count:
        return None
    leaf = leaf_hash(chunk)
    node, size, used = leaf, count, 0
    while size > 1:
        if index % 2 == 1:
            if used >= len(proof):
                return None
            node = _node(proof[used], node)
            used += 1
        elif index + 1 < size:
            if used >= len(proof):
                return None
            node = _node(node, proof[used])
            used += 1
        index //= 2
        size = (size + 1) // 2
    return leaf if used == len(proof) and node == root else None


@dataclass(frozen=True, slots=True)
class OfferTerms:
    """What an offer notification says (and what the receiver logs): all checked."""

    offer_id: str
    name: str
    size: int
    digest: str
    root: str
    chunk_size: int
    expires_at: int

    @property
    def chunks(self) -> int:
        return chunk_count(self.size, self.chunk_size)

    def to_json(self) -> dict[str, Any]:
        return {
            "offer_id": self.offer_id, "name": self.name, "size": self.size,
            "digest": self.digest, "root": self.root, "chunk_size": self.chunk_size,
            "expires_at": self.expires_at,
        }

    @classmethod
    def from_json(cls, obj: object) -> OfferTerms:
        def bad(detail: str) -> NodeRefused:
            return NodeRefused(422, "invalid-offer", detail)

        if not isinstance(obj, dict) or set(obj) != {
            "offer_id", "name", "size", "digest", "root", "chunk_size", "expires_at"
        }:
            raise bad("an offer has exactly offer_id, name, size, digest, root, chunk_size, "
                      "expires_at")
        offer_id, size, chunk = obj["offer_id"], obj["size"], obj["chunk_size"]
        if not isinstance(offer_id, str) or not OFFER_ID.fullmatch(offer_id):
            raise bad("offer_id is 16 bytes base64url")
        for key in ("digest", "root"):
            if not isinstance(obj[key], str) or not _DIGEST.fullmatch(obj[key]):
                raise bad(f"{key} is a SHA-256 hash in base64url")
        for key, value, low, high in (("size", size, 0, MAX_SIZE),
                                      ("chunk_size", chunk, MIN_CHUNK_SIZE, MAX_CHUNK_SIZE),
                                      ("expires_at", obj["expires_at"], 0, 1 << 40)):
            if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
                raise bad(f"{key} is an integer in {low}..{high}")
        if chunk_count(size, chunk) > MAX_CHUNKS:
            raise bad(f"an offer has at most {MAX_CHUNKS} chunks")
        return cls(offer_id, check_name(obj["name"]), size, obj["digest"], obj["root"], chunk,
                   obj["expires_at"])


def refuse_unless_usable(*, exists: bool, for_peer: bool, state: str, expires_at: int,
                         now: int) -> None:
    """The capability check of a request for an offer (see module doc)."""
    if not exists or not for_peer:
        raise NodeRefused(404, "unknown-offer", "no such offer for this peer")
    if state == "revoked":
        raise NodeRefused(410, "offer-revoked", "the offer was revoked")
    if state == "declined":
        raise NodeRefused(410, "offer-declined", "the offer was declined")
    if state == "expired" or now >= expires_at:
        raise NodeRefused(410, "offer-expired", "the offer has expired")
