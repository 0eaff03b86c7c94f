"""Grants the directory cannot hide (DESIGN §5, issue 7 §6): what a node checks, as pure functions.

With every grant the directory pushes its log's ``ConnectionGranted`` entry (every field the
entry hash covers), a C2SP signed checkpoint of its log, and an RFC 6962 inclusion proof of that
entry. A node accepts the grant only when :func:`verify_grant_delivery` passes:

1. the entry's fields hash to its ``entry_hash`` and it sits at ``leaf_index + 1``;
2. its payload names exactly this grant (:func:`connection_granted_payload`, every field and
   the grant's hash);
3. the checkpoint is signed by the pinned directory key, with origin ``openred/<directory id>``;
4. the inclusion proof leads from the entry to the checkpoint's root at its size;
5. the checkpoint is consistent with the last directory checkpoint the node holds (given a
   consistency proof between them, in whichever order their sizes are). Two checkpoints that
   are both validly signed but cannot be proven consistent — the same size with different
   roots, or a proof that fails — raise :class:`~openred.errors.ForkDetected` carrying both
   notes: evidence that the directory showed two different logs.

So a grant that is not in the directory's public log — or is in a private fork of it — is
refused. Pure code: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from openred.crypto.grants import Grant
from openred.crypto.identity import SignKey, b64url, from_b64url
from openred.errors import CheckpointError, ForkDetected, ProofError, TransparencyError
from openred.store import merkle
from openred.store.chain import recompute_hash
from openred.store.checkpoint import Checkpoint, verify_checkpoint
from openred.store.codec import decode_payload
from openred.store.events import StoredEvent

__all__ = [
    "CONNECTION_GRANTED",
    "InclusionProof",
    "connection_granted_payload",
    "decode_hashes",
    "directory_origin",
    "entry_from_wire",
    "entry_to_wire",
    "verify_consistent",
    "verify_directory_checkpoint",
    "verify_grant_delivery",
    "verify_grant_entry",
]

CONNECTION_GRANTED = "ConnectionGranted"
MAX_PROOF_HASHES = 128


def directory_origin(directory_key: SignKey) -> str:
    """The checkpoint origin (and note key name) of the directory's log."""
    return f"openred/{directory_key.node_id}"


def connection_granted_payload(grant: Grant) -> dict[str, Any]:
    """The ``ConnectionGranted`` payload for ``grant``: its public fields and its hash.

    No secret: neither the tokens nor the secret they came from. ``grant_hash`` binds the entry
    to every byte of the signed grant, so no other grant can claim this entry.
    """
    return {
        "grant_id": grant.grant_id,
        "initiator": str(grant.initiator),
        "responder": str(grant.responder),
        "issued_at": grant.issued_at,
        "expires_at": grant.expires_at,
        "suite": grant.suite,
        "initiator_record": grant.initiator_record,
        "responder_record": grant.responder_record,
        "grant_hash": b64url(grant.grant_hash),
    }


@dataclass(frozen=True, slots=True)
class InclusionProof:
    """An RFC 6962 audit path: leaf ``leaf_index`` (entry seq - 1) in a tree of ``tree_size``."""

    leaf_index: int
    tree_size: int
    hashes: tuple[bytes, ...]

    def to_wire(self) -> dict[str, Any]:
        return {"leaf_index": self.leaf_index, "tree_size": self.tree_size,
                "hashes": [b64url(h) for h in self.hashes]}

    @classmethod
    def from_wire(cls, obj: Mapping[str, Any]) -> InclusionProof:
        """Parse ``{leaf_index, tree_size, hashes}``; TransparencyError if malformed."""
        if not isinstance(obj, Mapping) or set(obj) != {"leaf_index", "tree_size", "hashes"}:
            raise TransparencyError("an inclusion proof is {leaf_index, tree_size, hashes}")
        index, size, hashes = obj["leaf_index"], obj["tree_size"], obj["hashes"]
        if not _is_count(index) or not _is_count(size):
            raise TransparencyError("leaf_index and tree_size are non-negative integers")
        return cls(index, size, tuple(decode_hashes(hashes, "inclusion proof")))


def _is_count(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value < 2**63


def decode_hashes(values: object, what: str) -> list[bytes]:
    """base64url hashes of a proof, each 32 bytes; TransparencyError otherwise."""
    if not isinstance(values, list) or len(values) > MAX_PROOF_HASHES:
        raise TransparencyError(f"{what} is a list of at most {MAX_PROOF_HASHES} hashes")
    out = []
    for value in values:
        try:
            raw = from_b64url(value)
        except ValueError as exc:
            raise TransparencyError(f"{what} hash is not base64url") from exc
        if len(raw) != merkle.HASH_SIZE:
            raise TransparencyError(f"{what} hash is not 32 bytes")
        out.append(raw)
    return out


_ENTRY_FIELDS = frozenset({
    "seq", "stream", "stream_version", "type", "schema_version", "recorded_at", "payload",
    "prev_hash", "entry_hash", "signature",
})


def entry_to_wire(entry: StoredEvent) -> dict[str, Any]:
    """A log entry as JSON: every field the entry hash covers, binary ones base64url."""
    return {
        "seq": entry.seq, "stream": entry.stream, "stream_version": entry.stream_version,
        "type": entry.type, "schema_version": entry.schema_version,
        "recorded_at": entry.recorded_at, "payload": b64url(entry.payload),
        "prev_hash": b64url(entry.prev_hash), "entry_hash": b64url(entry.entry_hash),
        "signature": b64url(entry.signature),
    }


def entry_from_wire(obj: Mapping[str, Any]) -> StoredEvent:
    """Parse an entry sent by :func:`entry_to_wire`; TransparencyError if malformed."""
    if not isinstance(obj, Mapping) or set(obj) != _ENTRY_FIELDS:
        raise TransparencyError(f"a log entry has exactly the fields {sorted(_ENTRY_FIELDS)}")
    try:
        for name in ("seq", "stream_version", "schema_version"):
            if not _is_count(obj[name]):
                raise ValueError(f"{name} is not a count")
        for name in ("stream", "type", "recorded_at"):
            if not isinstance(obj[name], str):
                raise ValueError(f"{name} is not a string")
            obj[name].encode("utf-8")  # a lone surrogate: JSON text may carry it, UTF-8 not
        binary = {n: from_b64url(obj[n])
                  for n in ("payload", "prev_hash", "entry_hash", "signature")}
    except (ValueError, TypeError) as exc:
        raise TransparencyError(f"malformed log entry: {exc}") from exc
    return StoredEvent(
        obj["seq"], obj["stream"], obj["stream_version"], obj["type"], obj["schema_version"],
        obj["recorded_at"], binary["payload"], binary["prev_hash"], binary["entry_hash"],
        binary["signature"],
    )


def verify_directory_checkpoint(note: bytes, directory_key: SignKey) -> Checkpoint:
    """The checkpoint if the pinned directory key signed it for its own log; CheckpointError."""
    origin = directory_origin(directory_key)
    return verify_checkpoint(note, origin, directory_key, origin=origin)


def verify_grant_entry(
    grant: Grant, entry: StoredEvent, proof: InclusionProof, checkpoint: Checkpoint
) -> None:
    """Steps 1, 2 and 4: the entry is genuine, names this grant, and is in ``checkpoint``."""
    # 1. The entry's fields hash to its entry_hash, at the position the proof claims.
    if recompute_hash(entry) != entry.entry_hash:
        raise TransparencyError("the entry's fields do not hash to its entry_hash")
    if entry.seq != proof.leaf_index + 1:
        raise TransparencyError(
            f"the entry is seq {entry.seq} but the proof is for leaf {proof.leaf_index}")
    # 2. Its payload names exactly this grant.
    if entry.type != CONNECTION_GRANTED:
        raise TransparencyError(f"the entry is a {entry.type}, not a {CONNECTION_GRANTED}")
    try:
        payload = decode_payload(entry.payload)
    except (ValueError, TypeError) as exc:
        raise TransparencyError("the entry's payload is not canonical JSON") from exc
    if payload != connection_granted_payload(grant):
        raise TransparencyError("the entry's payload does not name exactly this grant")
    # 4. The inclusion proof leads from the entry to the checkpoint's root.
    if proof.tree_size != checkpoint.size:
        raise TransparencyError(
            f"inclusion proof has wrong size: expected {checkpoint.size}, got {proof.tree_size}")
    try:
        merkle.verify_inclusion(proof.leaf_index, proof.tree_size, entry.entry_hash,
                                list(proof.hashes), checkpoint.root_hash)
    except ProofError as exc:
        raise TransparencyError(f"inclusion proof does not verify: {exc}") from exc


def verify_consistent(
    held_note: bytes, held: Checkpoint, new_note: bytes, new: Checkpoint,
    proof: Sequence[bytes] | None,
) -> None:
    """Step 5: ``held`` and ``new`` are two views of one append-only log, or ForkDetected.

    ``proof`` proves the smaller tree a prefix of the larger (None when the sizes are equal).
    """
    if held.origin != new.origin:
        raise TransparencyError("the two checkpoints are of different logs")
    if held.size == new.size:
        if held.root_hash != new.root_hash:
            raise ForkDetected(f"two different roots for tree size {new.size}",
                               held=held_note, received=new_note)
        return
    if proof is None:
        raise TransparencyError(
            f"a consistency proof between sizes {held.size} and {new.size} is needed")
    old, newer = (held, new) if held.size < new.size else (new, held)
    try:
        merkle.verify_consistency(old.size, newer.size, old.root_hash, newer.root_hash,
                                  list(proof))
    except ProofError as exc:
        raise ForkDetected(
            f"checkpoints of sizes {old.size} and {newer.size} are not consistent: {exc}",
            held=held_note, received=new_note,
        ) from exc


def verify_grant_delivery(
    *,
    grant: Grant,
    entry: StoredEvent,
    checkpoint_note: bytes,
    inclusion_proof: InclusionProof,
    directory_key: SignKey,
    held_note: bytes | None = None,
    consistency_proof: Sequence[bytes] | None = None,
) -> Checkpoint:
    """Run steps 1-5; return the received checkpoint (the node holds the larger of the two).

    ``held_note`` is the last directory checkpoint the node holds (None on first contact:
    nothing to compare with yet). Raises TransparencyError, CheckpointError or ForkDetected.
    """
    # 3. The checkpoint is the directory's, signed by the pinned key.
    checkpoint = verify_directory_checkpoint(checkpoint_note, directory_key)
    # 1., 2., 4. The entry, its payload and its inclusion.
    verify_grant_entry(grant, entry, inclusion_proof, checkpoint)
    # 5. Consistency with what the node already holds.
    if held_note is not None:
        try:
            held = verify_directory_checkpoint(held_note, directory_key)
        except CheckpointError as exc:
            raise TransparencyError(f"the held checkpoint does not verify: {exc}") from exc
        verify_consistent(held_note, held, checkpoint_note, checkpoint, consistency_proof)
    return checkpoint

