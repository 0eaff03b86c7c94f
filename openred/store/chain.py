"""The hash chain: building entries from new events, and checking entries one by one.

Pure functions: no I/O, no clock. The SQLite adapter builds entries with :func:`chain_entries`
and the verifier checks them with :class:`ChainChecker`, which follows the signer key history
(genesis ``LogOpened`` names the first key; each ``KeyRotated`` is signed by the old and the new
key, its signature column holding both signatures, old first).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, MutableMapping, Sequence
from dataclasses import dataclass
from typing import NamedTuple

from openred.crypto.identity import EntryHash, NodeId, SignKey, from_b64url
from openred.errors import ConcurrencyConflict, InvalidKey, InvalidSignature, TamperedLog
from openred.store.codec import (
    GENESIS_PREV_HASH,
    HASH_SIZE,
    SIGNATURE_SIZE,
    canonical_json,
    decode_payload,
    entry_hash,
    entry_hash_raw,
)
from openred.store.events import KEY_ROTATED, LOG_OPENED, LOG_STREAM, NewEvent, StoredEvent


class UnsignedEntry(NamedTuple):
    """A chained entry waiting for its signature."""

    seq: int
    stream: str
    stream_version: int
    type: str
    schema_version: int
    recorded_at: str
    payload: bytes
    prev_hash: bytes
    entry_hash: EntryHash

    def signed(self, signature: bytes) -> StoredEvent:
        return StoredEvent(*self, signature)


def origin_for(node_id: NodeId) -> str:
    """The checkpoint origin (and signed-note key name) of a node's log (DESIGN §8)."""
    return f"openred/{node_id}"


DEFAULT_KIND = "node"


def genesis_event(sign_key: SignKey, kind: str = DEFAULT_KIND) -> NewEvent:
    """The ``LogOpened`` event that starts every log: its first signer key and its kind.

    ``kind`` names the log's migration branch and projections (``node``, ``directory``...).
    """
    return NewEvent(
        stream=LOG_STREAM,
        type=LOG_OPENED,
        payload={
            "sign_key": sign_key.b64url(),
            "node_id": str(sign_key.node_id),
            "origin": origin_for(sign_key.node_id),
            "kind": kind,
        },
        expected_version=0,
    )


def log_kind(genesis_payload: Mapping[str, object]) -> str:
    """The kind a ``LogOpened`` payload declares; logs from before kinds existed are nodes'."""
    kind = genesis_payload.get("kind", DEFAULT_KIND)
    if not isinstance(kind, str) or not kind:
        raise ValueError("LogOpened kind must be a non-empty string")
    return kind


def rotation_event(old: SignKey, new: SignKey) -> NewEvent:
    """The ``KeyRotated`` event handing the log from ``old`` to ``new``."""
    return NewEvent(
        stream=LOG_STREAM,
        type=KEY_ROTATED,
        payload={"old_key": old.b64url(), "new_key": new.b64url()},
    )


def chain_entries(
    events: Sequence[NewEvent],
    *,
    next_seq: int,
    prev_hash: bytes,
    stream_versions: MutableMapping[str, int],
    recorded_at: str,
    current_versions: Mapping[str, int] | None = None,
) -> list[UnsignedEntry]:
    """Chain ``events`` after the entry ``prev_hash`` at position ``next_seq - 1``.

    ``stream_versions`` maps each stream of the batch to its current version and is advanced in
    place; an ``expected_version`` that does not match raises ConcurrencyConflict. An event
    without a schema version gets its type's from ``current_versions`` (1 if not given).
    """
    if len(prev_hash) != HASH_SIZE:
        raise ValueError("prev_hash must be 32 bytes")
    out: list[UnsignedEntry] = []
    seq = next_seq
    recorded_b = recorded_at.encode("utf-8")
    for event in events:
        current = stream_versions[event.stream]
        if event.expected_version is not None and event.expected_version != current:
            raise ConcurrencyConflict(
                f"stream {event.stream!r} is at version {current}, "
                f"writer expected {event.expected_version}"
            )
        version = current + 1
        stream_versions[event.stream] = version
        schema_version = event.schema_version
        if schema_version is None:
            schema_version = current_versions.get(event.type, 1) if current_versions else 1
        raw = event.payload
        payload = canonical_json(raw if type(raw) is dict else dict(raw))
        digest = EntryHash(
            entry_hash_raw(
                seq, event.stream.encode("utf-8"), version, event.type.encode("utf-8"),
                schema_version, recorded_b, payload, prev_hash,
            )
        )
        out.append(
            UnsignedEntry(
                seq, event.stream, version, event.type, schema_version,
                recorded_at, payload, prev_hash, digest,
            )
        )
        prev_hash = digest
        seq += 1
    return out


def recompute_hash(entry: StoredEvent) -> bytes:
    """Recompute the entry hash of a stored entry from its fields."""
    return entry_hash(
        seq=entry.seq, stream=entry.stream, stream_version=entry.stream_version,
        type=entry.type, schema_version=entry.schema_version, recorded_at=entry.recorded_at,
        payload=entry.payload, prev_hash=entry.prev_hash,
    )


@dataclass(frozen=True, slots=True)
class KeyEpoch:
    """The signer key in force from ``from_seq`` (inclusive) on."""

    from_seq: int
    key: SignKey


class ChainChecker:
    """Checks entries in order: continuity, links, hashes, signatures, key history.

    Feed entries with :meth:`check`; the first failure raises TamperedLog naming the seq.
    """

    def __init__(
        self, *, expected_key: SignKey | None = None, recompute_hashes: bool = True
    ) -> None:
        self._expected_key = expected_key
        self._recompute = recompute_hashes
        self.count = 0
        self.head_hash: bytes | None = GENESIS_PREV_HASH
        self.key: SignKey | None = None
        self.key_history: list[KeyEpoch] = []

    @classmethod
    def resume(
        cls, *, after_seq: int, key: SignKey | None, recompute_hashes: bool = True
    ) -> ChainChecker:
        """A checker for a range starting at ``after_seq + 1`` (for parallel verification).

        The link of the range's first entry is not checked (its predecessor is in another
        range); the caller stitches ranges by comparing that entry's ``prev_hash`` with the
        previous range's last ``entry_hash``.
        """
        checker = cls(recompute_hashes=recompute_hashes)
        checker.count = after_seq
        checker.head_hash = None if after_seq else GENESIS_PREV_HASH
        checker.key = key
        return checker

    def check(self, entry: StoredEvent, *, verify_signature: bool = True) -> None:
        seq = self.count + 1
        # Sequence continuity: seq is 1..n with no gap, repeat or reordering. The first bad
        # position is the one expected here (a missing or misplaced entry), not the stray seq.
        if entry.seq != seq:
            raise TamperedLog(seq, f"sequence broken: expected seq {seq}, got {entry.seq}")
        if len(entry.prev_hash) != HASH_SIZE or len(entry.entry_hash) != HASH_SIZE:
            raise TamperedLog(seq, "hash field has the wrong length")
        # The link: prev_hash is the previous entry's hash (zeros for the first).
        if self.head_hash is not None and entry.prev_hash != self.head_hash:
            raise TamperedLog(seq, "prev_hash does not match the previous entry's hash")
        # The entry hash covers every other field (a pseudonymized export cannot show this).
        if self._recompute and recompute_hash(entry) != entry.entry_hash:
            raise TamperedLog(seq, "entry_hash does not match the entry's contents")
        if seq == 1:
            self._open(entry)
        elif entry.type == LOG_OPENED:
            raise TamperedLog(seq, "LogOpened may only be the first entry")
        if entry.type == KEY_ROTATED:
            self._rotate(entry, verify_signature)
        elif verify_signature:
            self._verify(entry, self._current_key(entry.seq), entry.signature)
        self.count = seq
        self.head_hash = entry.entry_hash

    def _current_key(self, seq: int) -> SignKey:
        if self.key is None:
            raise TamperedLog(seq, "no signer key: the log has no genesis entry")
        return self.key

    def _open(self, entry: StoredEvent) -> None:
        if entry.type != LOG_OPENED or entry.stream != LOG_STREAM:
            raise TamperedLog(1, "the first entry is not LogOpened")
        key = _key_from_payload(entry, "sign_key")
        payload = decode_payload(entry.payload)
        if payload.get("node_id") != key.node_id:
            raise TamperedLog(1, "LogOpened node_id does not match its sign_key")
        if self._expected_key is not None and key != self._expected_key:
            raise TamperedLog(1, "genesis signer key is not the expected key")
        self.key = key
        self.key_history.append(KeyEpoch(1, key))

    def _rotate(self, entry: StoredEvent, verify_signature: bool) -> None:
        old = _key_from_payload(entry, "old_key")
        new = _key_from_payload(entry, "new_key")
        if old != self._current_key(entry.seq):
            raise TamperedLog(entry.seq, "KeyRotated old_key is not the key in force")
        if len(entry.signature) != 2 * SIGNATURE_SIZE:
            raise TamperedLog(entry.seq, "KeyRotated must carry two signatures (old and new key)")
        if verify_signature:
            self._verify(entry, old, entry.signature[:SIGNATURE_SIZE])
            self._verify(entry, new, entry.signature[SIGNATURE_SIZE:])
        self.key = new
        self.key_history.append(KeyEpoch(entry.seq + 1, new))

    @staticmethod
    def _verify(entry: StoredEvent, key: SignKey, signature: bytes) -> None:
        if len(signature) != SIGNATURE_SIZE:
            raise TamperedLog(entry.seq, "signature has the wrong length")
        try:
            key.verify(signature, entry.entry_hash)
        except InvalidSignature:
            raise TamperedLog(entry.seq, "signature does not verify") from None


def _key_from_payload(entry: StoredEvent, name: str) -> SignKey:
    try:
        payload = decode_payload(entry.payload)
        value = payload[name]
        return SignKey(from_b64url(value))
    except (ValueError, KeyError, TypeError, InvalidKey):
        raise TamperedLog(entry.seq, f"{entry.type} has no valid {name}") from None


def check_chain(
    entries: Iterable[StoredEvent], *, expected_key: SignKey | None = None
) -> ChainChecker:
    """Check a whole sequence of entries from genesis; return the checker (count, head, keys)."""
    checker = ChainChecker(expected_key=expected_key)
    for entry in entries:
        checker.check(entry)
    return checker


__all__ = [
    "ChainChecker",
    "KeyEpoch",
    "UnsignedEntry",
    "chain_entries",
    "check_chain",
    "genesis_event",
    "log_kind",
    "origin_for",
    "recompute_hash",
    "rotation_event",
]
