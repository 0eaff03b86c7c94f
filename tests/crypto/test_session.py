"""Session ciphers: round trips, replay protection, epochs, and saved state."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crypto_jail.noise import SUITES, CipherState, HandshakeState, X25519KeyPair
from openred.crypto.session import (
    EPOCH_SHIFT,
    MAX_COUNTER,
    MAX_EPOCH,
    MAX_EPOCH_SKIP,
    RECV_RESERVE,
    WINDOW_BITS,
    FileSessionLedger,
    MemorySessionLedger,
    ReplayWindow,
    SessionCipher,
    SessionLedger,
    derive_epoch_key,
)
from openred.errors import CryptoError, DecryptionFailed, InvalidKey, ReplayDetected, UnknownSuite

SUITE_NAMES = (
    "25519_ChaChaPoly_SHA256",
    "25519_AESGCM_SHA256",
    "25519_ChaChaPoly_BLAKE2b",
    "25519_AESGCM_BLAKE2b",
)
K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def _pair(suite: str = SUITE_NAMES[0]) -> tuple[SessionCipher, SessionCipher]:
    a = SessionCipher.from_split(
        suite, initiator=True, initiator_to_responder=K1, responder_to_initiator=K2
    )
    b = SessionCipher.from_split(
        suite, initiator=False, initiator_to_responder=K1, responder_to_initiator=K2
    )
    return a, b


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_round_trip_both_directions(suite: str) -> None:
    a, b = _pair(suite)
    for i in range(5):
        counter, ct = a.encrypt(b"request %d" % i, ad=b"session-1")
        assert counter == i
        assert b.decrypt(counter, ct, ad=b"session-1") == b"request %d" % i
        counter, ct = b.encrypt(b"answer %d" % i)
        assert a.decrypt(counter, ct) == b"answer %d" % i


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_session_from_a_real_handshake_matches_noise_transport(suite: str) -> None:
    init_s, resp_s, psk = X25519KeyPair.generate(), X25519KeyPair.generate(), os.urandom(32)
    init = HandshakeState(
        pattern="KKpsk0", suite=suite, initiator=True, prologue=b"p",
        s=init_s, rs=resp_s.public, psk=psk,
    )
    resp = HandshakeState(
        pattern="KKpsk0", suite=suite, initiator=False, prologue=b"p",
        s=resp_s, rs=init_s.public, psk=psk,
    )
    resp.read_message(init.write_message())
    init.read_message(resp.write_message())
    i2r, r2i = init.split()
    a = SessionCipher.from_split(
        suite, initiator=True, initiator_to_responder=i2r.key, responder_to_initiator=r2i.key
    )
    counter, ct = a.encrypt(b"hello", ad=b"x")
    # the explicit counter is exactly the Noise nonce: a Noise CipherState at n opens it
    noise_side = CipherState(SUITES[suite].cipher, i2r.key, n=counter)
    assert noise_side.decrypt_with_ad(b"x", ct) == b"hello"


def test_replay_is_rejected() -> None:
    a, b = _pair()
    counter, ct = a.encrypt(b"once")
    assert b.decrypt(counter, ct) == b"once"
    with pytest.raises(ReplayDetected):
        b.decrypt(counter, ct)


def test_below_window_is_rejected() -> None:
    a, b = _pair()
    old = a.encrypt(b"old")
    assert b.window.width >= 2048
    for _ in range(b.window.width):
        a.encrypt(b"")
    counter, ct = a.encrypt(b"new")
    b.decrypt(counter, ct)
    with pytest.raises(ReplayDetected, match="below"):
        b.decrypt(*old)


def test_out_of_order_within_window_is_accepted_once() -> None:
    a, b = _pair()
    sent = [a.encrypt(b"m%d" % i) for i in range(50)]
    for counter, ct in reversed(sent):
        assert b.decrypt(counter, ct) == b"m%d" % counter
    for counter, ct in sent:
        with pytest.raises(ReplayDetected):
            b.decrypt(counter, ct)


def test_tampered_ciphertext_ad_and_counter_are_rejected() -> None:
    a, b = _pair()
    counter, ct = a.encrypt(b"payload", ad=b"ad")
    for i in range(len(ct)):
        tampered = bytearray(ct)
        tampered[i] ^= 0x01
        with pytest.raises(DecryptionFailed):
            b.decrypt(counter, bytes(tampered), ad=b"ad")
    with pytest.raises(DecryptionFailed):
        b.decrypt(counter, ct, ad=b"other")
    with pytest.raises(DecryptionFailed):
        b.decrypt(counter + 1, ct, ad=b"ad")
    with pytest.raises(DecryptionFailed):
        b.decrypt(counter, ct[:-1], ad=b"ad")
    with pytest.raises(DecryptionFailed):
        b.decrypt(counter, b"", ad=b"ad")
    # failures marked nothing: the genuine message is still accepted, and the counter+1 slot too
    assert b.decrypt(counter, ct, ad=b"ad") == b"payload"
    assert b.decrypt(*a.encrypt(b"next"), ad=b"") == b"next"


def test_messages_do_not_cross_directions() -> None:
    a, b = _pair()
    counter, ct = a.encrypt(b"to b")
    with pytest.raises(DecryptionFailed):
        a.decrypt(counter, ct)  # a's receive key is the other direction's
    assert b.decrypt(counter, ct) == b"to b"


def test_wrong_key_is_rejected() -> None:
    a, _ = _pair()
    stranger = SessionCipher(SUITE_NAMES[0], bytes(32), bytes(32))
    counter, ct = a.encrypt(b"secret")
    with pytest.raises(DecryptionFailed):
        stranger.decrypt(counter, ct)


def test_other_suite_is_rejected() -> None:
    a, _ = _pair(SUITE_NAMES[0])
    _, b = _pair(SUITE_NAMES[1])
    with pytest.raises(DecryptionFailed):
        b.decrypt(*a.encrypt(b"x"))


@pytest.mark.parametrize("counter", [-1, MAX_COUNTER, MAX_COUNTER + 1])
def test_counter_out_of_range_is_rejected(counter: int) -> None:
    _, b = _pair()
    with pytest.raises(DecryptionFailed):
        b.decrypt(counter, bytes(32))


def test_epoch_rotation_is_followed_by_the_receiver() -> None:
    a, b = _pair()
    b.decrypt(*a.encrypt(b"epoch 0"))
    assert a.rotate() == 1
    counter, ct = a.encrypt(b"epoch 1")
    assert counter == 1 << EPOCH_SHIFT
    assert b.decrypt(counter, ct) == b"epoch 1"
    assert b.recv_epoch == 1
    assert a.rotate(5) == 5
    counter, ct = a.encrypt(b"epoch 5")
    assert counter >> EPOCH_SHIFT == 5
    assert b.decrypt(counter, ct) == b"epoch 5"
    assert b.recv_epoch == 5
    # the other direction rotates independently
    assert b.send_epoch == 0
    assert a.decrypt(*b.encrypt(b"still epoch 0")) == b"still epoch 0"


def test_epoch_keys_follow_the_documented_hkdf_chain() -> None:
    from cryptography.hazmat.primitives.ciphers.aead import ChaCha20Poly1305
    from cryptography.hazmat.primitives.hashes import SHA256
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    key1 = HKDF(SHA256(), 32, b"", b"openred/v3 session epoch" + (1).to_bytes(8, "big")).derive(K1)
    key2 = HKDF(SHA256(), 32, b"", b"openred/v3 session epoch" + (2).to_bytes(8, "big")).derive(
        key1
    )
    assert derive_epoch_key(K1, 1) == key1 and derive_epoch_key(key1, 2) == key2
    a, _ = _pair()
    a.rotate(2)
    counter, ct = a.encrypt(b"x")
    nonce = bytes(4) + counter.to_bytes(8, "little")
    assert ChaCha20Poly1305(key2).decrypt(nonce, ct, b"") == b"x"


def test_old_epoch_ciphertext_fails_under_the_new_key() -> None:
    a, b = _pair()
    counter, ct = a.encrypt(b"epoch 0")
    relabelled = counter + (1 << EPOCH_SHIFT)  # same index, claimed to be epoch 1
    with pytest.raises(DecryptionFailed):
        b.decrypt(relabelled, ct)
    assert b.recv_epoch == 0  # a forged epoch does not move the receiver
    assert b.decrypt(counter, ct) == b"epoch 0"


def test_in_flight_old_epoch_messages_are_refused_after_rotation() -> None:
    a, b = _pair()
    late = a.encrypt(b"sent before rotating")
    a.rotate()
    b.decrypt(*a.encrypt(b"after"))
    with pytest.raises(ReplayDetected):
        b.decrypt(*late)


def test_rotation_limits() -> None:
    a, b = _pair()
    with pytest.raises(CryptoError):
        a.rotate(0)
    with pytest.raises(CryptoError):
        a.rotate(MAX_EPOCH_SKIP + 1)
    # a counter too far ahead is refused without deriving keys forever
    with pytest.raises(DecryptionFailed):
        b.decrypt((MAX_EPOCH_SKIP + 1) << EPOCH_SHIFT, bytes(32))


def test_epoch_advances_by_itself_when_the_index_space_runs_out() -> None:
    a = SessionCipher(SUITE_NAMES[0], K1, K2, send_counter=(1 << EPOCH_SHIFT) - 1)
    _, b = _pair()
    first = a.encrypt(b"last of epoch 0")
    second = a.encrypt(b"first of epoch 1")
    assert first[0] == (1 << EPOCH_SHIFT) - 1 and second[0] == 1 << EPOCH_SHIFT
    assert b.decrypt(*first) == b"last of epoch 0"
    assert b.decrypt(*second) == b"first of epoch 1"


def test_reserved_counter_is_never_sent() -> None:
    a = SessionCipher(SUITE_NAMES[0], K1, K2, send_epoch=MAX_EPOCH, send_counter=MAX_COUNTER - 1)
    counter, _ = a.encrypt(b"last")
    assert counter == MAX_COUNTER - 1
    with pytest.raises(CryptoError):
        a.encrypt(b"one too many")
    with pytest.raises(CryptoError):
        a.rotate()


def test_bad_construction_is_refused() -> None:
    with pytest.raises(InvalidKey):
        SessionCipher(SUITE_NAMES[0], bytes(31), K2)
    with pytest.raises(UnknownSuite):
        SessionCipher("25519_Rot13_MD5", K1, K2)
    with pytest.raises(CryptoError):
        SessionCipher(SUITE_NAMES[0], K1, K2, send_epoch=1, send_counter=5)


def _restore(state: bytes, ledger: SessionLedger, session_id: str = "s1") -> SessionCipher:
    return SessionCipher.from_state(state, ledger=ledger, session_id=session_id)


def test_restored_session_keeps_replay_protection() -> None:
    ledger = MemorySessionLedger()
    a, b = _pair()
    seen = [a.encrypt(b"m%d" % i) for i in range(10)]
    for message in seen[:8]:
        b.decrypt(*message)
    restored = _restore(b.to_state(), ledger)
    for message in seen[:8]:
        with pytest.raises(ReplayDetected):
            restored.decrypt(*message)
    # not-yet-seen messages still get through, once
    assert restored.decrypt(*seen[9]) == b"m9"
    assert restored.decrypt(*seen[8]) == b"m8"
    with pytest.raises(ReplayDetected):
        restored.decrypt(*seen[8])


def test_restored_session_never_reuses_a_send_nonce() -> None:
    ledger = MemorySessionLedger()
    a, b = _pair()
    state = a.to_state()
    used = {a.encrypt(b"after the save")[0] for _ in range(3)}  # then the node crashes
    restored = _restore(state, ledger)
    counter, ct = restored.encrypt(b"after restart")
    assert counter not in used and restored.send_epoch == a.send_epoch + 1
    assert b.decrypt(counter, ct) == b"after restart"


def _xor(x: bytes, y: bytes) -> bytes:
    return bytes(i ^ j for i, j in zip(x, y, strict=False))


@pytest.mark.parametrize("suite", SUITE_NAMES)
def test_restoring_one_saved_state_twice_never_encrypts_twice_under_one_key_and_nonce(
    suite: str,
) -> None:
    # Both AEADs are counter-mode: one (key, nonce) used twice shows as c1 ^ c2 == p1 ^ p2.
    ledger = MemorySessionLedger()
    a, b = _pair(suite)
    state = a.to_state()
    p1, p2 = b"attack at dawn!!", b"retreat at dusk!"
    first = _restore(state, ledger)  # a crash, then the same saved state again
    second = _restore(state, ledger)
    (n1, c1), (n2, c2) = first.encrypt(p1), second.encrypt(p2)
    assert first.send_epoch != second.send_epoch
    assert _xor(c1[: len(p1)], c2[: len(p2)]) != _xor(p1, p2)
    assert b.decrypt(n1, c1) == p1 and b.decrypt(n2, c2) == p2  # and both still arrive
    # A copy that rotates (or runs out of counters) asks the ledger too: no epoch twice.
    epochs = {first.send_epoch, second.send_epoch, first.rotate(), second.rotate()}
    assert len(epochs) == 4


@pytest.mark.parametrize("suite", [SUITE_NAMES[0], SUITE_NAMES[1]])
def test_a_restored_receiver_never_accepts_a_message_again(suite: str) -> None:
    ledger = MemorySessionLedger()
    a, _ = _pair(suite)
    b = SessionCipher.from_split(suite, initiator=False, initiator_to_responder=K1,
                                 responder_to_initiator=K2, ledger=ledger, session_id="s1")
    state = b.to_state()  # saved before any message
    accepted = [a.encrypt(b"m%d" % i) for i in range(5)]
    for message in accepted:
        b.decrypt(*message)  # accepted after the save; then the node crashes
    restored = _restore(state, ledger)
    for message in accepted:
        with pytest.raises(ReplayDetected):
            restored.decrypt(*message)
    # Messages past the durable mark get through; the ones in between are lost, never doubled.
    assert ledger.recv_mark("s1") == 0 + RECV_RESERVE  # raised once, at the first message
    for _ in range(RECV_RESERVE - 4):  # counters 5..RECV_RESERVE
        counter, ct = a.encrypt(b"gap")
        with pytest.raises(ReplayDetected):
            restored.decrypt(counter, ct)
    assert restored.decrypt(*a.encrypt(b"after")) == b"after"


def test_the_receive_mark_is_written_once_per_reserve() -> None:
    class Counting(MemorySessionLedger):
        writes = 0

        def raise_recv_mark(self, session_id: str, mark: int) -> None:
            Counting.writes += 1
            super().raise_recv_mark(session_id, mark)

    ledger = Counting()
    a, _ = _pair()
    b = SessionCipher.from_split(SUITE_NAMES[0], initiator=False, initiator_to_responder=K1,
                                 responder_to_initiator=K2, ledger=ledger, session_id="s")
    for _ in range(10 * RECV_RESERVE):
        b.decrypt(*a.encrypt(b"x"))
    assert Counting.writes == 10
    forged = a.encrypt(b"y")
    with pytest.raises(DecryptionFailed):  # unauthenticated counters never move the mark
        b.decrypt(forged[0] + 5000, forged[1])
    assert Counting.writes == 10


def test_the_receive_reserve_trades_writes_for_what_a_crash_loses() -> None:
    ledger = MemorySessionLedger()
    a, _ = _pair()
    b = SessionCipher.from_split(SUITE_NAMES[0], initiator=False, initiator_to_responder=K1,
                                 responder_to_initiator=K2, ledger=ledger, session_id="s",
                                 recv_reserve=1000)
    state = b.to_state()
    for _ in range(10):
        b.decrypt(*a.encrypt(b"x"))
    assert ledger.recv_mark("s") == 1000
    restored = SessionCipher.from_state(state, ledger=ledger, session_id="s", recv_reserve=1000)
    assert not restored.window.accepts(1000) and restored.window.accepts(1001)
    with pytest.raises(CryptoError):
        SessionCipher(SUITE_NAMES[0], K1, K2, recv_reserve=0)


def test_the_file_ledger_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    ledger = FileSessionLedger(path)
    assert ledger.reserve_send_epoch("s", 3) == 3
    ledger.raise_recv_mark("s", 70)
    again = FileSessionLedger(path)  # what a restarted node reads
    assert again.reserve_send_epoch("s", 3) == 4
    assert again.recv_mark("s") == 70 and again.recv_mark("other") == -1
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == [".ledger.json.lock", "ledger.json"]
    path.write_text('{"send": {"s": "x"}, "recv": {}}')
    with pytest.raises(CryptoError, match="malformed"):
        FileSessionLedger(path)


RACE = """
import sys
from pathlib import Path
from openred.crypto.session import FileSessionLedger
ledger = FileSessionLedger(Path(sys.argv[1]))
print(" ".join(str(ledger.reserve_send_epoch("s", 1)) for _ in range(25)))
"""


def test_processes_sharing_a_file_ledger_never_get_the_same_epoch(tmp_path: Path) -> None:
    path = tmp_path / "ledger.json"
    procs = [subprocess.Popen([sys.executable, "-c", RACE, str(path)], stdout=subprocess.PIPE,
                              text=True) for _ in range(4)]
    epochs = [int(e) for proc in procs for e in proc.communicate(timeout=60)[0].split()]
    assert all(proc.returncode == 0 for proc in procs)
    assert sorted(epochs) == list(range(1, 101))  # 100 reservations, 100 distinct epochs


def test_a_ledger_needs_a_session_id() -> None:
    with pytest.raises(CryptoError):
        SessionCipher(SUITE_NAMES[0], K1, K2, ledger=MemorySessionLedger())


def test_restored_session_keeps_epochs_and_suite() -> None:
    ledger = MemorySessionLedger()
    a, b = _pair(SUITE_NAMES[3])
    a.rotate(3)
    b.decrypt(*a.encrypt(b"x"))
    restored_b = _restore(b.to_state(), ledger, "b")
    assert restored_b.suite == SUITE_NAMES[3] and restored_b.recv_epoch == 3
    assert restored_b.decrypt(*a.encrypt(b"y")) == b"y"
    restored_a = _restore(a.to_state(), ledger, "a")
    assert restored_b.decrypt(*restored_a.encrypt(b"z")) == b"z"


@pytest.mark.parametrize(
    "mangle",
    [
        lambda s: s[:-1],
        lambda s: s + b"\x00",
        lambda s: b"XXXX" + s[4:],
        lambda s: s[:4] + b"\x02" + s[5:],
        lambda s: b"",
        lambda s: s[:6] + b"\xff" + s[7:],  # suite name no longer ascii/known
    ],
)
def test_malformed_state_is_refused(mangle: Callable[[bytes], bytes]) -> None:
    _, b = _pair()
    state = b.to_state()
    with pytest.raises(CryptoError):
        _restore(mangle(state), MemorySessionLedger())


# --- the window on its own --------------------------------------------------------------------


def test_window_edges() -> None:
    assert ReplayWindow().size == WINDOW_BITS and ReplayWindow().width == WINDOW_BITS - 64
    w = ReplayWindow(128)  # two blocks: tracks the last 64 counters
    w.mark(100)
    assert w.accepts(101) and w.accepts(37) and not w.accepts(36) and not w.accepts(100)
    w.mark(10_000)  # a jump larger than the ring clears it
    assert not w.accepts(9_936) and w.accepts(9_937) and not w.accepts(10_000)
    for size in (10, 64, 192):
        with pytest.raises(ValueError):
            ReplayWindow(size)
    with pytest.raises(ValueError):
        ReplayWindow(128, blocks=[0])


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.one_of(
            st.integers(0, 300), st.integers(0, 1_000), st.integers(0, 20_000),
            st.integers(0, 2**64 - 2),
        ),
        max_size=200,
    )
)
def test_window_accepts_each_counter_at_most_once_and_never_below(counters: list[int]) -> None:
    w = ReplayWindow(256)
    accepted: set[int] = set()
    highest = -1
    for counter in counters:
        fresh = counter not in accepted
        in_window = counter > highest - w.width
        assert w.accepts(counter) == (fresh and in_window)
        if w.accepts(counter):
            w.mark(counter)
            accepted.add(counter)
            highest = max(highest, counter)
        assert w.top == highest


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 299), max_size=300))
def test_session_accepts_each_message_once_in_any_delivery_order(order: list[int]) -> None:
    sender = SessionCipher(SUITE_NAMES[0], K1, K2)
    receiver = SessionCipher(SUITE_NAMES[0], K2, K1, window=ReplayWindow(128))
    sent = [sender.encrypt(b"%d" % i) for i in range(300)]
    accepted: set[int] = set()
    highest = -1
    for i in order:
        counter, ct = sent[i]
        if counter in accepted or counter <= highest - receiver.window.width:
            with pytest.raises(ReplayDetected):
                receiver.decrypt(counter, ct)
        else:
            assert receiver.decrypt(counter, ct) == b"%d" % i
            accepted.add(counter)
            highest = max(highest, counter)
