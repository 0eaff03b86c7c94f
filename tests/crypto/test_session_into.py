"""SessionCipher.decrypt_into against decrypt: the same answers, refusals, marks and state."""

from __future__ import annotations

import os
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from openred.crypto.session import (
    EPOCH_SHIFT,
    MAX_COUNTER,
    WINDOW_BITS,
    MemorySessionLedger,
    SessionCipher,
)
from openred.errors import CryptoError

SUITES = ("25519_ChaChaPoly_SHA256", "25519_AESGCM_SHA256")
K1 = bytes(range(32))
K2 = bytes(range(32, 64))


def _receiver(suite: str) -> tuple[SessionCipher, MemorySessionLedger]:
    ledger = MemorySessionLedger()
    return SessionCipher.from_split(suite, initiator=False, initiator_to_responder=K1,
                                    responder_to_initiator=K2, ledger=ledger,
                                    session_id="s", recv_reserve=8), ledger


def _sender(suite: str) -> SessionCipher:
    return SessionCipher.from_split(suite, initiator=True, initiator_to_responder=K1,
                                    responder_to_initiator=K2)


def _outcome(call: Any) -> tuple[str, Any]:
    try:
        return "ok", bytes(call())
    except CryptoError as exc:
        return type(exc).__name__, str(exc)


def _compare(suite: str, messages: list[tuple[int, bytes, bytes]]) -> None:
    """Feed the same messages to decrypt and to decrypt_into; compare each step."""
    inline, inline_ledger = _receiver(suite)
    into, into_ledger = _receiver(suite)
    buffer = bytearray()
    for counter, ciphertext, ad in messages:
        expected = _outcome(lambda: inline.decrypt(counter, ciphertext, ad=ad))  # noqa: B023
        got = _outcome(lambda: into.decrypt_into(counter, ciphertext, buffer, ad=ad))  # noqa: B023
        assert got == expected, (counter, got, expected)
        assert into.to_state() == inline.to_state()
        assert into_ledger.recv_mark("s") == inline_ledger.recv_mark("s")
        assert into.recv_epoch == inline.recv_epoch


@pytest.mark.parametrize("suite", SUITES)
def test_the_same_outcomes_for_good_replayed_tampered_and_misbound_messages(suite: str) -> None:
    a = _sender(suite)
    sent = [(*a.encrypt(os.urandom(n), ad=b"ad"), b"ad") for n in (0, 1, 100, 70_000, 5)]
    ct0 = sent[0][1]
    c3, ct3, _ = sent[3]
    messages = [
        sent[1], sent[0],            # out of order
        sent[1],                     # replayed
        (c3, ct3[:-1] + bytes([ct3[-1] ^ 1]), b"ad"),    # tampered tag
        (c3, bytes([ct3[0] ^ 1]) + ct3[1:], b"ad"),      # tampered ciphertext
        (c3, ct3, b"other ad"),      # wrong associated data (moved session / action)
        (c3 + 1, ct3, b"ad"),        # moved to another counter
        (c3, ct3[:10], b"ad"),       # shorter than a tag
        (c3, b"", b"ad"),
        sent[3],                     # the genuine one is still accepted after all that
        sent[3],                     # once
        (-1, ct0, b"ad"), (MAX_COUNTER, ct0, b"ad"),     # out of range
        sent[4], sent[2],
    ]
    _compare(suite, messages)


@pytest.mark.parametrize("suite", SUITES)
def test_the_same_outcomes_across_the_window_and_epochs(suite: str) -> None:
    a = _sender(suite)
    early = [(*a.encrypt(b"early %d" % i), b"") for i in range(3)]
    for _ in range(WINDOW_BITS):
        a.encrypt(b"")
    late = [(*a.encrypt(b"late %d" % i), b"") for i in range(3)]
    a.rotate()
    next_epoch = [(*a.encrypt(b"next %d" % i), b"") for i in range(3)]
    a.rotate(a.send_epoch + 2)
    far = [(*a.encrypt(b"far"), b"")]
    assert next_epoch[0][0] >> EPOCH_SHIFT == 1
    messages = [early[0], late[0], early[1],        # early[1] is now below the window
                next_epoch[1], late[1],              # the epoch moved: late[1] is retired
                next_epoch[0], next_epoch[1], far[0], next_epoch[2], early[2]]
    _compare(suite, messages)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 40), st.sampled_from(["good", "tag", "ad"])),
                max_size=40))
def test_random_sequences_give_the_same_outcomes(steps: list[tuple[int, str]]) -> None:
    a = _sender(SUITES[0])
    sent = [a.encrypt(b"m%d" % i, ad=b"x") for i in range(41)]
    messages = []
    for index, kind in steps:
        counter, ciphertext = sent[index]
        if kind == "tag":
            ciphertext = ciphertext[:-1] + bytes([ciphertext[-1] ^ 0x80])
        messages.append((counter, ciphertext, b"y" if kind == "ad" else b"x"))
    _compare(SUITES[0], messages)


def test_the_plaintext_is_written_into_the_buffer_which_is_reused() -> None:
    a, (b, _) = _sender(SUITES[0]), _receiver(SUITES[0])
    buffer = bytearray()
    first, second = os.urandom(50_000), os.urandom(30_000)
    got = b.decrypt_into(*a.encrypt(first), buffer)
    assert isinstance(got, memoryview) and got.obj is buffer and bytes(got) == first
    del got
    size = len(buffer)
    got = b.decrypt_into(*a.encrypt(second), buffer)
    assert isinstance(got, memoryview) and got.obj is buffer and bytes(got) == second
    assert len(buffer) == size  # no growth for a smaller message


def test_a_buffer_still_viewed_is_not_resized_a_new_object_is_returned() -> None:
    a, (b, _) = _sender(SUITES[0]), _receiver(SUITES[0])
    buffer = bytearray()
    held = b.decrypt_into(*a.encrypt(b"x" * 10), buffer)
    larger = os.urandom(1000)
    got = b.decrypt_into(*a.encrypt(larger), buffer)
    assert got == larger and not isinstance(got, memoryview)
    assert bytes(held) == b"x" * 10  # what the caller still views is untouched
