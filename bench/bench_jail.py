"""The crypto jail's price: signing and handshakes through the jail vs the same work in-process.

Starts two jails (development keystores in a temp dir) through the real client and supervisor,
then measures, each against a baseline taken in the same run:

* ``jail_sign_batch_1000`` — one ``sign_batch`` of 1000 entry hashes, round trip included, vs a
  plain PyNaCl loop signing 1000 hashes in this process (target ratio ≥ 0.7);
* ``jail_sign_p50`` / ``jail_sign_p99`` — one ``sign`` round trip vs one in-process signature
  (latency: lower ratio is better);
* ``jail_handshake_kkpsk0`` — complete KKpsk0 handshakes through two jails (initiate, respond,
  finish: three round trips), one at a time, vs the same handshake fully in-process (target
  ratio ≥ 0.5). "The same handshake" is the jail's own recipe run by calling its operations
  directly in this process (``crypto_jail.ops.dispatch`` on the same keystores): checking the
  grant, opening both sealed tokens, deriving token_a, Noise KKpsk0 — everything but the
  process boundary, which is what this figure prices. ``..._4_in_flight`` is the same with
  four handshakes in flight, as a node serving several peers has.
* ``jail_handshake_kkpsk0_vs_bare_noise`` — the one-at-a-time rate against bare Noise alone
  (no grant check, no sealed tokens, no derivation), for scale.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

import nacl.public
import nacl.signing

from bench.bench_handshake_inprocess import inprocess_handshake_rate
from bench.common import best_rate, percentiles, report
from crypto_jail import tokens
from crypto_jail.keystore import create_keystore, load_keystore
from crypto_jail.ops import JailState, dispatch
from crypto_jail.protocol import b64e
from openred.crypto.client import JailClient, JailSupervisor, PublicKeys

BATCH = 1000
LATENCY_SAMPLES = 2000
HANDSHAKES = 200
SUITE = "25519_ChaChaPoly_SHA256"
LANES = 4


def _hashes(n: int) -> list[bytes]:
    return [hashlib.sha256(i.to_bytes(8, "big")).digest() for i in range(n)]


def inprocess_sign_rate(repeats: int = 7) -> float:
    key = nacl.signing.SigningKey.generate()
    hashes = _hashes(BATCH)
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        for h in hashes:
            key.sign(h)
        best = max(best, BATCH / (time.perf_counter() - start))
    return best


def inprocess_sign_latency() -> tuple[float, float]:
    key = nacl.signing.SigningKey.generate()
    h = hashlib.sha256(b"x").digest()
    samples = []
    for _ in range(LATENCY_SAMPLES):
        start = time.perf_counter()
        key.sign(h)
        samples.append((time.perf_counter() - start) * 1e6)
    return percentiles(samples)


async def _best_rate(fn: Callable[[], Awaitable[int]], repeats: int) -> float:
    best = 0.0
    for _ in range(repeats):
        start = time.perf_counter()
        n = await fn()
        best = max(best, n / (time.perf_counter() - start))
    return best


def _grant(initiator: PublicKeys, responder: PublicKeys) -> tuple[bytes, bytes, bytes, bytes]:
    """A signed grant and its two tokens, sealed to each jail (what the directory delivers)."""
    body = {
        "v": 3, "grant_id": b64e(os.urandom(16)),
        "initiator": str(initiator.node_id), "responder": str(responder.node_id),
        "issued_at": 1_700_000_000, "expires_at": 1_700_000_300, "suite": SUITE,
        "initiator_record": b64e(os.urandom(32)), "responder_record": b64e(os.urandom(32)),
    }
    grant = json.dumps(body, sort_keys=True, separators=(",", ":")).encode()
    grant_id = tokens.decode_grant_id(str(body["grant_id"]))
    digest = tokens.grant_hash(grant)
    token_b = tokens.derive_token_b(os.urandom(32), grant_id, digest)
    token_a = tokens.derive_token_a(token_b, grant_id, digest)
    signature = nacl.signing.SigningKey.generate().sign(grant).signature
    sealed_a = nacl.public.SealedBox(nacl.public.PublicKey(initiator.box_key.raw)).encrypt(token_a)
    sealed_b = nacl.public.SealedBox(nacl.public.PublicKey(responder.box_key.raw)).encrypt(token_b)
    return grant, bytes(signature), bytes(sealed_a), bytes(sealed_b)


def _inprocess_ops_rate(
    a: JailState, b: JailState, grants: list[tuple[bytes, bytes, bytes, bytes]], repeats: int
) -> float:
    """The jail's handshake recipe, both sides, called directly in this process."""
    b_static, a_static = b64e(b.static.public), b64e(a.static.public)

    def run() -> int:
        for grant, signature, sealed_a, sealed_b in grants:
            common = {"suite": SUITE, "grant": b64e(grant), "grant_signature": b64e(signature)}
            first = dispatch(a, "noise_initiate", {**common, "sealed_token": b64e(sealed_a),
                                                   "remote_static": b_static})
            second = dispatch(b, "noise_respond", {**common, "sealed_token": b64e(sealed_b),
                                                   "remote_static": a_static,
                                                   "message": first["message"]})
            dispatch(a, "noise_finish", {"handle": first["handle"],
                                         "message": second["message"]})
        return len(grants)

    return best_rate(run, repeats=repeats)


async def _run(directory: Path) -> None:
    supervisors = []
    states = []
    for name in ("a", "b"):
        (directory / name).mkdir(mode=0o700)
        keystore = directory / name / "ks.json"
        create_keystore(keystore, None)
        states.append(JailState(load_keystore(keystore, None)))
        supervisors.append(JailSupervisor(keystore, directory / name / "s" / "j.sock"))
    for supervisor in supervisors:
        await supervisor.start()
    alice = JailClient(supervisors[0].socket_path, supervisor=supervisors[0])
    bob = JailClient(supervisors[1].socket_path, supervisor=supervisors[1])
    try:
        await _measure(alice, bob, states[0], states[1])
    finally:
        await alice.close()
        await bob.close()
        for supervisor in supervisors:
            await supervisor.stop()


async def _measure(alice: JailClient, bob: JailClient, a_state: JailState,
                   b_state: JailState) -> None:
    hashes = _hashes(BATCH)

    async def batch() -> int:
        await alice.sign_batch(hashes)
        return BATCH

    await batch()  # warm up the connection and the jail's threads
    baseline = inprocess_sign_rate()
    ours = await _best_rate(batch, repeats=7)
    report(f"jail_sign_batch_{BATCH}", ours, "sigs/s", "inprocess_pynacl_sign", baseline)

    h = hashes[0]
    samples = []
    for _ in range(LATENCY_SAMPLES):
        start = time.perf_counter()
        await alice.sign("entry_hash", h)
        samples.append((time.perf_counter() - start) * 1e6)
    p50, p99 = percentiles(samples)
    base50, base99 = inprocess_sign_latency()
    report("jail_sign_p50", p50, "us", "inprocess_sign_p50", base50)
    report("jail_sign_p99", p99, "us", "inprocess_sign_p99", base99)

    a, b = await alice.public_keys(), await bob.public_keys()
    grants = [_grant(a, b) for _ in range(HANDSHAKES)]

    async def handshake(grant: bytes, signature: bytes, sealed_a: bytes, sealed_b: bytes) -> None:
        first = await alice.noise_initiate(
            suite=SUITE, grant=grant, grant_signature=signature, sealed_token=sealed_a,
            remote_static=b.box_key.raw,
        )
        second = await bob.noise_respond(
            suite=SUITE, grant=grant, grant_signature=signature, sealed_token=sealed_b,
            remote_static=a.box_key.raw, message=first.message,
        )
        await alice.noise_finish(first.handle, second.message)

    async def one_at_a_time() -> int:
        for grant in grants:
            await handshake(*grant)
        return len(grants)

    async def in_flight(lanes: int) -> int:
        async def lane(part: list[tuple[bytes, bytes, bytes, bytes]]) -> None:
            for grant in part:
                await handshake(*grant)

        await asyncio.gather(*(lane(grants[i::lanes]) for i in range(lanes)))
        return len(grants)

    baseline = _inprocess_ops_rate(a_state, b_state, grants, repeats=3)
    ours = await _best_rate(one_at_a_time, repeats=3)
    report("jail_handshake_kkpsk0", ours, "handshakes/s", "inprocess_jail_recipe_kkpsk0",
           baseline)
    report("jail_handshake_kkpsk0_vs_bare_noise", ours, "handshakes/s", "inprocess_kkpsk0",
           inprocess_handshake_rate())
    # A node answers handshakes from many peers at once: with several in flight, both jails
    # (separate processes) work in parallel instead of waiting on each other's round trips.
    ours = await _best_rate(lambda: in_flight(LANES), repeats=3)
    report(f"jail_handshake_kkpsk0_{LANES}_in_flight", ours, "handshakes/s",
           "inprocess_jail_recipe_kkpsk0", baseline)


def main() -> None:
    directory = Path(tempfile.mkdtemp(prefix="ojb", dir="/tmp"))
    try:
        asyncio.run(_run(directory))
    finally:
        shutil.rmtree(directory, ignore_errors=True)


if __name__ == "__main__":
    main()
