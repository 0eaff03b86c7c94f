"""Checkpoints of one log signed by several writers through one witnessing signer.

The signer here keeps the jail's own witness (``crypto_jail.witness.Witness``) in process: it
signs a checkpoint only with a valid consistency proof from the last one it signed. Two stores
open on one log stand for the directory serving and ``openred directory revoke`` beside it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from crypto_jail.witness import Witness
from openred.crypto.identity import EntryHash, Signature, SignKey
from openred.node.events import node_registry
from openred.node.projections import node_projections
from openred.store import merkle
from openred.store.checkpoint import Checkpoint, parse_checkpoint_body, parse_signed_note
from openred.store.signer import InProcessSigner, WitnessedSigner
from openred.store.sqlite import SQLiteEventStore
from openred.store.witnessing import WitnessAhead
from tests.store.history import peer_event


class WitnessingSigner:
    """An in-process key with the jail's witness in front of its checkpoint signatures."""

    def __init__(self, path: Path) -> None:
        self._key = InProcessSigner.generate()
        self.witness = Witness(path)

    @property
    def sign_key(self) -> SignKey:
        return self._key.sign_key

    async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        return await self._key.sign_entry_hashes(hashes)

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        return self._sign(note_body, None)

    async def witnessed_checkpoint(self, origin: str) -> bytes | None:
        return self.witness.witnessed(origin)

    async def sign_checkpoint_extending(
        self, note_body: bytes, consistency_proof: Sequence[bytes]
    ) -> Signature:
        return self._sign(note_body, consistency_proof)

    def _sign(self, body: bytes, proof: Sequence[bytes] | None) -> Signature:
        key = self._key._key
        return Signature(self.witness.sign(body, proof, lambda b: key.sign(b).signature))


async def open_store(path: Path, signer: WitnessingSigner) -> SQLiteEventStore:
    return await SQLiteEventStore.open(path, signer, registry=node_registry(),
                                       projections=node_projections(), checkpoint_every=1000,
                                       checkpoint_interval=0)


def size_of(note: bytes) -> int:
    return parse_checkpoint_body(parse_signed_note(note).body).size


async def test_a_writer_behind_another_writers_witnessed_checkpoint_catches_up(
    tmp_path: Path,
) -> None:
    signer = WitnessingSigner(tmp_path / "witness")
    assert isinstance(signer, WitnessedSigner)
    server = await open_store(tmp_path, signer)
    beside = await open_store(tmp_path, signer)
    try:
        await beside.append([peer_event(10)])
        for i in range(3):
            await server.append([peer_event(i)])
        # The other process signs a checkpoint beyond what `beside` has read.
        assert size_of(await server.checkpoint()) == 5
        assert beside.head.size == 2
        # Its own checkpoint: it reads the other writer's entries and signs its new head
        # (before, the witness refused its smaller tree and checkpoint() failed).
        assert size_of(await beside.checkpoint()) == 5
        await beside.append([peer_event(11)])
        assert size_of(await beside.checkpoint()) == 6
        # A tree checkpoint (the directory's per-grant path) behind the witnessed one: signed
        # as the witnessed one when the caller's tree holds it, refused otherwise.
        hashes = [bytes(r[0]) for r in await server.query(
            "SELECT entry_hash FROM events ORDER BY seq")]
        behind = Checkpoint(origin=server.origin, size=5,
                            root_hash=merkle.root_from_entry_hashes(hashes[:5]))

        async def prove(old: int) -> list[bytes]:
            return merkle.consistency_proof(old, hashes[:5])

        async def root_at(size: int) -> bytes | None:
            return merkle.root_from_entry_hashes(hashes[:size]) if size <= len(hashes) else None

        signed, note = await server.sign_checkpoint_of(behind, signer, prove, newer=root_at)
        assert signed.size == size_of(note) == 6
        with pytest.raises(WitnessAhead):
            await server.sign_checkpoint_of(behind, signer, prove)

        async def forked_root(size: int) -> bytes | None:
            return b"\x01" * 32

        with pytest.raises(WitnessAhead):
            await server.sign_checkpoint_of(behind, signer, prove, newer=forked_root)
    finally:
        await beside.close()
        await server.close()
        signer.witness.close()
