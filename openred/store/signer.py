"""The ``Signer`` port: whoever holds the log's private key signs entry hashes and checkpoints.

The store never sees a private key. :class:`InProcessSigner` holds one in this process and is for
tests, the synthetic demo and benchmarks; a node signs through the crypto jail's client, which
implements the same protocol.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Protocol, runtime_checkable

import nacl.bindings
import nacl.signing

from openred.crypto.identity import EntryHash, Signature, SignKey


class SignInThreadUnavailable(Exception):
    """A signer's synchronous ``sign_entry_hashes_sync`` cannot sign right now.

    Raised by a signer whose key is elsewhere (the jail) when it cannot reach it from the
    store's write thread; the store then signs the same hashes through the async
    ``sign_entry_hashes`` (which may wait for, or restart, the key holder). Nothing was signed.
    """


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


@runtime_checkable
class WitnessedSigner(Signer, Protocol):
    """A signer that remembers the newest checkpoint it signed per origin (the crypto jail with
    ``--witness-file``) and signs a new one only with a consistency proof from it."""

    async def witnessed_checkpoint(self, origin: str) -> bytes | None:
        """The newest checkpoint body signed for ``origin``; None when none (or no witness)."""
        ...

    async def sign_checkpoint_extending(
        self, note_body: bytes, consistency_proof: Sequence[bytes]
    ) -> Signature:
        """Sign ``note_body``, proven an extension of the witnessed checkpoint."""
        ...


# Below this many hashes a batch is signed in the calling thread: handing work to another thread
# costs more than it saves. Above it the batch is split over up to _MAX_THREADS threads, which
# run at once because libsodium's signing releases the GIL (PyNaCl calls it through cffi).
_PARALLEL_MIN = 128
_MAX_THREADS = 4
# Batches of at least this many hashes are signed off the event loop (about 25 µs each): a
# group commit of hundreds must not hold the loop for milliseconds.
_OFF_LOOP_MIN = 16
_pool: ThreadPoolExecutor | None = None
_pool_lock = threading.Lock()


def _signing_threads() -> int:
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    return max(1, min(_MAX_THREADS, cores))


def _shared_pool(workers: int) -> ThreadPoolExecutor:
    global _pool
    with _pool_lock:
        if _pool is None:
            _pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="openred-sign")
        return _pool


class InProcessSigner:
    """A :class:`Signer` holding an Ed25519 key in this process (tests, demo, benchmarks)."""

    def __init__(self, key: nacl.signing.SigningKey) -> None:
        self._key = key
        self._public = SignKey(bytes(key.verify_key))
        # libsodium's 64-byte secret key (seed ‖ public key), derived once for the batch path.
        _pk, self._secret = nacl.bindings.crypto_sign_seed_keypair(bytes(key))

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
        for h in hashes:
            if len(h) != 32:
                raise ValueError("an entry hash is 32 bytes")
        threads = _signing_threads() if len(hashes) >= _PARALLEL_MIN else 1
        if threads == 1:
            return self._sign_all(hashes)
        step = -(-len(hashes) // threads)
        chunks = [hashes[i:i + step] for i in range(0, len(hashes), step)]
        pool = _shared_pool(threads)
        rest = [pool.submit(self._sign_all, chunk) for chunk in chunks[1:]]
        out = self._sign_all(chunks[0])
        for future in rest:
            out.extend(future.result())
        return out

    def _sign_all(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        sign, secret = nacl.bindings.crypto_sign, self._secret
        # crypto_sign returns signature ‖ message; the signature is the first 64 bytes.
        return [Signature(sign(h, secret)[:64]) for h in hashes]

    async def sign_entry_hashes(self, hashes: Sequence[EntryHash]) -> list[Signature]:
        if len(hashes) < _OFF_LOOP_MIN:
            return self.sign_entry_hashes_sync(hashes)
        return await asyncio.to_thread(self.sign_entry_hashes_sync, hashes)

    async def sign_checkpoint(self, note_body: bytes) -> Signature:
        return Signature(self._key.sign(note_body).signature)
