"""The Noise Protocol Framework (revision 34) for the KK and KKpsk0 patterns over Curve25519.

Generic over the cipher (ChaChaPoly, AESGCM) and hash (SHA256, SHA512, BLAKE2s, BLAKE2b)
functions; every primitive comes from ``cryptography`` (X25519, ChaCha20-Poly1305, AES-GCM) or
the standard library (hashlib, hmac), composed exactly as the specification says.

The static key is any :class:`DH`: the handshake only ever calls ``s.dh(...)`` and reads
``s.public``, so the crypto jail can hand in an object whose private key the caller never sees.

Every failure (a malformed or tampered message, a failed decryption, a low-order point, a wrong
length, use after failure) raises :class:`NoiseError`; no ``cryptography`` or ``ValueError``
escapes this module.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    NoEncryption,
    PrivateFormat,
    PublicFormat,
)

__all__ = [
    "DH",
    "DHLEN",
    "MAX_MESSAGE_LEN",
    "MAX_NONCE",
    "PATTERNS",
    "SUITES",
    "TAGLEN",
    "AeadKey",
    "CipherFunction",
    "CipherState",
    "HandshakeState",
    "HashFunction",
    "NoiseError",
    "Suite",
    "SymmetricState",
    "X25519KeyPair",
    "protocol_name",
]

DHLEN = 32
KEYLEN = 32
TAGLEN = 16
PSKLEN = 32
MAX_MESSAGE_LEN = 65535  # Noise §3: every message is at most 65535 bytes
MAX_NONCE = 2**64 - 1  # Noise §5.1: reserved, never used to encrypt
_ZERO32 = bytes(32)


class NoiseError(Exception):
    """A Noise operation failed; the message never reveals secret material."""


# --- DH functions (Noise §4.1, §12.1) -------------------------------------------------------


@runtime_checkable
class DH(Protocol):
    """A Curve25519 key pair whose private half may live out of reach (e.g. in the jail)."""

    @property
    def public(self) -> bytes:
        """The 32-byte X25519 public key."""
        ...

    def dh(self, remote_public: bytes) -> bytes:
        """X25519 with ``remote_public``; raises NoiseError on a bad length or all-zero result."""
        ...


class X25519KeyPair:
    """An X25519 key pair held in this object; implements :class:`DH`."""

    __slots__ = ("_private", "_public")

    def __init__(self, private: X25519PrivateKey) -> None:
        self._private = private
        self._public = private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)

    @classmethod
    def generate(cls) -> X25519KeyPair:
        """A fresh key pair from the operating system's CSPRNG (Noise GENERATE_KEYPAIR)."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> X25519KeyPair:
        """The key pair for a 32-byte raw private key."""
        if len(raw) != DHLEN:
            raise NoiseError(f"X25519 private key must be {DHLEN} bytes, got {len(raw)}")
        try:
            return cls(X25519PrivateKey.from_private_bytes(bytes(raw)))
        except ValueError as exc:
            raise NoiseError("unusable X25519 private key") from exc

    def private_bytes(self) -> bytes:
        """The 32-byte raw private key (only the jail and test vectors need this)."""
        return self._private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())

    @property
    def public(self) -> bytes:
        return self._public

    def dh(self, remote_public: bytes) -> bytes:
        """X25519(private, remote_public) per RFC 7748 §5; refuses an all-zero output (§6.1)."""
        if len(remote_public) != DHLEN:
            raise NoiseError(f"X25519 public key must be {DHLEN} bytes, got {len(remote_public)}")
        try:
            shared = self._private.exchange(X25519PublicKey.from_public_bytes(bytes(remote_public)))
        except ValueError as exc:  # OpenSSL refuses an all-zero shared secret itself
            raise NoiseError("X25519 with a low-order point") from exc
        if hmac.compare_digest(shared, _ZERO32):  # RFC 7748 §6.1; Noise §12.1 allows the check
            raise NoiseError("X25519 with a low-order point")
        return shared


# --- Cipher functions (Noise §4.2, §12.3, §12.4) --------------------------------------------

_Aead = ChaCha20Poly1305 | AESGCM


@functools.cache
def _nonce_struct(fmt: str) -> struct.Struct:
    return struct.Struct(fmt)


@dataclass(frozen=True)
class CipherFunction:
    """A Noise cipher: an AEAD with a 256-bit key and the 96-bit nonce it builds from ``n``."""

    name: str
    aead_class: type[ChaCha20Poly1305] | type[AESGCM]
    # struct format of the nonce: 32 zero bits, then n as 64 bits little-endian for ChaChaPoly
    # (§12.3), big-endian for AESGCM (§12.4)
    nonce_format: str

    @property
    def pack_nonce(self) -> Callable[[int], bytes]:
        """``n -> 12-byte nonce`` as one C call (hot paths keep a reference to it)."""
        return _nonce_struct(self.nonce_format).pack

    def nonce(self, n: int) -> bytes:
        """The 12-byte AEAD nonce for the 64-bit counter ``n``."""
        return _nonce_struct(self.nonce_format).pack(n)

    def key(self, k: bytes) -> AeadKey:
        """The AEAD keyed with the 32-byte ``k``."""
        return AeadKey(self, k)


CHACHAPOLY = CipherFunction("ChaChaPoly", ChaCha20Poly1305, "<4xQ")
AESGCM_CIPHER = CipherFunction("AESGCM", AESGCM, ">4xQ")


def _nonce(cipher: CipherFunction, n: int) -> bytes:
    if not 0 <= n <= MAX_NONCE:
        raise NoiseError("nonce out of range")
    return cipher.nonce(n)


class AeadKey:
    """One cipher keyed once: ENCRYPT/DECRYPT of Noise §4.2, every failure a NoiseError."""

    __slots__ = ("aead", "cipher", "key")

    def __init__(self, cipher: CipherFunction, key: bytes) -> None:
        if len(key) != KEYLEN:
            raise NoiseError(f"{cipher.name} key must be {KEYLEN} bytes, got {len(key)}")
        self.cipher = cipher
        self.key = bytes(key)
        # Built once per key: constructing the AEAD object is the costly part of a small seal.
        self.aead: _Aead = cipher.aead_class(self.key)

    def seal(self, nonce: bytes, ad: bytes, plaintext: bytes) -> bytes:
        """Encrypt under a raw 12-byte nonce; returns ciphertext ‖ 16-byte tag."""
        if len(nonce) != 12:
            raise NoiseError(f"{self.cipher.name} nonce must be 12 bytes, got {len(nonce)}")
        try:
            return self.aead.encrypt(nonce, plaintext, ad)
        except (ValueError, OverflowError) as exc:
            raise NoiseError("encryption failed") from exc

    def open(self, nonce: bytes, ad: bytes, ciphertext: bytes) -> bytes:
        """Decrypt and authenticate under a raw 12-byte nonce."""
        if len(nonce) != 12:
            raise NoiseError(f"{self.cipher.name} nonce must be 12 bytes, got {len(nonce)}")
        if len(ciphertext) < TAGLEN:
            raise NoiseError("decryption failed")
        try:
            return self.aead.decrypt(nonce, ciphertext, ad)
        except (InvalidTag, ValueError, OverflowError) as exc:
            raise NoiseError("decryption failed") from exc

    def encrypt(self, n: int, ad: bytes, plaintext: bytes) -> bytes:
        """Noise ENCRYPT(k, n, ad, plaintext)."""
        return self.seal(_nonce(self.cipher, n), ad, plaintext)

    def decrypt(self, n: int, ad: bytes, ciphertext: bytes) -> bytes:
        """Noise DECRYPT(k, n, ad, ciphertext)."""
        return self.open(_nonce(self.cipher, n), ad, ciphertext)

    def rekey(self) -> bytes:
        """Noise REKEY(k) (§4.2): the first 32 bytes of ENCRYPT(k, 2^64-1, "", zeros)."""
        return self.encrypt(MAX_NONCE, b"", _ZERO32)[:KEYLEN]


# --- Hash functions (Noise §4.3, §12.5-12.8) ------------------------------------------------


class _Digest(Protocol):
    def digest(self) -> bytes: ...


@dataclass(frozen=True)
class HashFunction:
    """A Noise hash with its HMAC and the Noise HKDF built on it."""

    name: str
    hashlen: int
    openssl_name: str
    constructor: Callable[[bytes], _Digest]

    def hash(self, data: bytes) -> bytes:
        """HASH(data)."""
        return self.constructor(data).digest()

    def hmac(self, key: bytes, data: bytes) -> bytes:
        """HMAC-HASH(key, data) (RFC 2104)."""
        return hmac.digest(key, data, self.openssl_name)

    def hkdf(self, chaining_key: bytes, ikm: bytes, outputs: int) -> tuple[bytes, ...]:
        """Noise HKDF (§4.3): 2 or 3 outputs of HASHLEN bytes (RFC 5869 with empty info)."""
        temp_key = self.hmac(chaining_key, ikm)
        out1 = self.hmac(temp_key, b"\x01")
        out2 = self.hmac(temp_key, out1 + b"\x02")
        if outputs == 2:
            return out1, out2
        return out1, out2, self.hmac(temp_key, out2 + b"\x03")


SHA256 = HashFunction("SHA256", 32, "sha256", hashlib.sha256)
SHA512 = HashFunction("SHA512", 64, "sha512", hashlib.sha512)
BLAKE2S = HashFunction("BLAKE2s", 32, "blake2s", hashlib.blake2s)
BLAKE2B = HashFunction("BLAKE2b", 64, "blake2b", hashlib.blake2b)


@dataclass(frozen=True)
class Suite:
    """One Noise suite: ``25519_<cipher>_<hash>``."""

    cipher: CipherFunction
    hash: HashFunction

    @property
    def name(self) -> str:
        return f"25519_{self.cipher.name}_{self.hash.name}"


SUITES: dict[str, Suite] = {
    s.name: s
    for s in (
        Suite(c, h)
        for c in (CHACHAPOLY, AESGCM_CIPHER)
        for h in (SHA256, SHA512, BLAKE2S, BLAKE2B)
    )
}

PATTERNS = ("KK", "KKpsk0")

# Noise §7.5 KK and §9.4 KKpsk0; pre-messages for both: -> s, <- s.
_MESSAGES: dict[str, tuple[tuple[str, ...], ...]] = {
    "KK": (("e", "es", "ss"), ("e", "ee", "se")),
    "KKpsk0": (("psk", "e", "es", "ss"), ("e", "ee", "se")),
}


def protocol_name(pattern: str, suite: str) -> bytes:
    """The Noise protocol name, e.g. ``b"Noise_KKpsk0_25519_ChaChaPoly_SHA256"`` (§8)."""
    if pattern not in _MESSAGES:
        raise NoiseError(f"unsupported handshake pattern {pattern!r}")
    if suite not in SUITES:
        raise NoiseError(f"unsupported suite {suite!r}")
    return f"Noise_{pattern}_{suite}".encode("ascii")


def _suite(name: str) -> Suite:
    try:
        return SUITES[name]
    except KeyError:
        raise NoiseError(f"unsupported suite {name!r}") from None


# --- CipherState (Noise §5.1) ---------------------------------------------------------------


class CipherState:
    """A key (possibly empty) and the implicit 64-bit nonce n (Noise §5.1)."""

    __slots__ = ("_aead", "cipher", "n")

    def __init__(self, cipher: CipherFunction, key: bytes | None = None, n: int = 0) -> None:
        self.cipher = cipher
        self._aead: AeadKey | None = None if key is None else cipher.key(key)
        self.n = n

    def initialize_key(self, key: bytes | None) -> None:
        """InitializeKey(key): set the key and reset n to zero."""
        self._aead = None if key is None else self.cipher.key(key)
        self.n = 0

    def has_key(self) -> bool:
        return self._aead is not None

    @property
    def key(self) -> bytes:
        """The 32-byte key (for exporting Split keys to a session); NoiseError if empty."""
        if self._aead is None:
            raise NoiseError("cipher state has no key")
        return self._aead.key

    def set_nonce(self, n: int) -> None:
        if not 0 <= n <= MAX_NONCE:
            raise NoiseError("nonce out of range")
        self.n = n

    def encrypt_with_ad(self, ad: bytes, plaintext: bytes) -> bytes:
        """EncryptWithAd: the plaintext itself while no key is set."""
        if self._aead is None:
            return bytes(plaintext)
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        ciphertext = self._aead.encrypt(self.n, ad, plaintext)
        self.n += 1
        return ciphertext

    def decrypt_with_ad(self, ad: bytes, ciphertext: bytes) -> bytes:
        """DecryptWithAd: n advances only when authentication succeeds."""
        if self._aead is None:
            return bytes(ciphertext)
        if self.n >= MAX_NONCE:
            raise NoiseError("nonce exhausted")
        plaintext = self._aead.decrypt(self.n, ad, ciphertext)
        self.n += 1
        return plaintext

    def rekey(self) -> None:
        """Rekey(): k = REKEY(k), n unchanged (§4.2, §11.3)."""
        if self._aead is None:
            raise NoiseError("cipher state has no key")
        self._aead = self.cipher.key(self._aead.rekey())


# --- SymmetricState (Noise §5.2) ------------------------------------------------------------


class SymmetricState:
    """The chaining key ck and handshake hash h, with the cipher state they key."""

    __slots__ = ("ck", "cs", "h", "suite")

    def __init__(self, suite: Suite, name: bytes) -> None:
        self.suite = suite
        hashlen = suite.hash.hashlen
        # InitializeSymmetric: pad a short name with zeros, otherwise hash it.
        self.h = name.ljust(hashlen, b"\x00") if len(name) <= hashlen else suite.hash.hash(name)
        self.ck = self.h
        self.cs = CipherState(suite.cipher)

    def mix_key(self, ikm: bytes) -> None:
        self.ck, temp_k = self.suite.hash.hkdf(self.ck, ikm, 2)
        self.cs.initialize_key(temp_k[:KEYLEN])  # truncate for HASHLEN 64

    def mix_hash(self, data: bytes) -> None:
        self.h = self.suite.hash.hash(self.h + data)

    def mix_key_and_hash(self, ikm: bytes) -> None:
        self.ck, temp_h, temp_k = self.suite.hash.hkdf(self.ck, ikm, 3)
        self.mix_hash(temp_h)
        self.cs.initialize_key(temp_k[:KEYLEN])

    def encrypt_and_hash(self, plaintext: bytes) -> bytes:
        ciphertext = self.cs.encrypt_with_ad(self.h, plaintext)
        self.mix_hash(ciphertext)
        return ciphertext

    def decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        plaintext = self.cs.decrypt_with_ad(self.h, ciphertext)
        self.mix_hash(ciphertext)
        return plaintext

    def split(self) -> tuple[CipherState, CipherState]:
        k1, k2 = self.suite.hash.hkdf(self.ck, b"", 2)
        cipher = self.suite.cipher
        return CipherState(cipher, k1[:KEYLEN]), CipherState(cipher, k2[:KEYLEN])


# --- HandshakeState (Noise §5.3) ------------------------------------------------------------


class HandshakeState:
    """One side of a KK or KKpsk0 handshake.

    ``s`` is the local static key (any :class:`DH`), ``rs`` the remote static public key, both
    known beforehand (KK pre-messages ``-> s`` and ``<- s``, Noise §7.5). ``e`` may be injected
    for test vectors; otherwise a fresh ephemeral is generated when the ``e`` token is written.
    After any failure the state is dead: every later call raises :class:`NoiseError`.
    """

    def __init__(
        self,
        *,
        pattern: str,
        suite: str,
        initiator: bool,
        prologue: bytes,
        s: DH,
        rs: bytes,
        psk: bytes | None = None,
        e: DH | None = None,
    ) -> None:
        name = protocol_name(pattern, suite)
        if len(rs) != DHLEN:
            raise NoiseError(f"remote static key must be {DHLEN} bytes, got {len(rs)}")
        has_psk_token = pattern.endswith("psk0")
        if has_psk_token and (psk is None or len(psk) != PSKLEN):
            raise NoiseError(f"pattern {pattern} needs a {PSKLEN}-byte PSK")
        if not has_psk_token and psk is not None:
            raise NoiseError(f"pattern {pattern} takes no PSK")
        self._ss = SymmetricState(_suite(suite), name)
        self._initiator = initiator
        self._s = s
        self._rs = bytes(rs)
        self._e = e
        self._re: bytes | None = None
        self._psk = None if psk is None else bytes(psk)
        self._psk_mode = has_psk_token
        self._messages = _MESSAGES[pattern]
        self._index = 0
        self._failed = False
        self._result: tuple[CipherState, CipherState] | None = None
        self._ss.mix_hash(bytes(prologue))
        # Pre-messages: the initiator's static first, then the responder's (Noise §7.1).
        first, second = (s.public, self._rs) if initiator else (self._rs, s.public)
        self._ss.mix_hash(first)
        self._ss.mix_hash(second)

    @property
    def complete(self) -> bool:
        """True once every handshake message has been written or read."""
        return self._result is not None

    @property
    def handshake_hash(self) -> bytes:
        """The final h (channel binding, Noise §11.2); only after completion."""
        self._check_alive()
        if self._result is None:
            raise NoiseError("handshake not complete")
        return self._ss.h

    @property
    def is_initiator(self) -> bool:
        return self._initiator

    @property
    def remote_static(self) -> bytes:
        return self._rs

    def split(self) -> tuple[CipherState, CipherState]:
        """(initiator→responder, responder→initiator) transport cipher states (Noise §5.2)."""
        self._check_alive()
        if self._result is None:
            raise NoiseError("handshake not complete")
        return self._result

    def write_message(self, payload: bytes = b"") -> bytes:
        """WriteMessage: the next handshake message carrying ``payload``."""
        self._check_turn(writing=True)
        try:
            return self._write(payload)
        except NoiseError:
            self._failed = True
            raise
        except Exception as exc:  # a DH object from outside may raise anything
            self._failed = True
            raise NoiseError("handshake write failed") from exc

    def read_message(self, message: bytes) -> bytes:
        """ReadMessage: process the peer's handshake message; returns its payload."""
        self._check_turn(writing=False)
        try:
            return self._read(bytes(message))
        except NoiseError:
            self._failed = True
            raise
        except Exception as exc:
            self._failed = True
            raise NoiseError("handshake read failed") from exc

    # -- internals --

    def _check_alive(self) -> None:
        if self._failed:
            raise NoiseError("handshake state is unusable after a failure")

    def _check_turn(self, *, writing: bool) -> None:
        self._check_alive()
        if self._result is not None:
            raise NoiseError("handshake already complete")
        initiator_turn = self._index % 2 == 0
        if writing != (initiator_turn == self._initiator):
            self._failed = True
            raise NoiseError("out-of-turn handshake message")

    def _dh(self, op: str) -> bytes:
        # Noise §5.3: which keys each DH token combines depends on the role.
        if op == "ee":
            return self._local_e().dh(self._remote_e())
        if op == "ss":
            return self._s.dh(self._rs)
        if (op == "es") == self._initiator:  # initiator "es", responder "se"
            return self._local_e().dh(self._rs)
        return self._s.dh(self._remote_e())

    def _local_e(self) -> DH:
        if self._e is None:
            raise NoiseError("no local ephemeral key")
        return self._e

    def _remote_e(self) -> bytes:
        if self._re is None:
            raise NoiseError("no remote ephemeral key")
        return self._re

    def _write(self, payload: bytes) -> bytes:
        out = bytearray()
        for op in self._messages[self._index]:
            if op == "e":
                if self._e is None:
                    self._e = X25519KeyPair.generate()
                epub = self._e.public
                out += epub
                self._ss.mix_hash(epub)
                if self._psk_mode:
                    self._ss.mix_key(epub)  # Noise §9.2
            elif op == "psk":
                self._ss.mix_key_and_hash(self._psk_bytes())
            else:
                self._ss.mix_key(self._dh(op))
        out += self._ss.encrypt_and_hash(bytes(payload))
        if len(out) > MAX_MESSAGE_LEN:
            raise NoiseError(f"handshake message exceeds {MAX_MESSAGE_LEN} bytes")
        self._advance()
        return bytes(out)

    def _read(self, message: bytes) -> bytes:
        if len(message) > MAX_MESSAGE_LEN:
            raise NoiseError(f"handshake message exceeds {MAX_MESSAGE_LEN} bytes")
        tokens = self._messages[self._index]
        minimum = DHLEN * tokens.count("e") + (TAGLEN if self._will_have_key(tokens) else 0)
        if len(message) < minimum:
            raise NoiseError(f"handshake message too short: need {minimum}, got {len(message)}")
        offset = 0
        for op in tokens:
            if op == "e":
                self._re = message[offset : offset + DHLEN]
                offset += DHLEN
                self._ss.mix_hash(self._re)
                if self._psk_mode:
                    self._ss.mix_key(self._re)
            elif op == "psk":
                self._ss.mix_key_and_hash(self._psk_bytes())
            else:
                self._ss.mix_key(self._dh(op))
        payload = self._ss.decrypt_and_hash(message[offset:])
        self._advance()
        return payload

    def _will_have_key(self, tokens: tuple[str, ...]) -> bool:
        return self._ss.cs.has_key() or any(t != "e" for t in tokens) or self._psk_mode

    def _psk_bytes(self) -> bytes:
        if self._psk is None:
            raise NoiseError("no PSK")
        return self._psk

    def _advance(self) -> None:
        self._index += 1
        if self._index == len(self._messages):
            self._result = self._ss.split()
