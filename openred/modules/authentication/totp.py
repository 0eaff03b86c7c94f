"""TOTP (RFC 6238) for the operator's second factor, over ``cryptography``'s implementation.

Codes are 6 digits, HMAC-SHA1, 30-second steps — what every authenticator app reads from an
``otpauth://`` URI. :func:`match_step` accepts the current step and one step either side (clock
drift, RFC 6238 §5.2) and returns *which* step matched, so the caller can accept each step at
most once (a code is never accepted twice: §5.2's "MUST NOT" on reuse). Time is passed in.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.hashes import SHA1, SHA256, SHA512
from cryptography.hazmat.primitives.twofactor import InvalidToken
from cryptography.hazmat.primitives.twofactor.totp import TOTP

__all__ = ["DIGITS", "SECRET_BYTES", "STEP", "code_at", "match_step", "provisioning_uri"]

DIGITS = 6
STEP = 30
SECRET_BYTES = 20
"""160-bit secrets, the length RFC 4226 §4 recommends for HMAC-SHA1."""
DRIFT = 1
_ALGORITHMS: dict[str, type[SHA1 | SHA256 | SHA512]] = {
    "SHA1": SHA1, "SHA256": SHA256, "SHA512": SHA512}


def _totp(secret: bytes, *, digits: int = DIGITS, algorithm: str = "SHA1") -> TOTP:
    # enforce_key_length=False: RFC 6238's SHA-256/512 vectors use 32/64-byte keys, ours 20.
    return TOTP(secret, digits, _ALGORITHMS[algorithm](), STEP, enforce_key_length=False)


def code_at(secret: bytes, at: int, *, digits: int = DIGITS, algorithm: str = "SHA1") -> str:
    """The code for Unix time ``at``."""
    return _totp(secret, digits=digits, algorithm=algorithm).generate(at).decode("ascii")


def match_step(secret: bytes, code: str, now: int) -> int | None:
    """The time step (``now // 30`` ± 1) whose code ``code`` is, or None."""
    if not isinstance(code, str) or len(code) != DIGITS or not code.isascii() \
            or not code.isdigit():
        return None
    totp = _totp(secret)
    step = now // STEP
    for candidate in range(step - DRIFT, step + DRIFT + 1):
        try:
            totp.verify(code.encode("ascii"), candidate * STEP)
        except InvalidToken:
            continue
        return candidate
    return None


def provisioning_uri(secret: bytes, account: str, issuer: str = "OpenRed") -> str:
    """The ``otpauth://totp/...`` URI an authenticator app imports (as text or QR code)."""
    return _totp(secret).get_provisioning_uri(account, issuer)
