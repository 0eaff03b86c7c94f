"""TOTP against RFC 6238 Appendix B's test vectors, and the matching window."""

from __future__ import annotations

import pytest

from openred.modules.authentication.totp import code_at, match_step, provisioning_uri

SEED_SHA1 = b"12345678901234567890"
SEED_SHA256 = b"12345678901234567890123456789012"
SEED_SHA512 = b"1234567890123456789012345678901234567890123456789012345678901234"

# RFC 6238 Appendix B: (time, SHA-1, SHA-256, SHA-512), 8 digits.
VECTORS = [
    (59, "94287082", "46119246", "90693936"),
    (1111111109, "07081804", "68084774", "25091201"),
    (1111111111, "14050471", "67062674", "99943326"),
    (1234567890, "89005924", "91819424", "93441116"),
    (2000000000, "69279037", "90698825", "38618901"),
    (20000000000, "65353130", "77737706", "47863826"),
]


@pytest.mark.parametrize(("at", "sha1", "sha256", "sha512"), VECTORS)
def test_rfc_6238_vectors(at: int, sha1: str, sha256: str, sha512: str) -> None:
    assert code_at(SEED_SHA1, at, digits=8, algorithm="SHA1") == sha1
    assert code_at(SEED_SHA256, at, digits=8, algorithm="SHA256") == sha256
    assert code_at(SEED_SHA512, at, digits=8, algorithm="SHA512") == sha512
    # Our six-digit codes are the last six digits of the same values (RFC 4226 §5.3).
    assert code_at(SEED_SHA1, at) == sha1[-6:]


def test_the_window_is_one_step_either_side() -> None:
    now = 1111111111
    step = now // 30
    assert match_step(SEED_SHA1, code_at(SEED_SHA1, now), now) == step
    assert match_step(SEED_SHA1, code_at(SEED_SHA1, now - 30), now) == step - 1
    assert match_step(SEED_SHA1, code_at(SEED_SHA1, now + 30), now) == step + 1
    assert match_step(SEED_SHA1, code_at(SEED_SHA1, now - 60), now) is None
    assert match_step(SEED_SHA1, code_at(SEED_SHA1, now + 60), now) is None


@pytest.mark.parametrize("code", ["", "12345", "1234567", "12345a", "١٢٣٤٥٦", " 123456"])
def test_malformed_codes_never_match(code: str) -> None:
    assert match_step(SEED_SHA1, code, 59) is None


def test_provisioning_uri() -> None:
    uri = provisioning_uri(SEED_SHA1, "node-abc")
    assert uri.startswith("otpauth://totp/OpenRed:node-abc?")
    assert "secret=GEZDGNBVGY3TQOJQGEZDGNBVGY3TQOJQ" in uri and "issuer=OpenRed" in uri
