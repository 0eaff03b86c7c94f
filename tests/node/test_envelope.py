"""The P2P envelope: what the associated data binds, strict parsing, answers bound to requests."""

from __future__ import annotations

import os
from typing import Any

import pytest

from openred.crypto.identity import b64url
from openred.crypto.session import SessionCipher
from openred.errors import DecryptionFailed, NodeRefused, ReplayDetected
from openred.node.envelope import MAX_CIPHERTEXT, Envelope, Route, SessionChannel

SUITE = "25519_ChaChaPoly_SHA256"
SEND = Route("messaging", "send")


def pair(session_id: str | None = None) -> tuple[SessionChannel, SessionChannel]:
    i2r, r2i = os.urandom(32), os.urandom(32)
    sid = session_id or b64url(os.urandom(16))
    initiator = SessionChannel(sid, "initiator", "b" * 32, SessionCipher.from_split(
        SUITE, initiator=True, initiator_to_responder=i2r, responder_to_initiator=r2i))
    responder = SessionChannel(sid, "responder", "a" * 32, SessionCipher.from_split(
        SUITE, initiator=False, initiator_to_responder=i2r, responder_to_initiator=r2i))
    return initiator, responder


def test_a_request_and_its_answer_round_trip() -> None:
    a, b = pair()
    request = a.seal_request(SEND, b"hello")
    assert b.open_request(SEND, request) == b"hello"
    answer = b.seal_answer(SEND, request.counter, b"receipt")
    assert a.open_answer(SEND, request.counter, answer) == b"receipt"
    assert a.pending == 0


def test_a_replayed_request_is_refused() -> None:
    a, b = pair()
    request = a.seal_request(SEND, b"hello")
    b.open_request(SEND, request)
    with pytest.raises(ReplayDetected):
        b.open_request(SEND, request)


def test_reordered_requests_are_accepted_once_each() -> None:
    a, b = pair()
    first, second = a.seal_request(SEND, b"1"), a.seal_request(SEND, b"2")
    assert b.open_request(SEND, second) == b"2"
    assert b.open_request(SEND, first) == b"1"
    with pytest.raises(ReplayDetected):
        b.open_request(SEND, first)


@pytest.mark.parametrize("tamper", ["ciphertext", "counter"])
def test_a_tampered_request_does_not_authenticate(tamper: str) -> None:
    a, b = pair()
    request = a.seal_request(SEND, b"hello")
    if tamper == "ciphertext":
        bad = Envelope(request.session_id, request.counter,
                       bytes([request.ciphertext[0] ^ 1]) + request.ciphertext[1:])
    else:
        bad = Envelope(request.session_id, request.counter + 1, request.ciphertext)
    with pytest.raises(DecryptionFailed):
        b.open_request(SEND, bad)
    assert b.open_request(SEND, request) == b"hello"  # the genuine one still works


def test_a_request_moved_to_another_action_does_not_authenticate() -> None:
    a, b = pair()
    request = a.seal_request(SEND, b"hello")
    with pytest.raises(DecryptionFailed):
        b.open_request(Route("messaging", "other"), request)
    with pytest.raises(DecryptionFailed):
        b.open_request(Route("files", "send"), request)


def test_a_request_moved_to_another_session_does_not_authenticate() -> None:
    a, b = pair()
    _, other = pair()
    request = a.seal_request(SEND, b"hello")
    with pytest.raises(NodeRefused, match="unknown-session"):
        other.open_request(SEND, request)
    # Same keys, another id: the AD binds the id, so the AEAD refuses it.
    twin = SessionChannel(b64url(os.urandom(16)), "responder", "a" * 32, b.cipher)
    moved = Envelope(twin.session_id, request.counter, request.ciphertext)
    with pytest.raises(DecryptionFailed):
        twin.open_request(SEND, moved)


def test_a_message_reflected_back_to_its_sender_does_not_authenticate() -> None:
    a, _ = pair()
    request = a.seal_request(SEND, b"hello")
    # The initiator's own request fed to it as if it came from the responder: wrong key
    # and wrong direction in the AD.
    with pytest.raises(DecryptionFailed):
        a.open_request(SEND, request)


def test_an_answer_is_bound_to_the_request_it_answers() -> None:
    a, b = pair()
    first, second = a.seal_request(SEND, b"1"), a.seal_request(SEND, b"2")
    b.open_request(SEND, first)
    b.open_request(SEND, second)
    answer_to_first = b.seal_answer(SEND, first.counter, b"r1")
    with pytest.raises(DecryptionFailed):
        a.open_answer(SEND, second.counter, answer_to_first)
    assert a.open_answer(SEND, first.counter, answer_to_first) == b"r1"
    # Accepted once: the same answer again finds no request waiting for it.
    with pytest.raises(NodeRefused, match="unexpected-answer"):
        a.open_answer(SEND, first.counter, answer_to_first)


def test_an_answer_nobody_asked_for_is_refused() -> None:
    a, b = pair()
    answer = b.seal_answer(SEND, 7, b"unsolicited")
    with pytest.raises(NodeRefused, match="unexpected-answer"):
        a.open_answer(SEND, 7, answer)


def test_epoch_rotation_keeps_the_channel_working() -> None:
    a, b = pair()
    a.cipher.rotate()
    request = a.seal_request(SEND, b"after rotation")
    assert request.counter >> 32 == 1
    assert b.open_request(SEND, request) == b"after rotation"
    assert b.cipher.recv_epoch == 1


GOOD: dict[str, Any] = {"session_id": b64url(bytes(16)), "counter": 3, "ciphertext": "AAAA"}


@pytest.mark.parametrize(("body", "status"), [
    ([], 400),
    ({}, 400),
    ({**GOOD, "extra": 1}, 400),
    ({**GOOD, "counter": "3"}, 400),
    ({**GOOD, "counter": 3.0}, 400),
    ({**GOOD, "counter": True}, 400),
    ({**GOOD, "counter": -1}, 400),
    ({**GOOD, "counter": 2**64 - 1}, 400),
    ({**GOOD, "counter": 2**70}, 400),
    ({**GOOD, "session_id": "short"}, 400),
    ({**GOOD, "session_id": 5}, 400),
    ({**GOOD, "ciphertext": "not base64!"}, 400),
    ({**GOOD, "ciphertext": 12}, 400),
    ({**GOOD, "ciphertext": "A" * (MAX_CIPHERTEXT * 2)}, 413),
])
def test_malformed_and_oversized_envelopes_are_refused(body: Any, status: int) -> None:
    with pytest.raises(NodeRefused) as info:
        Envelope.from_json(body)
    assert info.value.status == status


def test_an_envelope_round_trips_through_json() -> None:
    envelope = Envelope(b64url(bytes(16)), 2**40, b"\x00\x01")
    assert Envelope.from_json(envelope.to_json()) == envelope


@pytest.mark.parametrize(("module", "action"), [("Mess", "send"), ("m", ""), ("m/x", "y"),
                                                ("m", "a" * 40)])
def test_routes_are_lowercase_names(module: str, action: str) -> None:
    with pytest.raises(NodeRefused, match="unknown-route"):
        Route(module, action)


class _SpyCipher:
    """Records the associated data each call gets, then does the real work."""

    def __init__(self, cipher: SessionCipher) -> None:
        self.cipher = cipher
        self.ads: list[bytes] = []

    def encrypt(self, plaintext: bytes, *, ad: bytes) -> tuple[int, bytes]:
        self.ads.append(ad)
        return self.cipher.encrypt(plaintext, ad=ad)

    def decrypt(self, counter: int, ciphertext: bytes, *, ad: bytes) -> bytes:
        self.ads.append(ad)
        return self.cipher.decrypt(counter, ciphertext, ad=ad)


def test_the_associated_data_is_what_request_ad_and_answer_ad_write() -> None:
    """The channel keeps each route's ADs; they stay the documented bytes, for any route."""
    from openred.node.envelope import Direction, answer_ad, request_ad

    a, b = pair()
    spy_a, spy_b = _SpyCipher(a.cipher), _SpyCipher(b.cipher)
    a.cipher, b.cipher = spy_a, spy_b  # type: ignore[assignment]
    sid = a.session_id_raw
    there, back = Direction.INITIATOR_TO_RESPONDER, Direction.RESPONDER_TO_INITIATOR
    routes = [Route("m", f"a{i}") for i in range(70)] + [SEND, SEND]  # past the cache's bound
    for route in routes:
        request = a.seal_request(route, b"q")
        b.open_request(route, request)
        answer = b.seal_answer(route, request.counter, b"r")
        a.open_answer(route, request.counter, answer)
        expected = [request_ad(sid, there, route), answer_ad(sid, back, route, request.counter)]
        assert spy_a.ads[-2:] == expected
        assert spy_b.ads[-2:] == expected
    # the responder's own requests go the other way
    request = b.seal_request(SEND, b"q")
    assert spy_b.ads[-1] == request_ad(sid, back, SEND)
    assert a.open_request(SEND, request) == b"q"
    assert spy_a.ads[-1] == request_ad(sid, back, SEND)
