"""Noise KK/KKpsk0: the published vectors for every suite, then every way a handshake must fail."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from crypto_jail.noise import (
    MAX_NONCE,
    SUITES,
    CipherState,
    HandshakeState,
    NoiseError,
    X25519KeyPair,
    protocol_name,
)

MAIN_SUITES = (
    "25519_ChaChaPoly_SHA256",
    "25519_AESGCM_SHA256",
    "25519_ChaChaPoly_BLAKE2b",
    "25519_AESGCM_BLAKE2b",
)
PROLOGUE = b"openred/v3 test prologue"


def _load(vectors_dir: Path, name: str) -> Any:
    return json.loads((vectors_dir / name).read_text())


def _vector_side(v: dict[str, Any], side: str, pattern: str, suite: str) -> HandshakeState:
    h = bytes.fromhex
    psks = v.get(f"{side}_psks")
    return HandshakeState(
        pattern=pattern,
        suite=suite,
        initiator=side == "init",
        prologue=h(v[f"{side}_prologue"]),
        s=X25519KeyPair.from_private_bytes(h(v[f"{side}_static"])),
        rs=h(v[f"{side}_remote_static"]),
        psk=h(psks[0]) if psks else None,
        e=X25519KeyPair.from_private_bytes(h(v[f"{side}_ephemeral"])),
    )


def test_every_published_vector(vectors_dir: Path) -> None:
    vectors = _load(vectors_dir, "noise_KK_KKpsk0_25519.json")["vectors"]
    checked: set[str] = set()
    for v in vectors:
        name = v["protocol_name"]
        _, pattern, suite = name.split("_", 2)
        assert protocol_name(pattern, suite) == name.encode()
        init = _vector_side(v, "init", pattern, suite)
        resp = _vector_side(v, "resp", pattern, suite)
        messages = v["messages"]
        assert len(messages) > 2, name
        for index, message in enumerate(messages[:2]):
            writer, reader = (init, resp) if index == 0 else (resp, init)
            payload = bytes.fromhex(message["payload"])
            ciphertext = writer.write_message(payload)
            assert ciphertext.hex() == message["ciphertext"], f"{name} message {index}"
            assert reader.read_message(ciphertext) == payload
        assert init.complete and resp.complete
        assert init.handshake_hash.hex() == v["handshake_hash"], name
        assert resp.handshake_hash.hex() == v["handshake_hash"], name
        i_send, i_recv = init.split()
        r_recv, r_send = resp.split()
        for index, message in enumerate(messages[2:]):
            sender, receiver = (i_send, r_recv) if index % 2 == 0 else (r_send, i_recv)
            payload = bytes.fromhex(message["payload"])
            ciphertext = sender.encrypt_with_ad(b"", payload)
            assert ciphertext.hex() == message["ciphertext"], f"{name} transport {index}"
            assert receiver.decrypt_with_ad(b"", ciphertext) == payload
        checked.add(name)
    assert len(checked) == 16
    assert {n.split("_", 2)[2] for n in checked} == set(SUITES)


# --- helpers for live handshakes --------------------------------------------------------------


@dataclass
class Pair:
    init_static: X25519KeyPair
    resp_static: X25519KeyPair
    psk: bytes


@pytest.fixture(scope="module")
def pair() -> Pair:
    return Pair(X25519KeyPair.generate(), X25519KeyPair.generate(), bytes(range(32)))


def _initiator(p: Pair, suite: str = MAIN_SUITES[0], **kw: Any) -> HandshakeState:
    args: dict[str, Any] = {
        "pattern": "KKpsk0",
        "suite": suite,
        "initiator": True,
        "prologue": PROLOGUE,
        "s": p.init_static,
        "rs": p.resp_static.public,
        "psk": p.psk,
    }
    args.update(kw)
    return HandshakeState(**args)


def _responder(p: Pair, suite: str = MAIN_SUITES[0], **kw: Any) -> HandshakeState:
    args: dict[str, Any] = {
        "pattern": "KKpsk0",
        "suite": suite,
        "initiator": False,
        "prologue": PROLOGUE,
        "s": p.resp_static,
        "rs": p.init_static.public,
        "psk": p.psk,
    }
    args.update(kw)
    return HandshakeState(**args)


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_live_handshake_gives_matching_transport_keys(pair: Pair, suite: str) -> None:
    init, resp = _initiator(pair, suite), _responder(pair, suite)
    assert resp.read_message(init.write_message(b"hello")) == b"hello"
    assert init.read_message(resp.write_message(b"welcome")) == b"welcome"
    assert init.handshake_hash == resp.handshake_hash
    i_send, i_recv = init.split()
    r_recv, r_send = resp.split()
    assert i_send.key == r_recv.key and i_recv.key == r_send.key
    assert i_send.key != i_recv.key
    assert r_recv.decrypt_with_ad(b"ad", i_send.encrypt_with_ad(b"ad", b"ping")) == b"ping"
    assert i_recv.decrypt_with_ad(b"", r_send.encrypt_with_ad(b"", b"pong")) == b"pong"


def test_fresh_ephemerals_make_every_handshake_different(pair: Pair) -> None:
    first, second = _initiator(pair), _initiator(pair)
    assert first.write_message() != second.write_message()


def test_static_key_is_only_used_through_dh(pair: Pair) -> None:
    """The jail passes an object exposing only ``public`` and ``dh``: that must suffice."""

    class OpaqueKey:
        def __init__(self, inner: X25519KeyPair) -> None:
            self._inner = inner
            self.calls = 0

        @property
        def public(self) -> bytes:
            return self._inner.public

        def dh(self, remote_public: bytes) -> bytes:
            self.calls += 1
            return self._inner.dh(remote_public)

    opaque = OpaqueKey(pair.resp_static)
    init, resp = _initiator(pair), _responder(pair, s=opaque)
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    assert init.handshake_hash == resp.handshake_hash
    assert opaque.calls == 2  # responder: es (s, re) and ss


def test_foreign_dh_exception_becomes_noise_error(pair: Pair) -> None:
    class Broken:
        public = pair.init_static.public

        def dh(self, remote_public: bytes) -> bytes:
            raise RuntimeError("jail went away")

    with pytest.raises(NoiseError):
        _initiator(pair, s=Broken()).write_message()


# --- tampering --------------------------------------------------------------------------------


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_every_flipped_byte_of_message_1_fails(pair: Pair, suite: str) -> None:
    e = X25519KeyPair.generate()
    message = _initiator(pair, suite, e=e).write_message(b"payload")
    assert len(message) == 32 + 7 + 16
    for i in range(len(message)):
        tampered = bytearray(message)
        tampered[i] ^= 0x01
        with pytest.raises(NoiseError):
            _responder(pair, suite).read_message(bytes(tampered))
    # the untouched message still works, so the failures above are the flips' doing
    assert _responder(pair, suite).read_message(message) == b"payload"


@pytest.mark.parametrize("suite", MAIN_SUITES)
def test_every_flipped_byte_of_message_2_fails(pair: Pair, suite: str) -> None:
    init_e, resp_e = X25519KeyPair.generate(), X25519KeyPair.generate()
    message_1 = _initiator(pair, suite, e=init_e).write_message()
    resp = _responder(pair, suite, e=resp_e)
    resp.read_message(message_1)
    message_2 = resp.write_message(b"answer")
    for i in range(len(message_2)):
        tampered = bytearray(message_2)
        tampered[i] ^= 0x01
        init = _initiator(pair, suite, e=init_e)
        init.write_message()
        with pytest.raises(NoiseError):
            init.read_message(bytes(tampered))
        assert not init.complete
    init = _initiator(pair, suite, e=init_e)
    init.write_message()
    assert init.read_message(message_2) == b"answer"


def test_wrong_psk_fails(pair: Pair) -> None:
    message = _initiator(pair).write_message()
    with pytest.raises(NoiseError):
        _responder(pair, psk=bytes(32)).read_message(message)


def test_wrong_prologue_fails(pair: Pair) -> None:
    message = _initiator(pair).write_message()
    with pytest.raises(NoiseError):
        _responder(pair, prologue=b"another grant").read_message(message)


def test_responder_expecting_another_static_key_fails(pair: Pair) -> None:
    message = _initiator(pair).write_message()
    stranger = X25519KeyPair.generate().public
    with pytest.raises(NoiseError):
        _responder(pair, rs=stranger).read_message(message)


def test_initiator_talking_to_an_impostor_fails(pair: Pair) -> None:
    init = _initiator(pair)
    message_1 = init.write_message()
    impostor = _responder(pair, s=X25519KeyPair.generate())
    with pytest.raises(NoiseError):
        impostor.read_message(message_1)


def test_mismatched_suites_fail(pair: Pair) -> None:
    message = _initiator(pair, MAIN_SUITES[0]).write_message()
    with pytest.raises(NoiseError):
        _responder(pair, MAIN_SUITES[1]).read_message(message)


def test_kk_and_kkpsk0_do_not_interoperate(pair: Pair) -> None:
    message = _initiator(pair).write_message()
    with pytest.raises(NoiseError):
        _responder(pair, pattern="KK", psk=None).read_message(message)


def test_swapped_roles_fail(pair: Pair) -> None:
    message = _initiator(pair).write_message()
    other_initiator = _initiator(pair, s=pair.resp_static, rs=pair.init_static.public)
    with pytest.raises(NoiseError):
        other_initiator.read_message(message)
    responder = _responder(pair)
    with pytest.raises(NoiseError):
        responder.write_message()


def test_truncated_messages_fail(pair: Pair) -> None:
    init_e = X25519KeyPair.generate()
    message_1 = _initiator(pair, e=init_e).write_message(b"abc")
    for length in range(len(message_1)):
        with pytest.raises(NoiseError):
            _responder(pair).read_message(message_1[:length])
    resp = _responder(pair)
    resp.read_message(message_1)
    message_2 = resp.write_message()
    for length in range(len(message_2)):
        init = _initiator(pair, e=init_e)
        init.write_message(b"abc")
        with pytest.raises(NoiseError):
            init.read_message(message_2[:length])


@pytest.mark.parametrize("extra", [b"\x00", b"\x01" * 16, b"x" * 1000])
def test_extended_messages_fail(pair: Pair, extra: bytes) -> None:
    message_1 = _initiator(pair).write_message(b"abc")
    with pytest.raises(NoiseError):
        _responder(pair).read_message(message_1 + extra)


def test_oversized_messages_are_refused(pair: Pair) -> None:
    with pytest.raises(NoiseError):
        _initiator(pair).write_message(bytes(65535))
    with pytest.raises(NoiseError):
        _responder(pair).read_message(bytes(65536))


def test_state_is_dead_after_a_failed_read(pair: Pair) -> None:
    init = _initiator(pair)
    message = init.write_message()
    resp = _responder(pair)
    with pytest.raises(NoiseError):
        resp.read_message(message[:-1] + bytes([message[-1] ^ 1]))
    with pytest.raises(NoiseError):
        resp.read_message(message)  # the genuine message no longer helps
    with pytest.raises(NoiseError):
        resp.write_message()
    with pytest.raises(NoiseError):
        resp.split()


def test_no_split_or_hash_before_completion(pair: Pair) -> None:
    init = _initiator(pair)
    init.write_message()
    with pytest.raises(NoiseError):
        init.split()
    with pytest.raises(NoiseError):
        _ = init.handshake_hash


def test_no_messages_after_completion(pair: Pair) -> None:
    init, resp = _initiator(pair), _responder(pair)
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    with pytest.raises(NoiseError):
        init.write_message()
    with pytest.raises(NoiseError):
        resp.read_message(b"\x00" * 64)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"psk": None},
        {"psk": b"short"},
        {"pattern": "KK"},  # KK with a PSK
        {"pattern": "XX"},
        {"suite": "25519_Rot13_MD5"},
        {"rs": bytes(31)},
    ],
)
def test_bad_parameters_are_refused(pair: Pair, kwargs: dict[str, Any]) -> None:
    with pytest.raises(NoiseError):
        _initiator(pair, **kwargs)


def test_bad_private_key_length_is_refused() -> None:
    with pytest.raises(NoiseError):
        X25519KeyPair.from_private_bytes(bytes(31))


def test_private_bytes_round_trip() -> None:
    key = X25519KeyPair.generate()
    assert X25519KeyPair.from_private_bytes(key.private_bytes()).public == key.public


# --- low-order points (Wycheproof) ------------------------------------------------------------


@pytest.fixture(scope="module")
def low_order_publics(vectors_dir: Path) -> list[bytes]:
    data = _load(vectors_dir, "wycheproof_x25519_test.json")
    keys = [
        bytes.fromhex(t["public"])
        for g in data["testGroups"]
        for t in g["tests"]
        if "LowOrderPublic" in t["flags"]
    ]
    assert len(keys) == 31
    return keys


def test_low_order_remote_static_fails(pair: Pair, low_order_publics: list[bytes]) -> None:
    genuine = _initiator(pair).write_message()
    for point in low_order_publics:
        with pytest.raises(NoiseError):
            _initiator(pair, rs=point).write_message()
        with pytest.raises(NoiseError):
            _responder(pair, rs=point).read_message(genuine)


def test_low_order_remote_ephemeral_fails(pair: Pair, low_order_publics: list[bytes]) -> None:
    init_e = X25519KeyPair.generate()
    message_1 = _initiator(pair, e=init_e).write_message()
    resp = _responder(pair)
    resp.read_message(message_1)
    message_2 = resp.write_message()
    for point in low_order_publics:
        with pytest.raises(NoiseError):
            _responder(pair).read_message(point + message_1[32:])
        init = _initiator(pair, e=init_e)
        init.write_message()
        with pytest.raises(NoiseError):
            init.read_message(point + message_2[32:])


# --- CipherState ------------------------------------------------------------------------------


def test_cipher_state_refuses_the_reserved_nonce() -> None:
    cs = CipherState(SUITES[MAIN_SUITES[0]].cipher, bytes(32))
    cs.set_nonce(MAX_NONCE - 1)
    cs.encrypt_with_ad(b"", b"last")
    with pytest.raises(NoiseError):
        cs.encrypt_with_ad(b"", b"one too many")
    with pytest.raises(NoiseError):
        cs.set_nonce(MAX_NONCE + 1)


def test_cipher_state_failed_decrypt_does_not_advance_the_nonce() -> None:
    cipher = SUITES[MAIN_SUITES[1]].cipher
    sender, receiver = CipherState(cipher, bytes(32)), CipherState(cipher, bytes(32))
    ciphertext = sender.encrypt_with_ad(b"ad", b"message")
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"other ad", ciphertext)
    with pytest.raises(NoiseError):
        receiver.decrypt_with_ad(b"ad", ciphertext[:-1])
    assert receiver.decrypt_with_ad(b"ad", ciphertext) == b"message"


def test_rekey_changes_the_key_on_both_sides_alike() -> None:
    cipher = SUITES[MAIN_SUITES[0]].cipher
    a, b = CipherState(cipher, bytes(32)), CipherState(cipher, bytes(32))
    old = a.encrypt_with_ad(b"", b"x")
    b.decrypt_with_ad(b"", old)
    a.rekey()
    b.rekey()
    assert a.key == b.key != bytes(32)
    assert b.decrypt_with_ad(b"", a.encrypt_with_ad(b"", b"y")) == b"y"


def test_empty_cipher_state_has_no_key() -> None:
    cs = CipherState(SUITES[MAIN_SUITES[0]].cipher)
    assert cs.encrypt_with_ad(b"", b"plain") == b"plain"
    with pytest.raises(NoiseError):
        _ = cs.key
