"""The node's :class:`~openred.node.token_service.DeliveryChecks` over the real checks.

For a delivery (DESIGN §5, CONTRACTS "Signed node records and grants"):

1. the peer's signed node record verifies under the key its node id names
   (:func:`openred.crypto.records.verify_signed_record`), it is the other party's, and its
   hash is the one the grant was minted for (``initiator_record`` / ``responder_record``);
2. the grant's ``ConnectionGranted`` entry, the directory's signed checkpoint and the
   inclusion proof verify (:func:`openred.crypto.transparency.verify_grant_delivery`);
3. the checkpoint is consistent with the one this node holds: when their sizes differ, a
   consistency proof between the two sizes is fetched from the directory
   (``GET /api/v3/directory/checkpoint?from=SMALL&to=LARGE``, the :data:`FetchCheckpoint`
   port) and checked against the two signed checkpoints the node holds. One request, and
   the directory moving on meanwhile (every grant it mints moves its newest checkpoint)
   changes nothing: the proof is between the node's own two notes.

A fork (:class:`~openred.errors.ForkDetected`) becomes :class:`Forked`; a proof the directory
did not give in time (a 5xx :class:`~openred.errors.RequestRefused` of the port) is raised as it
is (the receiver answers 503: push again); every other failure raises (the receiver answers
422).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from openred.crypto.grants import Grant
from openred.crypto.identity import NodeId, SignKey, b64url
from openred.crypto.records import SignedNodeRecord, verify_signed_record
from openred.crypto.transparency import (
    InclusionProof,
    entry_from_wire,
    verify_consistent,
    verify_directory_checkpoint,
    verify_grant_delivery,
)
from openred.errors import CryptoError, ForkDetected, RequestRefused, TransparencyError
from openred.node.token_service import Forked, Verified
from openred.node.tokens import HeldCheckpoint, PeerInfo

__all__ = ["FetchCheckpoint", "TransparencyChecks"]

FetchCheckpoint = Callable[[int, int], Awaitable[tuple[bytes, list[bytes]]]]
"""``(from_size, to_size)`` → the directory's newest checkpoint note and a consistency proof
from ``from_size`` to ``to_size``."""


def _note(value: object) -> bytes:
    if not isinstance(value, str):
        raise TransparencyError("checkpoint is the signed note's text")
    try:
        return value.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate, which JSON text may carry
        raise TransparencyError("checkpoint is the signed note's text") from None


class TransparencyChecks:
    """Peer record and directory-log checks with the pinned directory key."""

    def __init__(self, directory_key: SignKey, fetch: FetchCheckpoint) -> None:
        self.directory_key = directory_key
        self.fetch = fetch

    async def verify(
        self, delivery: Mapping[str, Any], grant: Grant, peer: NodeId,
        held: HeldCheckpoint | None,
    ) -> Verified | Forked:
        info = self._peer(delivery, grant, peer)
        note = _note(delivery.get("checkpoint"))
        entry_wire, proof_wire = delivery.get("entry"), delivery.get("inclusion_proof")
        if not isinstance(entry_wire, Mapping) or not isinstance(proof_wire, Mapping):
            raise TransparencyError("entry and inclusion_proof are JSON objects")
        entry = entry_from_wire(entry_wire)
        proof = InclusionProof.from_wire(proof_wire)
        # 2. The entry, the checkpoint (pinned key) and the inclusion proof.
        checkpoint = verify_grant_delivery(
            grant=grant, entry=entry, checkpoint_note=note, inclusion_proof=proof,
            directory_key=self.directory_key,
        )
        received = HeldCheckpoint(checkpoint.origin, checkpoint.size, note.decode("utf-8"))
        # 3. Consistency with what this node holds.
        if held is not None:
            try:
                await self._consistent(held, received)
            except ForkDetected:
                return Forked(received.note)
        return Verified(info, received)

    def _peer(self, delivery: Mapping[str, Any], grant: Grant, peer: NodeId) -> PeerInfo:
        # 1. The peer's own signed record, the one the grant names.
        wire = delivery.get("peer_record")
        if not isinstance(wire, Mapping):
            raise CryptoError("peer_record is {record, signature}")
        record = verify_signed_record(SignedNodeRecord.from_wire(wire))
        if record.node_id != peer:
            raise CryptoError("the peer record is not the other party's")
        named = grant.initiator_record if peer == grant.initiator else grant.responder_record
        if b64url(record.hash) != named:
            raise CryptoError("the peer record is not the one the grant was minted for")
        return PeerInfo(record.node_id, record.api_url, record.sign_key, record.box_key,
                        record.version)

    async def _consistent(self, held: HeldCheckpoint, received: HeldCheckpoint) -> None:
        held_note, new_note = held.note.encode("utf-8"), received.note.encode("utf-8")
        try:
            held_cp = verify_directory_checkpoint(held_note, self.directory_key)
        except CryptoError as exc:
            raise TransparencyError(f"the held checkpoint does not verify: {exc}") from exc
        new_cp = verify_directory_checkpoint(new_note, self.directory_key)
        if held_cp.size == new_cp.size:
            verify_consistent(held_note, held_cp, new_note, new_cp, None)
            return
        small, large = (held, received) if held.size < received.size else (received, held)
        small_cp, large_cp = (held_cp, new_cp) if small is held else (new_cp, held_cp)
        try:
            _, proof = await self.fetch(small.size, large.size)
        except RequestRefused as exc:
            if exc.status >= 500:
                # No proof now (the directory unreachable, slow or busy past the fetch's
                # budget): the push is refused for now (503), not judged.
                raise
            # The directory's own refusal to prove it (a log restored from an older copy has
            # no entry at the size held): the delivery does not verify, rather than the
            # directory's status passed on as if it were this node's answer.
            raise TransparencyError(
                f"the directory cannot prove its checkpoint (size {received.size}) consistent "
                f"with the one this node holds (size {held.size}): {exc}") from None
        verify_consistent(small.note.encode("utf-8"), small_cp, large.note.encode("utf-8"),
                          large_cp, proof)
