"""Every Wycheproof X25519 and ChaCha20-Poly1305 case through the wrappers the handshake uses."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from crypto_jail.noise import SUITES, CipherState, NoiseError, X25519KeyPair


def _cases(vectors_dir: Path, name: str) -> list[dict[str, Any]]:
    data = json.loads((vectors_dir / name).read_text())
    cases = [t for g in data["testGroups"] for t in g["tests"]]
    assert len(cases) == data["numberOfTests"]
    return cases


def test_x25519_all_cases(vectors_dir: Path) -> None:
    outcomes: Counter[str] = Counter()
    for case in _cases(vectors_dir, "wycheproof_x25519_test.json"):
        tc = case["tcId"]
        key = X25519KeyPair.from_private_bytes(bytes.fromhex(case["private"]))
        public = bytes.fromhex(case["public"])
        shared = bytes.fromhex(case["shared"])
        if case["result"] == "invalid":
            with pytest.raises(NoiseError):
                key.dh(public)
            outcomes["invalid refused"] += 1
        elif shared == bytes(32):
            # RFC 7748 §6.1: an all-zero secret means a low-order point; we refuse it.
            assert "ZeroSharedSecret" in case["flags"], tc
            with pytest.raises(NoiseError):
                key.dh(public)
            outcomes["zero shared refused"] += 1
        else:
            assert key.dh(public) == shared, tc
            outcomes[f"{case['result']} matched"] += 1
    assert outcomes == {"valid matched": 264, "acceptable matched": 223, "zero shared refused": 31}


def test_x25519_refuses_wrong_lengths() -> None:
    key = X25519KeyPair.generate()
    for length in (0, 31, 33, 64):
        with pytest.raises(NoiseError):
            key.dh(bytes(length))


def test_chacha20_poly1305_all_cases(vectors_dir: Path) -> None:
    cipher = SUITES["25519_ChaChaPoly_SHA256"].cipher
    outcomes: Counter[str] = Counter()
    for case in _cases(vectors_dir, "wycheproof_chacha20_poly1305_test.json"):
        tc = case["tcId"]
        h = bytes.fromhex
        key, nonce, aad, msg = h(case["key"]), h(case["iv"]), h(case["aad"]), h(case["msg"])
        sealed = h(case["ct"]) + h(case["tag"])
        aead = cipher.key(key)
        if len(nonce) != 12:
            assert case["result"] == "invalid" and "InvalidNonceSize" in case["flags"], tc
            with pytest.raises(NoiseError):
                aead.seal(nonce, aad, msg)
            with pytest.raises(NoiseError):
                aead.open(nonce, aad, sealed)
            outcomes["bad nonce size refused"] += 1
            continue
        if case["result"] == "valid":
            assert aead.seal(nonce, aad, msg) == sealed, tc
            assert aead.open(nonce, aad, sealed) == msg, tc
            outcomes["valid"] += 1
        else:
            with pytest.raises(NoiseError):
                aead.open(nonce, aad, sealed)
            outcomes["invalid refused"] += 1
        if nonce[:4] == bytes(4):
            # Noise's nonce form (32 zero bits, 64-bit little-endian n): check CipherState too.
            cs = CipherState(cipher, key, n=int.from_bytes(nonce[4:], "little"))
            if case["result"] == "valid":
                assert cs.decrypt_with_ad(aad, sealed) == msg, tc
            else:
                with pytest.raises(NoiseError):
                    cs.decrypt_with_ad(aad, sealed)
            outcomes["through CipherState"] += 1
    assert outcomes == {
        "valid": 256,
        "invalid refused": 60,
        "bad nonce size refused": 9,
        "through CipherState": 10,
    }
