"""Session cipher throughput (encrypt + decrypt with counter and replay window) vs raw AEAD.

The baseline is the same cipher from ``cryptography`` with a fixed nonce and no bookkeeping,
so the ratio is the price of the explicit counter, the replay window and the Python layer.
"""

from __future__ import annotations

from collections.abc import Callable

from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305

from bench.common import best_rate, report
from openred.crypto.session import SessionCipher

SUITES: dict[str, tuple[str, type[ChaCha20Poly1305] | type[AESGCM]]] = {
    "chachapoly": ("25519_ChaChaPoly_SHA256", ChaCha20Poly1305),
    "aesgcm": ("25519_AESGCM_SHA256", AESGCM),
}
SIZES = {"1KiB": 1024, "64KiB": 64 * 1024}
AD = b"session-id/module/action"


def _session_loop(suite: str, payload: bytes, n: int) -> Callable[[], int]:
    key_a, key_b = bytes(range(32)), bytes(range(32, 64))

    def run() -> int:
        sender = SessionCipher(suite, key_a, key_b)
        receiver = SessionCipher(suite, key_b, key_a)
        encrypt, decrypt = sender.encrypt, receiver.decrypt
        for _ in range(n):
            counter, ct = encrypt(payload, ad=AD)
            decrypt(counter, ct, ad=AD)
        return n

    return run


def _raw_loop(
    aead_class: type[ChaCha20Poly1305] | type[AESGCM], payload: bytes, n: int
) -> Callable[[], int]:
    aead = aead_class(bytes(range(32)))
    nonce = bytes(12)

    def run() -> int:
        encrypt, decrypt = aead.encrypt, aead.decrypt
        for _ in range(n):
            decrypt(nonce, encrypt(nonce, payload, AD), AD)
        return n

    return run


def main() -> None:
    mib = 1024 * 1024
    for cipher, (suite, aead_class) in SUITES.items():
        for size_name, size in SIZES.items():
            payload = bytes(size)
            n = 20_000 if size <= 1024 else 600
            raw = best_rate(_raw_loop(aead_class, payload, n)) * size / mib
            ours = best_rate(_session_loop(suite, payload, n)) * size / mib
            report(
                f"session_roundtrip_{size_name}_{cipher}",
                ours,
                "MiB/s",
                f"raw_aead_roundtrip_{size_name}_{cipher}",
                raw,
            )


if __name__ == "__main__":
    main()
