"""Signing a log's checkpoints through a signer that witnesses them (the jail's ``--witness-file``).

A witnessing signer remembers the newest checkpoint it signed for the log and signs a new one
only with an RFC 9162 consistency proof from it (crypto_jail/witness.py). Every checkpoint of
one log that a process signs goes through its :class:`CheckpointWitness` — the store's own
(every 100 entries, 60 s, open and close) and, in the directory, the per-grant ones signed
from its proof tree — so they are signed one at a time, each with a proof from the last one
the signer witnessed, whoever asked for it. The caller supplies the proof (from the store's
block index, or from the directory's tree): a few cached subtree roots either way.

When another process signed a newer checkpoint of the same log meanwhile (``openred directory
revoke`` beside the server, a second writer), the signer refuses the proof: this process asks
it which checkpoint it holds and tries once more from that one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence

from openred.crypto.identity import EntryHash, Signature, SignKey
from openred.errors import CheckpointError, StoreError
from openred.store.checkpoint import Checkpoint, parse_checkpoint_body, sign_checkpoint
from openred.store.signer import Signer, WitnessedSigner

__all__ = ["CheckpointWitness", "Prover", "RootAt", "WitnessAhead"]

Prover = Callable[[int], Awaitable[list[bytes]]]
"""The consistency proof from the tree of the given size to the checkpoint being signed."""

RootAt = Callable[[int], Awaitable[bytes | None]]
"""The caller's own root of the tree of the given size, or None if it does not hold it."""


class WitnessAhead(StoreError):
    """The signer holds a larger checkpoint of the log than the one asked for, and the caller
    cannot show it is of its own tree (its process has not read another writer's entries)."""

    def __init__(self, origin: str, held: int, size: int) -> None:
        super().__init__(
            f"the signer signed a checkpoint of {origin} at size {held}, beyond {size}: not "
            "this log's, or entries another writer appended are not read yet")
        self.held = held


class CheckpointWitness:
    """What this process knows of the checkpoint its signer witnessed for one log."""

    def __init__(self) -> None:
        # (size, root) of the newest checkpoint the signer is known to hold; None: ask it.
        self.held: tuple[int, bytes] | None = None
        self._lock = asyncio.Lock()

    async def ask(self, signer: WitnessedSigner, origin: str) -> tuple[int, bytes] | None:
        """Ask the signer which checkpoint of ``origin`` it holds (and remember it)."""
        body = await signer.witnessed_checkpoint(origin)
        if body is None:
            self.held = None
            return None
        try:
            held = parse_checkpoint_body(body)
        except (CheckpointError, UnicodeDecodeError) as exc:
            raise StoreError(f"the signer's witnessed checkpoint is malformed: {exc}") from None
        if held.origin != origin:
            raise StoreError(f"the signer's witnessed checkpoint is of {held.origin}, "
                             f"not {origin}")
        self.held = (held.size, held.root_hash)
        return self.held

    async def sign(
        self, checkpoint: Checkpoint, signer: Signer, prove: Prover, *,
        newer: RootAt | None = None,
    ) -> tuple[Checkpoint, bytes]:
        """Sign ``checkpoint`` proven an extension of the witnessed one; (checkpoint, note).

        A signer that keeps no witness signs it as it is. When the signer already holds a
        larger checkpoint of this log, ``newer`` (if given) is asked for the caller's root at
        that size: if it is the witnessed root, that checkpoint is signed (again) instead and
        returned — it covers everything ``checkpoint`` did; otherwise StoreError.
        """
        origin = checkpoint.origin
        if not isinstance(signer, WitnessedSigner):
            return checkpoint, await sign_checkpoint(checkpoint, origin, signer)
        async with self._lock:
            try:
                return await self._sign(checkpoint, signer, prove, newer)
            except WitnessAhead:
                raise  # the signer was just asked: asking again changes nothing
            except Exception:
                used = self.held
                await self.ask(signer, origin)
                if self.held == used:
                    raise
            try:
                return await self._sign(checkpoint, signer, prove, newer)
            except Exception:
                self.held = None  # asked again next time
                raise

    async def _sign(
        self, checkpoint: Checkpoint, signer: WitnessedSigner, prove: Prover,
        newer: RootAt | None,
    ) -> tuple[Checkpoint, bytes]:
        origin, size = checkpoint.origin, checkpoint.size
        if self.held is None or self.held[0] > size:
            await self.ask(signer, origin)
        held = self.held
        if held is not None and held[0] > size:
            if newer is None or await newer(held[0]) != held[1]:
                raise WitnessAhead(origin, held[0], size)
            checkpoint = Checkpoint(origin=origin, size=held[0], root_hash=held[1])
            size = held[0]
        old = held[0] if held is not None else 0
        proof = await prove(old) if 0 < old < size else []
        note = await sign_checkpoint(checkpoint, origin, _Extending(signer, proof))
        self.held = (size, checkpoint.root_hash)
        return checkpoint, note


class _Extending:
    """A witnessed signer whose checkpoint signatures carry one consistency proof."""

    def __init__(self, signer: WitnessedSigner, proof: Sequence[bytes]) -> None:
        self._signer = signer
        self._proof = proof

    @property
    def sign_key(self) -> SignKey:
        return self._signer.sign_key

    async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        return await self._signer.sign_entry_hashes(hashes)

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        return await self._signer.sign_checkpoint_extending(note_body, self._proof)
