"""Full KKpsk0 handshakes (both sides, in one process) per second vs the bare X25519 work.

One handshake does 8 X25519 operations (initiator: es, ss, then ee, se; responder: es, ss, ee,
se) and generates 2 ephemeral key pairs. The baseline does exactly that work with
``cryptography`` directly, so the ratio is the price of the Noise layer (hashing, HKDF, AEAD
of the payloads, Python bookkeeping). The jail benchmark reuses :func:`inprocess_handshake_rate`
as its own baseline.
"""

from __future__ import annotations

from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from bench.common import best_rate, report
from crypto_jail.noise import HandshakeState, X25519KeyPair

SUITE = "25519_ChaChaPoly_SHA256"
PROLOGUE = b"openred/v3" + bytes(200)  # about the size of a canonical grant and its signature
DH_PER_HANDSHAKE = 8
KEYGEN_PER_HANDSHAKE = 2


def _handshakes(n: int, suite: str = SUITE) -> int:
    init_s, resp_s, psk = X25519KeyPair.generate(), X25519KeyPair.generate(), bytes(range(32))
    for _ in range(n):
        init = HandshakeState(
            pattern="KKpsk0", suite=suite, initiator=True, prologue=PROLOGUE,
            s=init_s, rs=resp_s.public, psk=psk,
        )
        resp = HandshakeState(
            pattern="KKpsk0", suite=suite, initiator=False, prologue=PROLOGUE,
            s=resp_s, rs=init_s.public, psk=psk,
        )
        resp.read_message(init.write_message())
        init.read_message(resp.write_message())
        init.split()
        resp.split()
    return n


def _raw_x25519_work(n: int) -> int:
    a, b = X25519PrivateKey.generate(), X25519PrivateKey.generate()
    peer = b.public_key()
    for _ in range(n):
        for _ in range(KEYGEN_PER_HANDSHAKE):
            X25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        for _ in range(DH_PER_HANDSHAKE):
            a.exchange(peer)
    return n


def inprocess_handshake_rate(n: int = 300, repeats: int = 5) -> float:
    """Complete in-process KKpsk0 handshakes (both sides) per second."""
    return best_rate(lambda: _handshakes(n), repeats=repeats)


def main() -> None:
    baseline = best_rate(lambda: _raw_x25519_work(300))
    ours = inprocess_handshake_rate()
    report(
        "handshake_kkpsk0_inprocess",
        ours,
        "handshakes/s",
        f"x25519_dh_x{DH_PER_HANDSHAKE}_keygen_x{KEYGEN_PER_HANDSHAKE}",
        baseline,
        "sets/s",
    )


if __name__ == "__main__":
    main()
