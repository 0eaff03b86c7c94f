"""The jail's operations as pure functions: every op, every refusal, a full KKpsk0 between two."""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import nacl.bindings
import nacl.public
import nacl.signing
import pytest

from crypto_jail import noise, tokens
from crypto_jail.errors import OpRefused
from crypto_jail.keystore import Keystore
from crypto_jail.ops import OPS, SPLIT_THRESHOLD, JailState, TimePolicy, dispatch
from crypto_jail.protocol import MAX_BATCH, b64d, b64e

SUITE = "25519_ChaChaPoly_SHA256"
DESIGN_SUITES = [
    "25519_ChaChaPoly_SHA256",
    "25519_AESGCM_SHA256",
    "25519_ChaChaPoly_BLAKE2b",
    "25519_AESGCM_BLAKE2b",
]
ROOT = base64.b64encode(hashlib.sha256(b"root").digest()).decode()
CHECKPOINT = f"openred/{'a' * 32}\n42\n{ROOT}\n".encode()
WALL = 1_700_000_000
"""The jail's wall clock in these tests: HTTP_BASE and canonical_grant are made at this time."""


def checkpoint_for(node_id: str, size: int = 42) -> bytes:
    """A checkpoint body for the log of ``node_id`` (the only origin its jail signs)."""
    return f"openred/{node_id}\n{size}\n{ROOT}\n".encode()
HTTP_BASE = (
    '"@method": POST\n'
    '"@target-uri": https://dir.example/api/v3/nodes/register\n'
    f'"content-digest": sha-256=:{ROOT}:\n'
    '"@signature-params": ("@method" "@target-uri" "content-digest");created=1700000000;'
    f'keyid="{"b" * 32}";alg="ed25519";nonce="abcdefghijklmnop"'
).encode()


# --- helpers other jail tests import ---------------------------------------------------------


def canonical_grant(
    initiator: str, responder: str, *, suite: str = SUITE, issued_at: int = 1_700_000_000
) -> bytes:
    """A v3 grant in RFC 8785 canonical bytes (flat ASCII object: sorted, compact JSON)."""
    grant = {
        "v": 3, "grant_id": b64e(os.urandom(16)), "initiator": initiator,
        "responder": responder, "issued_at": issued_at, "expires_at": issued_at + 300,
        "suite": suite, "initiator_record": b64e(os.urandom(32)),
        "responder_record": b64e(os.urandom(32)),
    }
    return json.dumps(grant, sort_keys=True, separators=(",", ":")).encode()


def seal(token: bytes, box_key: bytes) -> bytes:
    return bytes(nacl.public.SealedBox(nacl.public.PublicKey(box_key)).encrypt(token))


@dataclass(frozen=True)
class Minted:
    """What the directory hands out for one grant (DESIGN §5), plus the clear tokens."""

    grant: bytes
    signature: bytes
    token_a: bytes
    token_b: bytes
    sealed_a: bytes
    sealed_b: bytes
    suite: str


DIRECTORY = nacl.signing.SigningKey.generate()


def mint(
    initiator: dict[str, str], responder: dict[str, str], *, suite: str = SUITE
) -> Minted:
    """Mint a grant and paired tokens for two jails' public keys, sealed to each."""
    grant = canonical_grant(initiator["node_id"], responder["node_id"], suite=suite)
    fields = tokens.check_canonical_grant(grant)
    grant_id = tokens.decode_grant_id(str(fields["grant_id"]))
    token_b = tokens.derive_token_b(os.urandom(32), grant_id, tokens.grant_hash(grant))
    token_a = tokens.derive_token_a(token_b, grant_id, tokens.grant_hash(grant))
    return Minted(
        grant, DIRECTORY.sign(grant).signature, token_a, token_b,
        seal(token_a, b64d(initiator["box_key"])), seal(token_b, b64d(responder["box_key"])),
        suite,
    )


def initiate_args(m: Minted, responder_box: str) -> dict[str, Any]:
    return {
        "suite": m.suite, "grant": b64e(m.grant), "grant_signature": b64e(m.signature),
        "sealed_token": b64e(m.sealed_a), "remote_static": responder_box,
    }


def respond_args(m: Minted, initiator_box: str, message: str) -> dict[str, Any]:
    return {
        "suite": m.suite, "grant": b64e(m.grant), "grant_signature": b64e(m.signature),
        "sealed_token": b64e(m.sealed_b), "remote_static": initiator_box, "message": message,
    }


# --- fixtures -----------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def alice(clock: Clock) -> JailState:
    return JailState(Keystore.generate(), clock=clock, wall_clock=lambda: WALL)


@pytest.fixture
def bob() -> JailState:
    return JailState(Keystore.generate(), wall_clock=lambda: WALL)


def refused(state: JailState, op: str, args: dict[str, Any]) -> OpRefused:
    with pytest.raises(OpRefused) as info:
        dispatch(state, op, args)
    return info.value


def verify(state: JailState, signature_b64: str, data: bytes) -> None:
    nacl.signing.VerifyKey(state.keystore.sign_public).verify(data, b64d(signature_b64))


# --- public keys and dispatch ---------------------------------------------------------------


def test_public_keys_are_the_keystore_public_keys(alice: JailState) -> None:
    result = dispatch(alice, "public_keys", {})
    ks = alice.keystore
    assert b64d(result["sign_key"]) == bytes(ks.signing_key.verify_key)
    assert b64d(result["box_key"]) == bytes(ks.box_private.public_key)
    digest = hashlib.sha256(b64d(result["sign_key"])).digest()[:20]
    assert result["node_id"] == base64.b32encode(digest).decode().lower()
    assert set(result) == {"sign_key", "box_key", "node_id"}


def test_unknown_op_and_bad_arguments(alice: JailState) -> None:
    assert refused(alice, "export_private_key", {}).code == "unknown_op"
    assert refused(alice, "public_keys", {"x": 1}).code == "bad_request"
    assert refused(alice, "sign", {"kind": "entry_hash"}).code == "bad_request"
    assert refused(alice, "sign", {"kind": 1, "data": "AA"}).code == "bad_request"
    assert refused(alice, "sign", {"kind": "entry_hash", "data": 5}).code == "bad_request"


def test_the_whitelist_is_exactly_the_designed_operations() -> None:
    assert set(OPS) == {
        "public_keys", "sign", "sign_batch", "sign_many", "sign_checkpoint", "witnessed",
        "open_sealed", "noise_initiate", "noise_respond", "noise_finish", "wrap", "unwrap",
    }


# --- signing ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("entry_hash", hashlib.sha256(b"entry").digest()),
        ("http_signature_base", HTTP_BASE),
        ("checkpoint", CHECKPOINT),
        ("grant", canonical_grant("a" * 32, "b" * 32)),
    ],
)
def test_sign_each_signable_kind(alice: JailState, kind: str, data: bytes) -> None:
    if kind == "checkpoint":
        data = checkpoint_for(alice.public["node_id"])
    result = dispatch(alice, "sign", {"kind": kind, "data": b64e(data)})
    verify(alice, result["signature"], data)


@pytest.mark.parametrize(
    ("kind", "data"),
    [
        ("entry_hash", bytes(31)),
        ("entry_hash", bytes(33)),
        ("entry_hash", b""),
        ("http_signature_base", b"GET / HTTP/1.1 please sign me"),
        ("http_signature_base", HTTP_BASE + b"\n"),
        ("checkpoint", b"origin\n42\nnot-a-root\n"),
        ("checkpoint", CHECKPOINT[:-1]),
        ("grant", canonical_grant("a" * 32, "b" * 32).replace(b",", b", ")),
        ("grant", json.dumps({"v": 3}).encode()),
        ("grant", bytes(32)),
    ],
)
def test_sign_refuses_anything_but_the_exact_structure(
    alice: JailState, kind: str, data: bytes
) -> None:
    error = refused(alice, "sign", {"kind": kind, "data": b64e(data)})
    assert error.code == "refused"
    assert "signable" in error.detail


def test_sign_refuses_unknown_kinds(alice: JailState) -> None:
    assert refused(alice, "sign", {"kind": "raw", "data": b64e(bytes(32))}).code == "bad_request"


@pytest.mark.parametrize("count", [1, 2, SPLIT_THRESHOLD - 1, SPLIT_THRESHOLD, 301])
def test_sign_batch_signs_in_order_with_and_without_threads(alice: JailState, count: int) -> None:
    hashes = [hashlib.sha256(i.to_bytes(4, "big")).digest() for i in range(count)]
    args = {"kind": "entry_hash", "data": b64e(b"".join(hashes))}
    single = b64d(dispatch(alice, "sign_batch", args)["signatures"])
    with ThreadPoolExecutor(max_workers=1) as pool:
        alice.split_executor = pool
        split = b64d(dispatch(alice, "sign_batch", args)["signatures"])
        alice.split_executor = None
    assert single == split  # Ed25519 is deterministic: threads change nothing but speed
    assert len(single) == 64 * count
    key = nacl.signing.VerifyKey(alice.keystore.sign_public)
    for i, h in enumerate(hashes):
        key.verify(h, single[64 * i : 64 * (i + 1)])


@pytest.mark.parametrize(
    ("kind", "data", "code"),
    [
        ("entry_hash", b"", "refused"),
        ("entry_hash", bytes(33), "refused"),
        ("entry_hash", bytes(95), "refused"),
        ("checkpoint", CHECKPOINT, "refused"),
        ("entry_hash", bytes(32 * (MAX_BATCH + 1)), "bad_request"),
    ],
)
def test_sign_batch_refusals(alice: JailState, kind: str, data: bytes, code: str) -> None:
    assert refused(alice, "sign_batch", {"kind": kind, "data": b64e(data)}).code == code


def test_sign_checkpoint(alice: JailState) -> None:
    own = checkpoint_for(alice.public["node_id"])
    result = dispatch(alice, "sign_checkpoint", {"body": b64e(own)})
    verify(alice, result["signature"], own)
    assert refused(alice, "sign_checkpoint", {"body": b64e(bytes(32))}).code == "refused"


# --- the jail keeps time itself -------------------------------------------------------------


def _base_created(created: int, uri: str = "https://dir.example/api/v3/nodes/register") -> bytes:
    return HTTP_BASE.replace(b"created=1700000000", b"created=%d" % created).replace(
        b"https://dir.example/api/v3/nodes/register", uri.encode()
    )


def _grant(issued_at: int, lifetime: int = 300) -> bytes:
    grant = json.loads(canonical_grant("a" * 32, "b" * 32, issued_at=issued_at))
    grant["expires_at"] = issued_at + lifetime
    return json.dumps(grant, sort_keys=True, separators=(",", ":")).encode()


@pytest.mark.parametrize("offset", [-60, -1, 0, 1, 60])
def test_http_bases_created_inside_the_window_are_signed(alice: JailState, offset: int) -> None:
    data = _base_created(WALL + offset)
    verify(alice, dispatch(alice, "sign", {"kind": "http_signature_base",
                                           "data": b64e(data)})["signature"], data)


@pytest.mark.parametrize("offset", [-61, 61, -3600, 86400 * 365, -WALL])
def test_http_bases_created_off_the_jails_clock_are_refused(
    alice: JailState, offset: int
) -> None:
    args = {"kind": "http_signature_base", "data": b64e(_base_created(WALL + offset))}
    error = refused(alice, "sign", args)
    assert error.code == "refused" and "time window" in error.detail


def test_a_created_inside_the_target_uri_does_not_fool_the_clock(alice: JailState) -> None:
    sneaky = _base_created(WALL + 7200, f"https://x.example/p;created={WALL};q")
    args = {"kind": "http_signature_base", "data": b64e(sneaky)}
    assert refused(alice, "sign", args).code == "refused"


def test_the_http_window_is_configurable() -> None:
    state = JailState(Keystore.generate(), wall_clock=lambda: WALL,
                      time_policy=TimePolicy(http_window=5))
    args = {"kind": "http_signature_base", "data": b64e(_base_created(WALL + 6))}
    assert refused(state, "sign", args).code == "refused"
    dispatch(state, "sign", {"kind": "http_signature_base", "data": b64e(_base_created(WALL + 5))})


@pytest.mark.parametrize(("issued", "lifetime"), [(0, 300), (-300, 300), (300, 86400), (0, 1)])
def test_grants_inside_the_bounds_are_signed(alice: JailState, issued: int, lifetime: int) -> None:
    data = _grant(WALL + issued, lifetime)
    verify(alice, dispatch(alice, "sign", {"kind": "grant", "data": b64e(data)})["signature"],
           data)


@pytest.mark.parametrize(
    ("issued", "lifetime", "why"),
    [
        (-301, 300, "issued_at"),  # minted long ago: pre-signed for later use
        (301, 300, "issued_at"),  # dated in the future
        (0, 86401, "lifetime"),
        (0, 10 * 365 * 86400, "lifetime"),
    ],
)
def test_grants_outside_the_bounds_are_refused(
    alice: JailState, issued: int, lifetime: int, why: str
) -> None:
    error = refused(alice, "sign", {"kind": "grant", "data": b64e(_grant(WALL + issued, lifetime))})
    assert error.code == "refused" and why in error.detail


def test_grant_bounds_are_configurable() -> None:
    state = JailState(Keystore.generate(), wall_clock=lambda: WALL,
                      time_policy=TimePolicy(grant_skew=10, grant_max_lifetime=600))
    assert refused(state, "sign", {"kind": "grant", "data": b64e(_grant(WALL + 11))}).code
    assert refused(state, "sign", {"kind": "grant", "data": b64e(_grant(WALL, 601))}).code
    dispatch(state, "sign", {"kind": "grant", "data": b64e(_grant(WALL + 10, 600))})
    with pytest.raises(ValueError):
        TimePolicy(http_window=0)


@pytest.mark.parametrize("op", ["sign", "sign_checkpoint"])
def test_only_the_jails_own_checkpoints_are_signed(alice: JailState, bob: JailState,
                                                   op: str) -> None:
    for body in (checkpoint_for(bob.public["node_id"]), CHECKPOINT,
                 f"directory\n1\n{ROOT}\n".encode()):
        args = ({"kind": "checkpoint", "data": b64e(body)} if op == "sign"
                else {"body": b64e(body)})
        error = refused(alice, op, args)
        assert error.code == "refused" and "origin" in error.detail
    own = checkpoint_for(alice.public["node_id"])
    args = {"kind": "checkpoint", "data": b64e(own)} if op == "sign" else {"body": b64e(own)}
    verify(alice, dispatch(alice, op, args)["signature"], own)


def test_the_operator_may_name_more_checkpoint_origins(bob: JailState) -> None:
    rotated = f"openred/{bob.public['node_id']}"  # a log whose first key was bob's
    state = JailState(Keystore.generate(), extra_origins=frozenset({rotated}))
    body = checkpoint_for(bob.public["node_id"])
    verify(state, dispatch(state, "sign_checkpoint", {"body": b64e(body)})["signature"], body)
    assert refused(state, "sign_checkpoint", {"body": b64e(CHECKPOINT)}).code == "refused"


def test_the_default_clock_is_the_real_one() -> None:
    state = JailState(Keystore.generate())
    now = int(time.time())
    dispatch(state, "sign", {"kind": "http_signature_base", "data": b64e(_base_created(now))})
    old = {"kind": "http_signature_base", "data": b64e(_base_created(now - 3600))}
    assert refused(state, "sign", old).code == "refused"


# --- sealed tokens ---------------------------------------------------------------------------


def test_open_sealed_reports_only_the_length(alice: JailState, bob: JailState) -> None:
    token = os.urandom(32)
    sealed = seal(token, alice.keystore.box_public)
    result = dispatch(alice, "open_sealed", {"sealed": b64e(sealed)})
    assert result == {"ok": True, "length": 32}
    to_bob = seal(token, bob.keystore.box_public)
    for sealed in (to_bob, os.urandom(80), b"", bytes(48)):
        assert refused(alice, "open_sealed", {"sealed": b64e(sealed)}).code == "decrypt_failed"


# --- the KKpsk0 handshake between two jails --------------------------------------------------


def _handshake(
    alice: JailState, bob: JailState, m: Minted
) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    first = dispatch(alice, "noise_initiate", initiate_args(m, bob.public["box_key"]))
    second = dispatch(bob, "noise_respond",
                      respond_args(m, alice.public["box_key"], first["message"]))
    done = dispatch(alice, "noise_finish",
                    {"handle": first["handle"], "message": second["message"]})
    return first, second, done


@pytest.mark.parametrize("suite", DESIGN_SUITES)
def test_handshake_gives_both_sides_matching_keys(
    alice: JailState, bob: JailState, suite: str
) -> None:
    m = mint(alice.public, bob.public, suite=suite)
    first, second, done = _handshake(alice, bob, m)
    assert done["send_key"] == second["recv_key"]
    assert done["recv_key"] == second["send_key"]
    assert done["send_key"] != done["recv_key"]
    assert done["handshake_hash"] == second["handshake_hash"]
    assert alice.pending_count == 0
    # No answer carries a token or a private key (only session keys, which the node needs).
    secrets = [m.token_a, m.token_b, bytes(alice.keystore.box_private),
               bytes(bob.keystore.box_private), bytes(alice.keystore.signing_key)]
    for answer in (first, second, done):
        text = json.dumps(answer)
        for secret in secrets:
            assert b64e(secret) not in text


def test_jail_initiator_interoperates_with_a_plain_noise_responder(
    alice: JailState, bob: JailState
) -> None:
    """Pins the prologue and the PSK: "openred/v3" ‖ grant ‖ signature, psk = token_a."""
    m = mint(alice.public, bob.public)
    first = dispatch(alice, "noise_initiate", initiate_args(m, bob.public["box_key"]))
    responder = noise.HandshakeState(
        pattern="KKpsk0", suite=SUITE, initiator=False,
        prologue=b"openred/v3" + m.grant + m.signature,
        s=noise.X25519KeyPair.from_private_bytes(bytes(bob.keystore.box_private)),
        rs=alice.keystore.box_public, psk=m.token_a,
    )
    responder.read_message(b64d(first["message"]))
    reply = responder.write_message()
    i_to_r, r_to_i = responder.split()
    done = dispatch(alice, "noise_finish", {"handle": first["handle"], "message": b64e(reply)})
    assert b64d(done["send_key"]) == i_to_r.key
    assert b64d(done["recv_key"]) == r_to_i.key


def test_token_from_another_grant_fails_the_responder(alice: JailState, bob: JailState) -> None:
    m = mint(alice.public, bob.public)
    other = mint(alice.public, bob.public)
    first = dispatch(alice, "noise_initiate", initiate_args(m, bob.public["box_key"]))
    args = respond_args(m, alice.public["box_key"], first["message"])
    args["sealed_token"] = b64e(other.sealed_b)
    error = refused(bob, "noise_respond", args)
    assert error.code == "handshake_failed"
    assert b64e(other.token_b) not in error.detail


def test_another_grant_signature_fails_the_responder(alice: JailState, bob: JailState) -> None:
    m = mint(alice.public, bob.public)
    first = dispatch(alice, "noise_initiate", initiate_args(m, bob.public["box_key"]))
    args = respond_args(m, alice.public["box_key"], first["message"])
    args["grant_signature"] = b64e(nacl.signing.SigningKey.generate().sign(m.grant).signature)
    assert refused(bob, "noise_respond", args).code == "handshake_failed"


def test_wrong_remote_static_fails(alice: JailState, bob: JailState) -> None:
    m = mint(alice.public, bob.public)
    first = dispatch(alice, "noise_initiate", initiate_args(m, bob.public["box_key"]))
    stranger = b64e(bytes(nacl.public.PrivateKey.generate().public_key))
    args = respond_args(m, stranger, first["message"])
    assert refused(bob, "noise_respond", args).code == "handshake_failed"


@pytest.mark.parametrize("position", [0, 31, 32, 47, -1])
def test_flipped_message_1_fails(alice: JailState, bob: JailState, position: int) -> None:
    m = mint(alice.public, bob.public)
    first = dispatch(alice, "noise_initiate", initiate_args(m, bob.public["box_key"]))
    message = bytearray(b64d(first["message"]))
    message[position] ^= 0x01
    args = respond_args(m, alice.public["box_key"], b64e(bytes(message)))
    assert refused(bob, "noise_respond", args).code == "handshake_failed"


@pytest.mark.parametrize("message", [b"", bytes(10), bytes(70_000)])
def test_truncated_or_oversized_message_1_fails(
    alice: JailState, bob: JailState, message: bytes
) -> None:
    m = mint(alice.public, bob.public)
    args = respond_args(m, alice.public["box_key"], b64e(message))
    assert refused(bob, "noise_respond", args).code == "handshake_failed"


def test_flipped_message_2_fails_and_the_handle_is_gone(alice: JailState, bob: JailState) -> None:
    m = mint(alice.public, bob.public)
    first = dispatch(alice, "noise_initiate", initiate_args(m, bob.public["box_key"]))
    second = dispatch(bob, "noise_respond",
                      respond_args(m, alice.public["box_key"], first["message"]))
    message = bytearray(b64d(second["message"]))
    message[-1] ^= 0x80
    finish = {"handle": first["handle"], "message": b64e(bytes(message))}
    assert refused(alice, "noise_finish", finish).code == "handshake_failed"
    finish["message"] = second["message"]  # even the genuine message is too late now
    assert refused(alice, "noise_finish", finish).code == "unknown_handle"


def test_a_handle_is_used_once(alice: JailState, bob: JailState) -> None:
    m = mint(alice.public, bob.public)
    first, second, _ = _handshake(alice, bob, m)
    again = {"handle": first["handle"], "message": second["message"]}
    assert refused(alice, "noise_finish", again).code == "unknown_handle"
    unknown = {"handle": "nope", "message": ""}
    assert refused(alice, "noise_finish", unknown).code == "unknown_handle"


def test_handles_expire(alice: JailState, bob: JailState, clock: Clock) -> None:
    m = mint(alice.public, bob.public)
    first = dispatch(alice, "noise_initiate", initiate_args(m, bob.public["box_key"]))
    second = dispatch(bob, "noise_respond",
                      respond_args(m, alice.public["box_key"], first["message"]))
    clock.now += 61
    finish = {"handle": first["handle"], "message": second["message"]}
    assert refused(alice, "noise_finish", finish).code == "unknown_handle"
    assert alice.pending_count == 0


def test_pending_handshakes_are_bounded(bob: JailState) -> None:
    state = JailState(Keystore.generate(), max_handshakes=3)
    handles = []
    for _ in range(5):
        m = mint(state.public, bob.public)
        handles.append(dispatch(state, "noise_initiate",
                                initiate_args(m, bob.public["box_key"]))["handle"])
    assert state.pending_count == 3
    assert len(set(handles)) == 5
    # The two oldest were dropped first.
    for handle in handles[:2]:
        assert refused(state, "noise_finish", {"handle": handle, "message": ""}).code == (
            "unknown_handle"
        )


def test_low_order_remote_static_is_a_clean_error(alice: JailState, bob: JailState) -> None:
    m = mint(alice.public, bob.public)
    for point in (bytes(32), (1).to_bytes(32, "little")):
        error = refused(alice, "noise_initiate", initiate_args(m, b64e(point)))
        assert error.code == "handshake_failed"
    assert refused(alice, "noise_initiate", initiate_args(m, b64e(bytes(31)))).code == (
        "bad_request"
    )


def test_grant_checks_before_any_handshake(alice: JailState, bob: JailState) -> None:
    m = mint(alice.public, bob.public)
    # Alice is not the responder, Bob is not the initiator of this grant.
    args = initiate_args(m, alice.public["box_key"])
    args["sealed_token"] = b64e(m.sealed_b)
    assert refused(bob, "noise_initiate", args).code == "refused"
    respond = respond_args(m, bob.public["box_key"], b64e(bytes(48)))
    respond["sealed_token"] = b64e(m.sealed_a)
    assert refused(alice, "noise_respond", respond).code == "refused"
    # The suite argument must be the grant's; the grant must be canonical.
    wrong_suite = initiate_args(m, bob.public["box_key"]) | {"suite": "25519_AESGCM_SHA256"}
    assert refused(alice, "noise_initiate", wrong_suite).code == "bad_request"
    loose = initiate_args(m, bob.public["box_key"]) | {"grant": b64e(m.grant + b" ")}
    assert refused(alice, "noise_initiate", loose).code == "bad_request"
    short_sig = initiate_args(m, bob.public["box_key"]) | {"grant_signature": b64e(bytes(63))}
    assert refused(alice, "noise_initiate", short_sig).code == "bad_request"
    garbage = initiate_args(m, bob.public["box_key"]) | {"sealed_token": b64e(os.urandom(80))}
    assert refused(alice, "noise_initiate", garbage).code == "decrypt_failed"


def test_unknown_suite_in_a_grant_is_refused(alice: JailState, bob: JailState) -> None:
    m = mint(alice.public, bob.public, suite="25519_Rot13_MD5")
    assert refused(alice, "noise_initiate", initiate_args(m, bob.public["box_key"])).code == (
        "bad_request"
    )


# --- wrap / unwrap ---------------------------------------------------------------------------


def test_wrap_roundtrip_with_fresh_nonces(alice: JailState) -> None:
    secret = os.urandom(64)
    one = dispatch(alice, "wrap", {"label": "session:abc", "plaintext": b64e(secret)})["wrapped"]
    two = dispatch(alice, "wrap", {"label": "session:abc", "plaintext": b64e(secret)})["wrapped"]
    assert one != two
    for wrapped in (one, two):
        out = dispatch(alice, "unwrap", {"label": "session:abc", "wrapped": wrapped})
        assert b64d(out["plaintext"]) == secret
    assert b64e(secret) not in one
    empty = dispatch(alice, "wrap", {"label": "x", "plaintext": ""})["wrapped"]
    assert dispatch(alice, "unwrap", {"label": "x", "wrapped": empty})["plaintext"] == ""


def test_unwrap_refuses_wrong_label_key_or_tampering(alice: JailState, bob: JailState) -> None:
    wrapped = b64d(dispatch(alice, "wrap", {"label": "a", "plaintext": b64e(b"k" * 32)})["wrapped"])
    assert refused(alice, "unwrap", {"label": "b", "wrapped": b64e(wrapped)}).code == (
        "decrypt_failed"
    )
    assert refused(bob, "unwrap", {"label": "a", "wrapped": b64e(wrapped)}).code == (
        "decrypt_failed"
    )
    for position in (0, 1, 24, 25, len(wrapped) - 1):
        tampered = bytearray(wrapped)
        tampered[position] ^= 0x01
        error = refused(alice, "unwrap", {"label": "a", "wrapped": b64e(bytes(tampered))})
        assert error.code == "decrypt_failed"
    for short in (b"", wrapped[:40], wrapped[:-1]):
        assert refused(alice, "unwrap", {"label": "a", "wrapped": b64e(short)}).code == (
            "decrypt_failed"
        )


@pytest.mark.parametrize("label", ["", "x" * 257, 7])
def test_wrap_labels_are_checked(alice: JailState, label: object) -> None:
    assert refused(alice, "wrap", {"label": label, "plaintext": ""}).code == "bad_request"


def test_no_operation_ever_answers_with_a_private_key_or_the_wrap_key(
    alice: JailState, bob: JailState
) -> None:
    m = mint(alice.public, bob.public)
    first, second, done = _handshake(alice, bob, m)
    wrapped = dispatch(alice, "wrap", {"label": "l", "plaintext": b64e(b"state")})
    answers = {
        "public_keys": dispatch(alice, "public_keys", {}),
        "sign": dispatch(alice, "sign", {"kind": "entry_hash", "data": b64e(bytes(32))}),
        "sign_batch": dispatch(alice, "sign_batch", {"kind": "entry_hash",
                                                     "data": b64e(bytes(32 * 3))}),
        "sign_many": dispatch(alice, "sign_many", {"items": [
            {"kind": "entry_hash", "data": b64e(bytes(32))}, {"kind": "raw", "data": ""}]}),
        "sign_checkpoint": dispatch(alice, "sign_checkpoint", {
            "body": b64e(checkpoint_for(alice.public["node_id"]))}),
        "witnessed": dispatch(alice, "witnessed", {"origin": alice.origin}),
        "open_sealed": dispatch(alice, "open_sealed", {"sealed": b64e(m.sealed_a)}),
        "noise_initiate": first, "noise_respond": second, "noise_finish": done,
        "wrap": wrapped,
        "unwrap": dispatch(alice, "unwrap", {"label": "l", "wrapped": wrapped["wrapped"]}),
    }
    assert set(answers) == set(OPS)  # every operation is covered
    secrets = [m.token_a, m.token_b]
    for state in (alice, bob):
        _, sign_sk = nacl.bindings.crypto_sign_seed_keypair(bytes(state.keystore.signing_key))
        secrets += [bytes(state.keystore.signing_key), sign_sk,
                    bytes(state.keystore.box_private), state.keystore.wrap_key]
    for op, answer in answers.items():
        text = json.dumps(answer)
        for secret in secrets:
            for chunk in (secret, secret[:16], secret[16:32]):  # whole or in part
                assert b64e(chunk)[:20] not in text, op
