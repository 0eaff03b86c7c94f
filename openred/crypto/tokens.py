"""Typed wrappers over the pure token derivation in ``crypto_jail.tokens`` (DESIGN §5).

The responder derives token_a from its token_b to use as the Noise PSK; anyone holding both
halves can check they belong to one grant with :func:`tokens_match` (a constant-time compare).
"""

from __future__ import annotations

from crypto_jail import tokens as _jail_tokens
from openred.crypto.grants import Grant
from openred.errors import CryptoError

__all__ = ["derive_token_a", "tokens_match"]


def derive_token_a(token_b: bytes, grant: Grant) -> bytes:
    """The initiator's half of ``grant``, computed from the responder's half."""
    try:
        return _jail_tokens.derive_token_a(token_b, grant.grant_id_bytes, grant.grant_hash)
    except ValueError as exc:
        raise CryptoError(f"cannot derive token: {exc}") from exc


def tokens_match(token_a: bytes, token_b: bytes, grant: Grant) -> bool:
    """Whether the two halves belong to ``grant``; constant time in the token contents."""
    try:
        return _jail_tokens.tokens_match(token_a, token_b, grant.grant_id_bytes, grant.grant_hash)
    except ValueError as exc:
        raise CryptoError(f"cannot compare tokens: {exc}") from exc
