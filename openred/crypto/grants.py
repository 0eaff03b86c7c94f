"""Connection grants and sealed token delivery (DESIGN §5), public-key side only.

A :class:`Grant` is what the directory signs: ``{v, grant_id, initiator, responder, issued_at,
expires_at, suite, initiator_record, responder_record}`` in RFC 8785 canonical bytes, where the
``*_record`` fields are base64url of the ``record_hash`` of the two signed node records the grant
was minted for (so a node checks its peer's key and URL against the peer's own signature).
The two token halves come from a fresh secret (:func:`mint_tokens`), each sealed to its node's
X25519 key (:func:`seal_token`, libsodium ``crypto_box_seal``); the directory delivers
``{grant, grant_signature, sealed_token}``. The directory has its own jail do both, with the
same derivation (``crypto_jail.tokens``), when it signs the grant (``JailClient.sign_grant``),
so its web process never holds a token it can read; these two functions are the reference that
tests mint grants with. Opening a sealed token happens only in the recipient's crypto jail.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NewType

import nacl.bindings
import nacl.exceptions

from crypto_jail import tokens as _jail_tokens
from crypto_jail.noise import SUITES as _SUITES
from openred.crypto.identity import BoxKey, NodeId, SignKey, b64url, from_b64url
from openred.errors import CryptoError
from openred.store.codec import canonical_json

__all__ = [
    "DEFAULT_TTL",
    "GRANT_CLOCK_SKEW",
    "GRANT_VERSION",
    "MAX_TTL",
    "SEALED_TOKEN_LEN",
    "Grant",
    "SealedToken",
    "check_sealed_token",
    "mint_tokens",
    "new_grant",
    "seal_token",
    "verify_grant_signature",
    "verify_signed_grant",
]

GRANT_VERSION = _jail_tokens.GRANT_VERSION
DEFAULT_TTL = 300
"""Seconds a grant stays usable (DESIGN §5: issued_at + 300 s by default)."""
MAX_TTL = 86400
"""The longest life a node accepts in a grant (``expires_at - issued_at``), and the longest
``OPENRED_GRANT_TTL`` a directory may be configured with: a token the directory's key minted
is usable for at most a day, whatever that key signs later (see :meth:`Grant.terms_problem`)."""
GRANT_CLOCK_SKEW = 300
"""Seconds a grant's ``issued_at`` may lie ahead of the receiving node's clock."""

SealedToken = NewType("SealedToken", bytes)
"""A 32-byte token sealed to one node's X25519 key (crypto_box_seal: 32 + 32 + 16 bytes)."""

SEALED_TOKEN_LEN = _jail_tokens.TOKEN_LEN + nacl.bindings.crypto_box_SEALBYTES


def _str(obj: Mapping[str, object], key: str) -> str:
    value = obj[key]
    assert isinstance(value, str)  # guaranteed by check_grant_fields
    return value


def _int(obj: Mapping[str, object], key: str) -> int:
    value = obj[key]
    assert isinstance(value, int)  # guaranteed by check_grant_fields
    return value


@dataclass(frozen=True, slots=True, kw_only=True)
class Grant:
    """A directory grant letting ``initiator`` open one session to ``responder`` (DESIGN §5)."""

    v: int = GRANT_VERSION
    grant_id: str
    initiator: NodeId
    responder: NodeId
    issued_at: int
    expires_at: int
    suite: str
    initiator_record: str
    responder_record: str
    _canonical: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        try:
            _jail_tokens.check_grant_fields(self.to_dict())
            object.__setattr__(self, "initiator", NodeId(self.initiator))
            object.__setattr__(self, "responder", NodeId(self.responder))
        except ValueError as exc:
            raise CryptoError(f"grant is malformed: {exc}") from exc
        # Computed once: the fields are frozen, and the hash is needed on every token check.
        # The store's canonical encoder: RFC 8785 through the standard library for plain
        # strings and safe integers (every checked grant), the rfc8785 library otherwise.
        plain = self.to_dict()
        plain["initiator"], plain["responder"] = str(self.initiator), str(self.responder)
        object.__setattr__(self, "_canonical", canonical_json(plain))

    def to_dict(self) -> dict[str, str | int]:
        """The grant as a JSON object (the wire form inside token delivery)."""
        return {
            "v": self.v,
            "grant_id": self.grant_id,
            "initiator": self.initiator,
            "responder": self.responder,
            "issued_at": self.issued_at,
            "expires_at": self.expires_at,
            "suite": self.suite,
            "initiator_record": self.initiator_record,
            "responder_record": self.responder_record,
        }

    @classmethod
    def from_dict(cls, obj: Mapping[str, object]) -> Grant:
        """Build a grant from a received JSON object; CryptoError if it is not exactly a grant."""
        try:
            _jail_tokens.check_grant_fields(obj)
        except ValueError as exc:
            raise CryptoError(f"grant is malformed: {exc}") from exc
        return cls(
            v=_int(obj, "v"),
            grant_id=_str(obj, "grant_id"),
            initiator=NodeId(_str(obj, "initiator")),
            responder=NodeId(_str(obj, "responder")),
            issued_at=_int(obj, "issued_at"),
            expires_at=_int(obj, "expires_at"),
            suite=_str(obj, "suite"),
            initiator_record=_str(obj, "initiator_record"),
            responder_record=_str(obj, "responder_record"),
        )

    @classmethod
    def from_canonical(cls, data: bytes) -> Grant:
        """Parse a grant's canonical bytes; CryptoError unless they are exactly canonical."""
        try:
            obj = _jail_tokens.check_canonical_grant(data)
        except ValueError as exc:
            raise CryptoError(f"grant is malformed: {exc}") from exc
        return cls.from_dict(obj)

    def canonical_bytes(self) -> bytes:
        """The RFC 8785 canonical JSON bytes the directory signs and both tokens are bound to."""
        return self._canonical

    @property
    def grant_hash(self) -> bytes:
        """SHA-256 of the canonical bytes (DESIGN §5)."""
        return hashlib.sha256(self._canonical).digest()

    @property
    def grant_id_bytes(self) -> bytes:
        """The 16 raw bytes of the grant id (the HKDF salt)."""
        return _jail_tokens.decode_grant_id(self.grant_id)

    def expired(self, now: int) -> bool:
        """Whether the grant can no longer be used at ``now`` (unix seconds, UTC)."""
        return now >= self.expires_at

    def terms_problem(self, now: int) -> str | None:
        """Why a node does not take this grant's terms at ``now``, or None if it does.

        The suite must be one the jail implements (DESIGN §6: both nodes check it against the
        set they allow), the grant not issued more than :data:`GRANT_CLOCK_SKEW` seconds ahead
        of ``now`` and not living longer than :data:`MAX_TTL`: whatever the directory's key
        signs, a token it minted is usable for a bounded time near when the public log shows
        it minted.
        """
        if self.suite not in _SUITES:
            return f"suite {self.suite} is not one this node implements"
        if self.issued_at > now + GRANT_CLOCK_SKEW:
            return "the grant is issued in the future"
        if self.expires_at - self.issued_at > MAX_TTL:
            return f"the grant lives longer than {MAX_TTL} seconds"
        return None

    def record_hash_of(self, node: NodeId) -> bytes:
        """The 32-byte record hash the grant names for ``node`` (initiator or responder)."""
        if node == self.initiator:
            return from_b64url(self.initiator_record)
        if node == self.responder:
            return from_b64url(self.responder_record)
        raise CryptoError(f"node {node} is not a party to this grant")

    def involves(self, node: NodeId) -> bool:
        """Whether ``node`` is the initiator or the responder of this grant."""
        return node in (self.initiator, self.responder)


def new_grant(
    initiator: NodeId,
    responder: NodeId,
    *,
    grant_id: bytes,
    issued_at: int,
    ttl: int = DEFAULT_TTL,
    suite: str,
    initiator_record: bytes,
    responder_record: bytes,
) -> Grant:
    """Build a grant from caller-supplied randomness (16-byte ``grant_id``) and time.

    ``initiator_record`` / ``responder_record`` are the 32-byte ``record_hash`` of the signed
    node records the grant is minted for.
    """
    for name, value in (("initiator_record", initiator_record),
                        ("responder_record", responder_record)):
        if not isinstance(value, bytes) or len(value) != 32:
            raise CryptoError(f"grant is malformed: {name} must be a 32-byte hash")
    if not isinstance(grant_id, bytes) or len(grant_id) != _jail_tokens.GRANT_ID_LEN:
        raise CryptoError(f"grant is malformed: grant_id must be {_jail_tokens.GRANT_ID_LEN} bytes")
    if isinstance(ttl, bool) or not isinstance(ttl, int) or ttl <= 0:
        raise CryptoError("grant is malformed: ttl must be a positive number of seconds")
    return Grant(
        grant_id=b64url(grant_id),
        initiator=initiator,
        responder=responder,
        issued_at=issued_at,
        expires_at=issued_at + ttl,
        suite=suite,
        initiator_record=b64url(initiator_record),
        responder_record=b64url(responder_record),
    )


def verify_grant_signature(grant: Grant, signature: bytes, directory_key: SignKey) -> None:
    """Return None if the directory signed this grant's canonical bytes; raise InvalidSignature."""
    directory_key.verify(signature, grant.canonical_bytes())


def verify_signed_grant(canonical: bytes, signature: bytes, directory_key: SignKey) -> Grant:
    """Verify the signature over exactly the received bytes, then parse them into a Grant."""
    directory_key.verify(signature, canonical)
    return Grant.from_canonical(canonical)


def mint_tokens(grant: Grant, secret: bytes) -> tuple[bytes, bytes]:
    """Derive ``(token_a, token_b)`` for this grant from a fresh 32-byte random secret.

    The caller (the directory) draws ``secret`` with ``secrets.token_bytes(32)`` for each grant,
    never from ids or time, and forgets it and both tokens once they are sealed.
    """
    try:
        token_b = _jail_tokens.derive_token_b(secret, grant.grant_id_bytes, grant.grant_hash)
    except ValueError as exc:
        raise CryptoError(f"cannot mint tokens: {exc}") from exc
    token_a = _jail_tokens.derive_token_a(token_b, grant.grant_id_bytes, grant.grant_hash)
    return token_a, token_b


def seal_token(token: bytes, box_key: BoxKey) -> SealedToken:
    """Seal a 32-byte token to a node's X25519 key (libsodium ``crypto_box_seal``)."""
    if not isinstance(token, bytes) or len(token) != _jail_tokens.TOKEN_LEN:
        raise CryptoError(f"a token is {_jail_tokens.TOKEN_LEN} bytes")
    try:
        # What nacl.public.SealedBox(PublicKey(key)).encrypt does, without its two objects.
        sealed: bytes = nacl.bindings.crypto_box_seal(token, box_key.raw)
    except nacl.exceptions.CryptoError as exc:
        raise CryptoError("sealing the token failed") from exc
    return SealedToken(sealed)


def check_sealed_token(data: bytes) -> SealedToken:
    """Accept received bytes as a sealed token if their length is right; CryptoError otherwise."""
    if not isinstance(data, bytes) or len(data) != SEALED_TOKEN_LEN:
        raise CryptoError(f"a sealed token is {SEALED_TOKEN_LEN} bytes")
    return SealedToken(data)
