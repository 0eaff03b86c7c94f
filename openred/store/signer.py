"""The ``Signer`` port: whoever holds the log's private key signs entry hashes and checkpoints.

The store never sees a private key. :class:`InProcessSigner` holds one in this process and is for
tests, the synthetic demo and benchmarks; a node signs through the crypto jail's client, which
implements the same protocol.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol, runtime_checkable

import nacl.signing

from openred.crypto.identity import EntryHash, Signature, SignKey


@runtime_checkable
class Signer(Protocol):
    """Signs the two domain-separated structures the log needs; never arbitrary bytes."""

    @property
    def sign_key(self) -> SignKey:
        """The Ed25519 public key whose private half signs."""
        ...

    async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        """Ed25519-sign each 32-byte entry hash, in order, in one call."""
        ...

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        """Ed25519-sign the text of a C2SP checkpoint note body."""
        ...


class InProcessSigner:
    """A :class:`Signer` holding an Ed25519 key in this process (tests, demo, benchmarks)."""

    def __init__(self, key: nacl.signing.SigningKey) -> None:
        self._key = key
        self._public = SignKey(bytes(key.verify_key))

    @classmethod
    def generate(cls) -> InProcessSigner:
        return cls(nacl.signing.SigningKey.generate())

    @classmethod
    def from_seed(cls, seed: bytes) -> InProcessSigner:
        return cls(nacl.signing.SigningKey(seed))

    @property
    def sign_key(self) -> SignKey:
        return self._public

    def sign_entry_hashes_sync(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        sign = self._key.sign
        out: list[Signature] = []
        for h in hashes:
            if len(h) != 32:
                raise ValueError("an entry hash is 32 bytes")
            out.append(Signature(sign(h).signature))
        return out

    async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        return self.sign_entry_hashes_sync(hashes)

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        return Signature(self._key.sign(note_body).signature)
