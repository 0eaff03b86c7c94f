"""SessionChannel.open_answer_into against open_answer: same plaintexts, refusals and state."""

from __future__ import annotations

import os
from typing import Any

from openred.crypto.identity import b64url
from openred.crypto.session import SessionCipher
from openred.errors import CryptoError, NodeRefused
from openred.node.envelope import Envelope, Route, SessionChannel

SUITE = "25519_ChaChaPoly_SHA256"
CHUNK = Route("file_sharing", "chunk")
OTHER = Route("file_sharing", "offer")


def _channels() -> tuple[SessionChannel, SessionChannel, SessionChannel]:
    """Two identical initiators (one per way of opening) and the responder."""
    i2r, r2i = os.urandom(32), os.urandom(32)
    sid = b64url(os.urandom(16))

    def end(initiator: bool) -> SessionChannel:
        cipher = SessionCipher.from_split(SUITE, initiator=initiator,
                                          initiator_to_responder=i2r,
                                          responder_to_initiator=r2i)
        return SessionChannel(sid, "initiator" if initiator else "responder", "p" * 32, cipher)

    return end(True), end(True), end(False)


def _outcome(call: Any) -> tuple[Any, ...]:
    try:
        return ("ok", bytes(call()))
    except NodeRefused as exc:
        return ("refused", exc.status, exc.reason)
    except CryptoError as exc:
        return (type(exc).__name__, str(exc))


def test_open_answer_into_matches_open_answer_for_good_and_bad_answers() -> None:
    inline, into, peer = _channels()
    requests = []
    for route in (CHUNK, CHUNK, CHUNK, OTHER, CHUNK):
        one, two = inline.seal_request(route, b"req"), into.seal_request(route, b"req")
        assert one == two  # same keys, same counters: byte-identical
        assert peer.open_request(route, one) == b"req"
        requests.append((route, one.counter))
    (r0, c0), (r1, c1), (r2, c2), (r3, c3), (r4, c4) = requests
    big = os.urandom(300_000)
    a0 = peer.seal_answer(r0, c0, big)
    a1 = peer.seal_answer(r1, c1, b"small")
    a2 = peer.seal_answer(r2, c2, os.urandom(1000))
    a3 = peer.seal_answer(r3, c3, b"offer answer")
    a4 = peer.seal_answer(r4, c4, os.urandom(5000))
    tampered = Envelope(a2.session_id, a2.counter,
                        a2.ciphertext[:-1] + bytes([a2.ciphertext[-1] ^ 1]))
    moved_session = Envelope(b64url(os.urandom(16)), a4.counter, a4.ciphertext)
    steps = [
        (r0, c1, a0),          # bound to another request: does not authenticate
        (r0, c0, a0),          # accepted
        (r0, c0, a0),          # again: no request waits for it
        (r2, c2, tampered),    # tampered tag
        (r2, c2, a2),          # the genuine one still opens
        (CHUNK, c3, a3),       # moved to another action
        (r3, c3, a3),
        (r4, c4, moved_session),
        (r4, c4, Envelope(a4.session_id, a1.counter, a4.ciphertext)),  # another counter
        (r1, c1, a1),
        (r4, c4, a4),
        (r4, 999, a4),         # nobody asked
    ]
    buffer = bytearray()
    for route, counter, answer in steps:
        expected = _outcome(lambda: inline.open_answer(route, counter, answer))  # noqa: B023
        got = _outcome(lambda: into.open_answer_into(route, counter, answer, buffer))  # noqa: B023
        assert got == expected, (route, counter, got, expected)
        assert into.pending == inline.pending
        assert into.cipher.to_state() == inline.cipher.to_state()
    assert into.pending == 0


def test_the_answer_is_a_view_of_the_buffer() -> None:
    _, a, b = _channels()
    request = a.seal_request(CHUNK, b"r")
    b.open_request(CHUNK, request)
    body = os.urandom(70_000)
    buffer = bytearray()
    got = a.open_answer_into(CHUNK, request.counter, b.seal_answer(CHUNK, request.counter, body),
                             buffer)
    assert isinstance(got, memoryview) and got.obj is buffer and got == body
