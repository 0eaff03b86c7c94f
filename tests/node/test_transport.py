"""The P2P call over HTTP (``post_envelope``) sends and judges exactly what HttpClient did.

A fake peer on a real Hypercorn server records what arrives; every case is sent twice — with
:func:`openred.node.transport.post_envelope` and with the path it replaced
(``HttpClient.request(json_body=envelope.to_json(), attempts=1)`` then ``Envelope.from_json``
or the refusal) — and both must send the same bytes and headers and end the same way.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from quart import Quart, Response, request

from openred.crypto.identity import b64url
from openred.errors import NodeRefused, OpenRedError, PeerUnreachable, TransportError
from openred.node.envelope import MAX_COUNTER, Envelope
from openred.node.services import _refusal_from
from openred.node.transport import answer_envelope, post_envelope
from openred.web.client import MAX_REPLY_BYTES, HttpClient, Reply
from tests.servers import free_port, serve_in_loop

ENVELOPE = Envelope(b64url(os.urandom(16)), 7, os.urandom(1104))
ANSWER = Envelope(ENVELOPE.session_id, 3, os.urandom(60))


@dataclass
class Peer:
    url: str
    seen: list[tuple[bytes, dict[str, str]]] = field(default_factory=list)


def peer_app(seen: list[tuple[bytes, dict[str, str]]]) -> Quart:
    app = Quart("peer")

    async def record() -> None:
        seen.append((await request.get_data(), dict(request.headers)))

    @app.post("/api/v3/p2p/<module>/<action>")
    async def p2p(module: str, action: str) -> Response:
        await record()
        if action == "send":
            return Response(ANSWER.to_json_bytes(), content_type="application/json")
        if action == "refuse":
            return Response(json.dumps({"type": "urn:openred:problem:replayed-message",
                                        "detail": "seen"}), status=409,
                            content_type="application/problem+json")
        if action == "broken":
            return Response("oops", status=500, content_type="text/plain")
        if action == "notjson":
            return Response("not json", content_type="application/json")
        if action == "malformed":
            return Response(b'{"session_id": 1}', content_type="application/json")
        if action == "huge":
            return Response(b"x" * (MAX_REPLY_BYTES + 1), content_type="application/json")

        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(MAX_REPLY_BYTES // 65536 + 2):
                yield b"x" * 65536

        return Response(chunks(), content_type="application/json")  # chunked, no length

    return app


@pytest.fixture
async def peer() -> AsyncIterator[Peer]:
    seen: list[tuple[bytes, dict[str, str]]] = []
    async with serve_in_loop(peer_app(seen)) as url:
        yield Peer(url, seen)


async def old_way(http: HttpClient, url: str, envelope: Envelope) -> Envelope:
    reply = await http.request("POST", url, json_body=envelope.to_json(), attempts=1)
    if not reply.ok:
        raise _refusal_from(reply, "the peer's call")
    return answer_envelope(reply.json())  # a malformed answer is the peer's failure (502)


async def new_way(http: HttpClient, url: str, envelope: Envelope) -> Envelope:
    return await post_envelope(http, url, envelope,
                               refuse=lambda reply: _refusal_from(reply, "the peer's call"))


async def outcome(call: Callable[[], Any]) -> tuple[str, Any]:
    try:
        return "answer", await call()
    except NodeRefused as exc:
        return "refused", (exc.status, exc.reason, exc.detail)
    except OpenRedError as exc:
        return type(exc).__name__, str(exc)


@pytest.mark.parametrize("action", ["send", "refuse", "broken", "notjson", "malformed", "huge",
                                    "chunked"])
async def test_both_ways_send_the_same_request_and_end_the_same_way(
    peer: Peer, action: str
) -> None:
    url = f"{peer.url}/api/v3/p2p/messaging/{action}"
    async with HttpClient(allow_private=True) as http:
        old = await outcome(lambda: old_way(http, url, ENVELOPE))
        new = await outcome(lambda: new_way(http, url, ENVELOPE))
    assert new == old
    (old_body, old_headers), (new_body, new_headers) = peer.seen
    assert new_body == old_body == json.dumps(
        ENVELOPE.to_json(), separators=(",", ":")).encode()
    assert new_headers == old_headers
    expected = {"send": "answer", "refuse": "refused", "broken": "refused",
                "notjson": "TransportError", "malformed": "refused", "huge": "TransportError",
                "chunked": "TransportError"}
    assert new[0] == expected[action]
    if action == "send":
        assert new[1] == ANSWER
    if action == "malformed":  # the peer's fault, not that of our caller's request
        assert new[1][:2] == (502, "malformed-envelope")


async def test_an_unreachable_peer_is_peer_unreachable() -> None:
    url = f"http://127.0.0.1:{free_port()}/api/v3/p2p/messaging/send"
    async with HttpClient(allow_private=True) as http:
        with pytest.raises(PeerUnreachable, match="after 1 attempts"):
            await new_way(http, url, ENVELOPE)


async def test_the_url_is_checked_as_the_client_checks_it() -> None:
    async with HttpClient(allow_private=False) as http:
        with pytest.raises(OpenRedError) as new:
            await new_way(http, "http://127.0.0.1:9/api/v3/p2p/messaging/send", ENVELOPE)
        with pytest.raises(OpenRedError) as old:
            await old_way(http, "http://127.0.0.1:9/api/v3/p2p/messaging/send", ENVELOPE)
    assert type(new.value) is type(old.value) and str(new.value) == str(old.value)
    assert not isinstance(new.value, (PeerUnreachable, TransportError))


@given(st.text(alphabet="ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_",
               min_size=22, max_size=22),
       st.integers(min_value=0, max_value=MAX_COUNTER - 1), st.binary(max_size=300))
def test_envelope_bytes_are_the_encoders(session_id: str, counter: int, ciphertext: bytes) -> None:
    envelope = Envelope(session_id, counter, ciphertext)
    assert envelope.to_json_bytes() == json.dumps(
        envelope.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert Envelope.from_json(json.loads(envelope.to_json_bytes())) == envelope
    for ensure_ascii in (True, False):  # pure ASCII: the same either way
        assert envelope.to_json_bytes(sort_keys=True) == json.dumps(
            envelope.to_json(), separators=(",", ":"), ensure_ascii=ensure_ascii,
            sort_keys=True).encode("utf-8")
        assert envelope.to_json_bytes() == json.dumps(
            envelope.to_json(), separators=(",", ":"), ensure_ascii=ensure_ascii).encode()
    assert envelope.plain


@pytest.mark.parametrize("session_id,counter", [
    ('quote"and\\back\u00e9', 1), ("short", 2), ("x" * 22, True), ("\u2028" * 22, 5),
])
def test_other_envelopes_go_through_the_encoder(session_id: str, counter: int) -> None:
    envelope = Envelope(session_id, counter, b"\x00\xff")
    assert envelope.to_json_bytes() == json.dumps(
        envelope.to_json(), separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    assert envelope.to_json_bytes(sort_keys=True) == json.dumps(
        envelope.to_json(), separators=(",", ":"), ensure_ascii=False,
        sort_keys=True).encode("utf-8")
    assert not envelope.plain


def test_a_refusal_reply_is_what_the_client_returns() -> None:
    reply = Reply(409, {"Content-Type": "application/problem+json"},
                  b'{"type": "urn:openred:problem:x", "detail": "d"}')
    refusal = _refusal_from(reply, "the peer's call")
    assert (refusal.status, refusal.reason) == (409, "x")


@pytest.mark.parametrize("action", ["send", "refuse", "notjson", "huge"])
async def test_a_wrapped_request_still_sees_every_call(peer: Peer, action: str) -> None:
    """A module that wraps ``http.request`` (monitoring's reachability) sees the P2P call."""
    url = f"{peer.url}/api/v3/p2p/messaging/{action}"
    async with HttpClient(allow_private=True) as http:
        old = await outcome(lambda: old_way(http, url, ENVELOPE))
        original = http.request
        watched: list[str] = []

        async def watching(method: str, url: str, **kw: Any) -> Reply:
            watched.append(url)
            return await original(method, url, **kw)

        http.request = watching  # type: ignore[method-assign]
        new = await outcome(lambda: new_way(http, url, ENVELOPE))
    assert watched == [url] and new == old
    (old_body, old_headers), (new_body, new_headers) = peer.seen
    assert new_body == old_body and new_headers == old_headers


async def test_monitoring_follows_a_peer_through_messages(tmp_path: Any) -> None:
    """The reachability watch of the monitoring module wraps the client the messages use."""
    from openred.modules.monitoring.service import watch_reachability

    class Seen:
        def __init__(self) -> None:
            self.events: list[tuple[str, str]] = []

        def failed(self, target: str, why: str) -> None:
            self.events.append(("failed", target))

        def answered(self, target: str) -> None:
            self.events.append(("answered", target))

    url = f"http://127.0.0.1:{free_port()}/api/v3/p2p/messaging/send"
    seen = Seen()
    async with HttpClient(allow_private=True) as http:
        watch_reachability(http, seen, lambda u: "peer")
        with pytest.raises(PeerUnreachable):
            await new_way(http, url, ENVELOPE)
    assert seen.events == [("failed", "peer")]
