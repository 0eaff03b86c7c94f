"""Paired connection tokens (DESIGN §5): pure derivation and the grant shape the jail accepts.

The directory draws a fresh 32-byte secret ``S`` per grant and derives, with HKDF-SHA256
(RFC 5869)::

    token_b = HKDF(S,       salt=grant_id, info=b"openred/v3 token beta"  || grant_hash)
    token_a = HKDF(token_b, salt=grant_id, info=b"openred/v3 token alpha" || grant_hash)

so the halves differ, the responder (holding token_b) can compute token_a, and the initiator
(holding token_a) cannot compute token_b. ``grant_hash`` is SHA-256 of the grant's RFC 8785
canonical bytes, which binds both tokens to every field of that one grant.

This module imports only the standard library and ``cryptography``: the jail imports it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
from collections.abc import Callable, Mapping

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

__all__ = [
    "GRANT_FIELDS",
    "GRANT_ID_LEN",
    "GRANT_VERSION",
    "MAX_CANONICAL_GRANT",
    "TOKEN_LEN",
    "check_canonical_grant",
    "check_grant_fields",
    "decode_grant_id",
    "derive_token_a",
    "derive_token_b",
    "grant_hash",
    "tokens_match",
]

GRANT_VERSION = 3
GRANT_ID_LEN = 16
TOKEN_LEN = 32
SECRET_LEN = 32
HASH_LEN = 32
MAX_CANONICAL_GRANT = 1024
"""No real grant comes near this; the jail refuses anything longer before parsing it."""

GRANT_FIELDS = frozenset({
    "v", "grant_id", "initiator", "responder", "issued_at", "expires_at", "suite",
    "initiator_record", "responder_record",
})
"""``*_record`` name the signed node records the grant was minted for: base64url of SHA-256 of
each record's canonical bytes (``openred.crypto.records.record_hash``)."""

_INFO_BETA = b"openred/v3 token beta"
_INFO_ALPHA = b"openred/v3 token alpha"

_NODE_ID = re.compile(r"[a-z2-7]{32}")
_GRANT_ID = re.compile(r"[A-Za-z0-9_-]{22}")
# Suite names are registry keys such as "25519_ChaChaPoly_SHA256": ASCII only, so the
# canonical form below is exactly RFC 8785 (no escapes can ever be needed).
_SUITE = re.compile(r"[A-Za-z0-9_.-]{1,64}")
# 32 bytes as canonical unpadded base64url (the last character carries two zero bits).
_RECORD_HASH = re.compile(r"[A-Za-z0-9_-]{42}[AEIMQUYcgkosw048]")
# RFC 8785 §3.2.2.3 serializes numbers as IEEE 754 doubles: only integers up to 2**53 - 1
# survive exactly, so a timestamp outside that range has no unambiguous canonical form.
_MAX_SAFE_INT = 2**53 - 1


def _need_len(name: str, value: bytes, length: int) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        raise ValueError(f"{name} must be {length} bytes")


def _hkdf(key: bytes, salt: bytes, info: bytes) -> bytes:
    return HKDF(algorithm=hashes.SHA256(), length=TOKEN_LEN, salt=salt, info=info).derive(key)


def grant_hash(canonical_grant: bytes) -> bytes:
    """SHA-256 of a grant's canonical bytes (the ``grant_hash`` of DESIGN §5)."""
    if not isinstance(canonical_grant, bytes):
        raise ValueError("a canonical grant is bytes")
    return hashlib.sha256(canonical_grant).digest()


def derive_token_b(secret: bytes, grant_id: bytes, grant_hash: bytes) -> bytes:
    """The responder's token: HKDF-SHA256(S, salt=grant_id, info="openred/v3 token beta" ‖ hash)."""
    _need_len("secret", secret, SECRET_LEN)
    _need_len("grant_id", grant_id, GRANT_ID_LEN)
    _need_len("grant_hash", grant_hash, HASH_LEN)
    return _hkdf(secret, grant_id, _INFO_BETA + grant_hash)


def derive_token_a(token_b: bytes, grant_id: bytes, grant_hash: bytes) -> bytes:
    """The initiator's token, one way from token_b: info="openred/v3 token alpha" ‖ hash."""
    _need_len("token_b", token_b, TOKEN_LEN)
    _need_len("grant_id", grant_id, GRANT_ID_LEN)
    _need_len("grant_hash", grant_hash, HASH_LEN)
    return _hkdf(token_b, grant_id, _INFO_ALPHA + grant_hash)


def tokens_match(token_a: bytes, token_b: bytes, grant_id: bytes, grant_hash: bytes) -> bool:
    """Whether token_a is the alpha half of token_b for this grant, compared in constant time."""
    _need_len("token_a", token_a, TOKEN_LEN)
    expected = derive_token_a(token_b, grant_id, grant_hash)
    return hmac.compare_digest(expected, token_a)


def decode_grant_id(text: str) -> bytes:
    """The 16 raw bytes of a grant id written as unpadded base64url; ValueError otherwise."""
    if not isinstance(text, str) or not _GRANT_ID.fullmatch(text):
        raise ValueError("grant_id must be 22 characters of unpadded base64url")
    raw = base64.urlsafe_b64decode(text + "==")
    # Reject non-zero trailing bits: one grant id has exactly one spelling.
    if base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii") != text:
        raise ValueError("grant_id is not canonical base64url")
    return raw


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def check_grant_fields(obj: Mapping[str, object]) -> None:
    """Raise ValueError unless ``obj`` has exactly the grant fields of DESIGN §5, well formed."""
    if not isinstance(obj, Mapping):
        raise ValueError("a grant is a JSON object")
    keys = set(obj)
    if keys != GRANT_FIELDS:
        missing = sorted(GRANT_FIELDS - keys)
        extra = sorted(str(k) for k in keys - GRANT_FIELDS)
        raise ValueError(f"grant fields wrong: missing {missing}, unexpected {extra}")
    if not _is_int(obj["v"]) or obj["v"] != GRANT_VERSION:
        raise ValueError(f"grant version must be {GRANT_VERSION}")
    grant_id = obj["grant_id"]
    if not isinstance(grant_id, str):
        raise ValueError("grant_id must be a string")
    decode_grant_id(grant_id)
    for role in ("initiator", "responder"):
        node = obj[role]
        if not isinstance(node, str) or not _NODE_ID.fullmatch(node):
            raise ValueError(f"{role} is not a node id")
    if obj["initiator"] == obj["responder"]:
        raise ValueError("initiator and responder must differ")
    times: list[int] = []
    for name in ("issued_at", "expires_at"):
        value = obj[name]
        if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= _MAX_SAFE_INT:
            raise ValueError(f"{name} must be an integer number of seconds in [0, 2**53)")
        times.append(value)
    if times[1] <= times[0]:
        raise ValueError("expires_at must be after issued_at")
    suite = obj["suite"]
    if not isinstance(suite, str) or not _SUITE.fullmatch(suite):
        raise ValueError("suite must be 1-64 characters of [A-Za-z0-9_.-]")
    for name in ("initiator_record", "responder_record"):
        value = obj[name]
        if not isinstance(value, str) or not _RECORD_HASH.fullmatch(value):
            raise ValueError(f"{name} must be a 32-byte hash in canonical base64url")


def _reject_duplicates(pairs: list[tuple[str, object]]) -> dict[str, object]:
    out: dict[str, object] = {}
    for key, value in pairs:
        if key in out:
            raise ValueError(f"duplicate key {key!r}")
        out[key] = value
    return out


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not JSON")


def check_canonical_object(
    data: bytes, *, what: str, limit: int, check_fields: Callable[[dict[str, object]], None],
) -> dict[str, object]:
    """Parse a flat signable object (``what``: "grant", "node record"); ValueError unless these
    are its exact RFC 8785 canonical bytes.

    For a flat object of ASCII strings and safe integers, RFC 8785 canonical JSON equals
    ``json.dumps(sort_keys=True, separators=(",", ":"), ensure_ascii=False)``: keys sorted by
    code unit (§3.2.3), no whitespace, shortest integer form (§3.2.2.3). Equality with that
    re-encoding therefore proves the input is canonical, so signatures and hashes over it are
    unambiguous. ``check_fields`` checks the exact field set and values before that.
    """
    if not isinstance(data, bytes):
        raise ValueError(f"a canonical {what} is bytes")
    if len(data) > limit:
        raise ValueError(f"{what} longer than {limit} bytes")

    def reject_float(text: str) -> object:
        raise ValueError(f"{what} numbers are integers")

    try:
        obj = json.loads(
            data.decode("utf-8"),
            object_pairs_hook=_reject_duplicates,
            parse_constant=_reject_constant,
            parse_float=reject_float,
        )
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise ValueError(f"{what} is not JSON") from exc
    if not isinstance(obj, dict):
        raise ValueError(f"a {what} is a JSON object")
    check_fields(obj)
    again = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    if again.encode("utf-8") != data:
        raise ValueError(f"{what} bytes are not in RFC 8785 canonical form")
    return obj


def check_canonical_grant(canonical: bytes) -> dict[str, object]:
    """Parse a grant and return its fields; ValueError unless these are its exact RFC 8785 bytes."""
    return check_canonical_object(
        canonical, what="grant", limit=MAX_CANONICAL_GRANT, check_fields=check_grant_fields,
    )
