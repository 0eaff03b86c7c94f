"""Message bodies at rest: envelope encryption under one data key the jail wraps once.

Wrapping every body in the jail cost a round trip per message on each side. Instead the node
holds one random 32-byte *data key*; it exists on disk only wrapped by the jail (label
``messaging:data-key``) in ``DATA_DIR/messaging-key.wrapped`` (0600, written atomically and
fsynced), and is unwrapped once per process. A body is then sealed locally::

    0x02 ‖ 24-byte random nonce ‖ XChaCha20-Poly1305(data key, body,
                                     AD = "openred/v3 message body" 0x00 ‖ message id)

so a body copied to another message id does not open, exactly like the jail's label binding.
Bodies of the earlier format (0x01, wrapped by the jail under ``message:<id>``) still open
through the jail.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from pathlib import Path
from typing import Final

import nacl.bindings
import nacl.exceptions

from openred.crypto.client import JailClient
from openred.errors import CryptoError, DecryptionFailed

__all__ = ["BODY_KEY_FILE", "BodyKey"]

BODY_KEY_FILE: Final = "messaging-key.wrapped"
KEY_LABEL: Final = "messaging:data-key"
LOCAL_FORMAT: Final = 0x02
JAIL_FORMAT: Final = 0x01
_AD_PREFIX: Final = b"openred/v3 message body\x00"
_NONCE_LEN: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_NPUBBYTES
_KEY_LEN: Final = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_KEYBYTES


def _ad(message_id: str) -> bytes:
    return _AD_PREFIX + message_id.encode("ascii")


def _write_atomically(path: Path, data: bytes) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".messaging-key.")
    try:
        os.fchmod(fd, 0o600)
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces a key another writer put there first
    except FileExistsError:
        pass
    finally:
        Path(tmp).unlink()
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


class BodyKey:
    """The node's message-body data key: created once, unwrapped by the jail once."""

    def __init__(self, jail: JailClient, path: Path | None) -> None:
        self.jail = jail
        self.path = path
        self._key: bytes | None = None
        self._lock = asyncio.Lock()

    async def key(self) -> bytes:
        if self._key is not None:
            return self._key
        async with self._lock:
            if self._key is None:
                self._key = await self._load()
        return self._key

    async def _load(self) -> bytes:
        if self.path is None:  # no data directory (tests): a key for this process only
            return os.urandom(_KEY_LEN)
        if not self.path.exists():
            wrapped = await self.jail.wrap(KEY_LABEL, os.urandom(_KEY_LEN))
            await asyncio.to_thread(_write_atomically, self.path, wrapped)
        wrapped = await asyncio.to_thread(self.path.read_bytes)
        try:
            key = await self.jail.unwrap(KEY_LABEL, wrapped)
        except DecryptionFailed as exc:
            raise CryptoError(f"{self.path} does not unwrap with this node's jail") from exc
        if len(key) != _KEY_LEN:
            raise CryptoError(f"{self.path} holds no messaging data key")
        return key

    async def seal(self, message_id: str, body: bytes) -> bytes:
        key = self._key if self._key is not None else await self.key()
        nonce = os.urandom(_NONCE_LEN)
        sealed = nacl.bindings.crypto_aead_xchacha20poly1305_ietf_encrypt(
            body, _ad(message_id), nonce, key)
        return bytes((LOCAL_FORMAT,)) + nonce + sealed

    async def open(self, message_id: str, stored: bytes) -> bytes:
        """A stored body (either format); DecryptionFailed if it was moved or tampered with."""
        if stored[:1] == bytes((JAIL_FORMAT,)):
            return await self.jail.unwrap(f"message:{message_id}", stored)
        if stored[:1] != bytes((LOCAL_FORMAT,)) or len(stored) < 1 + _NONCE_LEN:
            raise DecryptionFailed("the stored body has an unknown format")
        nonce, sealed = stored[1:1 + _NONCE_LEN], stored[1 + _NONCE_LEN:]
        try:
            return bytes(nacl.bindings.crypto_aead_xchacha20poly1305_ietf_decrypt(
                sealed, _ad(message_id), nonce, await self.key()))
        except (nacl.exceptions.CryptoError, ValueError) as exc:
            raise DecryptionFailed("the stored body does not open under this message id") from exc
