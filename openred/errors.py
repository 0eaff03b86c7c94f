"""The one exception tree of OpenRed.

Every error the product raises on purpose derives from :class:`OpenRedError`; third-party
exceptions (sqlite3, PyNaCl, cryptography, sockets) are translated at the adapter that meets
them, with ``raise New(...) from exc``::

    OpenRedError
    ├── ConfigurationError          bad settings, missing files, unusable paths
    │   └── ModuleLoadError         an OpenRed module could not be loaded or registered
    ├── ServiceBusy                 temporarily out of capacity; retry later (HTTP 503)
    │   └── NonceCacheFull          the RFC 9421 nonce cache (or one signer's quota) is full
    ├── StoreError                  the event store could not do what was asked
    │   ├── ConcurrencyConflict     UNIQUE(stream, stream_version) refused a stale writer
    │   ├── StoreClosed             the store was used after close()
    │   ├── StoreUnavailable        the database is busy, full or failing I/O (cause attached)
    │   └── SchemaError             the database schema is missing, newer than the code, or broken
    ├── VerificationError           something signed or chained does not check out
    │   ├── TamperedLog             a log entry fails verification (carries seq and reason)
    │   ├── InvalidSignature        an Ed25519 signature does not verify
    │   ├── ProofError              a Merkle inclusion or consistency proof is wrong
    │   ├── CheckpointError         a checkpoint note is malformed or its signature is wrong
    │   ├── ForkDetected            two signed checkpoints of one log are inconsistent (evidence)
    │   └── TransparencyError       a grant's log entry, proof or checkpoint does not match it
    ├── CryptoError                 a cryptographic operation failed (reveals nothing more)
    │   ├── InvalidKey              wrong length, low-order point, unparseable key
    │   ├── TokenMismatch           the two halves of a grant do not belong together
    │   ├── HandshakeFailed         a Noise handshake failed (bad message, wrong PSK, wrong key)
    │   ├── DecryptionFailed        an AEAD open failed
    │   ├── ReplayDetected          a transport counter was seen before or is below the window
    │   ├── RequestSignatureError   an RFC 9421 signature is missing, bad, stale or replayed
    │   └── UnknownSuite            a cipher suite or selection mode nobody registered
    └── JailError                   talking to the crypto jail failed
        ├── JailUnavailable         the jail is not running and could not be (re)started
        ├── JailProtocolError       a frame was malformed or too large
        │   └── JailIdentityChanged     the socket answers with keys other than the jail's
        └── JailRefused             the jail answered with an error for this request
            ├── JailHandshakeFailed     … a handshake message (also a HandshakeFailed)
            └── JailDecryptionFailed    … a sealed or wrapped value (also a DecryptionFailed)
    ├── UnsafeUrl                   a URL is not http(s) with a host, or points where it must not
    ├── TransportError              an outbound HTTP call failed
    │   ├── PeerUnreachable         … refused, timed out or answered 5xx after the retries
    │   └── NodeNotRunning          the CLI found no running node's admin API in the data dir
    └── RequestRefused              a service refuses a request (carries status and problem slug)
        └── NodeRefused             … a node service (its ``reason`` is the slug)
"""

from __future__ import annotations

import math


class OpenRedError(Exception):
    """Root of every error OpenRed raises on purpose."""


class ConfigurationError(OpenRedError):
    """Settings or files needed to run are missing or unusable."""


class ServiceBusy(OpenRedError):
    """A bounded resource is full for now; the request may succeed later (HTTP 503)."""


class NonceCacheFull(ServiceBusy):
    """The nonce cache cannot remember another nonce (of this signer) until entries expire.

    Not a :class:`RequestSignatureError`: the signature was fine, the verifier is busy.
    """


class StoreError(OpenRedError):
    """The event store could not complete an operation."""


class ConcurrencyConflict(StoreError):
    """Another writer already appended at this (stream, stream_version)."""


class StoreClosed(StoreError):
    """The store was used after it was closed."""


class StoreUnavailable(StoreError):
    """The database could not be written or read now: busy, disk full, I/O error.

    The SQLite error is attached as ``__cause__``; nothing was acknowledged, so retrying later
    is safe.
    """


class SchemaError(StoreError):
    """The database schema is missing, newer than this code, or damaged."""


class VerificationError(OpenRedError):
    """Signed or chained data does not verify."""


class TamperedLog(VerificationError):
    """A log entry fails verification; ``seq`` names the first bad entry."""

    def __init__(self, seq: int, reason: str) -> None:
        super().__init__(f"entry {seq}: {reason}")
        self.seq = seq
        self.reason = reason


class InvalidSignature(VerificationError):
    """An Ed25519 signature does not verify under the given key."""


class ProofError(VerificationError):
    """A Merkle inclusion or consistency proof does not verify."""


class CheckpointError(VerificationError):
    """A checkpoint note is malformed or not signed by the expected key."""


class CryptoError(OpenRedError):
    """A cryptographic operation failed; the message never reveals secret material."""


class InvalidKey(CryptoError):
    """A key has the wrong length or is otherwise unusable (e.g. a low-order point)."""


class TokenMismatch(CryptoError):
    """The two tokens presented do not belong to the same grant."""


class HandshakeFailed(CryptoError):
    """A Noise handshake failed."""


class DecryptionFailed(CryptoError):
    """Authenticated decryption failed."""


class ReplayDetected(CryptoError):
    """A transport message counter was already seen or is below the replay window."""


class RequestSignatureError(CryptoError):
    """An RFC 9421 request signature is missing, invalid, outside its window or replayed."""


class UnknownSuite(CryptoError):
    """A cipher suite or selection mode that no one registered."""


class JailError(OpenRedError):
    """Talking to the crypto jail failed."""


class JailUnavailable(JailError):
    """The jail is not running and could not be started."""


class JailProtocolError(JailError):
    """A jail frame was malformed or too large."""


class JailIdentityChanged(JailProtocolError):
    """The jail's socket answers with public keys other than the ones the client started with
    (a jail restarted on another keystore, or another process on its socket)."""


class JailRefused(JailError):
    """The jail answered this request with an error."""

    def __init__(self, code: str, detail: str) -> None:
        super().__init__(f"{code}: {detail}")
        self.code = code
        self.detail = detail


class JailHandshakeFailed(JailRefused, HandshakeFailed):
    """The jail refused a handshake message (wrong token, key, grant, or tampered message)."""


class JailDecryptionFailed(JailRefused, DecryptionFailed):
    """The jail could not open a sealed or wrapped value."""


class ForkDetected(VerificationError):
    """Two checkpoints signed by the same log key cannot both be true: the log forked.

    Carries both signed notes, so the caller can keep them as evidence.
    """

    def __init__(self, detail: str, *, held: bytes, received: bytes) -> None:
        super().__init__(detail)
        self.held = held
        self.received = received


class TransparencyError(VerificationError):
    """A grant's log entry, inclusion proof or checkpoint does not prove what it must."""


class UnsafeUrl(OpenRedError):
    """A URL is not http(s) with a host, or names an address this service must not call."""


class TransportError(OpenRedError):
    """An outbound HTTP request failed."""


class PeerUnreachable(TransportError):
    """The peer refused the connection, timed out, or kept answering 5xx after retries."""


class NodeNotRunning(TransportError):
    """The CLI could not reach the node's local admin API (not started, or stopped)."""


class RequestRefused(OpenRedError):
    """A service refuses a request; becomes an RFC 9457 problem with this status and slug.

    ``retry_after`` (seconds) is sent as Retry-After (429, 503); ``extra`` adds members to the
    problem object (RFC 9457 §3.2 extension members).
    """

    def __init__(
        self, status: int, slug: str, detail: str, *, retry_after: int | None = None,
        extra: dict[str, object] | None = None,
    ) -> None:
        super().__init__(detail)
        self.status = status
        self.slug = slug
        self.detail = detail
        self.retry_after = retry_after
        self.extra = dict(extra or {})


class NodeRefused(RequestRefused):
    """A node service refused a request: ``status`` is the HTTP status, ``reason`` a stable slug.

    The node's decisions return refusals as values; services raise them as this exception, a
    :class:`RequestRefused`, so the one problem handler renders them as RFC 9457 problems.
    """

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(status, reason, detail)
        self.reason = reason

    @classmethod
    def over_budget(cls, reason: str, limits: str, wait: float) -> NodeRefused:
        """429 ``reason`` for a peer past one of its budgets (``limits`` says which): retry in
        ``wait`` seconds, rounded up, at least 1, as Retry-After and as a ``retry_after``
        member (a batched call's answer has no headers)."""
        seconds = max(1, math.ceil(wait))
        refused = cls(429, reason, f"{limits}: retry in {seconds} s")
        refused.retry_after = seconds
        refused.extra = {"retry_after": seconds}
        return refused

    def __str__(self) -> str:
        return f"{self.reason}: {self.detail}"


class ModuleLoadError(ConfigurationError):
    """An OpenRed module could not be imported, instantiated or registered."""

    def __init__(self, name: str, detail: str) -> None:
        super().__init__(f"module {name!r}: {detail}")
        self.name = name
        self.detail = detail
