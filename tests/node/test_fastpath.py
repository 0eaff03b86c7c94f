"""The P2P fast path (:mod:`openred.node.fastpath`) answers exactly as the Quart route does.

Each case is sent over real HTTP to a real Hypercorn server twice — once served by
:class:`~openred.node.fastpath.FastP2P`, once with it switched off so Quart serves it — and the
two answers must agree byte for byte (status, headers but ``Date``, body), for answers and for
every refusal: replayed, reordered, tampered, moved to another session or action, malformed,
oversized, not JSON. Requests the fast path must not take (middleware installed, another
content type, a query string, a chunked body) reach Quart and its hooks.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from quart import Quart
from quart.json.provider import DefaultJSONProvider
from quart_schema import QuartSchema

from openred.crypto.identity import b64url
from openred.modules.messaging.service import SEND
from openred.node.envelope import Envelope, Route
from openred.node.fastpath import FAST_P2P, FastP2P, envelope_answer
from openred.web.fastpath import json_answer
from tests.node import test_app
from tests.node.test_app import ODD_BODIES, World, granted, now

world = test_app.world  # the two served nodes of the app tests (a pytest fixture)


def fast(world: World) -> FastP2P:
    path: FastP2P = world.b.app.extensions[FAST_P2P]
    return path


async def post(url: str, data: bytes, headers: dict[str, str] | None = None,
               ) -> tuple[int, list[tuple[str, str]], bytes]:
    sent = {"Content-Type": "application/json", **(headers or {})}
    async with aiohttp.ClientSession() as session, session.post(
        url, data=data, headers=sent
    ) as resp:
        kept = [(k.lower(), v) for k, v in resp.headers.items() if k.lower() != "date"]
        return resp.status, sorted(kept), await resp.read()


async def both(world: World, url: str, first: bytes, second: bytes | None = None,
               headers: dict[str, str] | None = None) -> tuple[Any, Any]:
    """``first`` through the fast path, ``second`` (default: the same) through Quart."""
    path = fast(world)
    served = path.served
    path.enabled = True
    try:
        fast_answer = await post(url, first, headers)
        assert path.served == served + 1
        path.enabled = False
        slow_answer = await post(url, first if second is None else second, headers)
        assert path.served == served + 1
    finally:
        path.enabled = True
    return fast_answer, slow_answer


async def sealed(world: World, session_id: str, plaintext: bytes,
                 route: Route = SEND) -> Envelope:
    channel = await world.a.services.keeper.channel(session_id, now())
    return channel.seal_request(route, plaintext)


def body_of(envelope: Envelope, **changes: Any) -> bytes:
    return json.dumps(dict(envelope.to_json(), **changes)).encode()


async def test_answers_are_the_same_bytes_as_quarts(world: World) -> None:
    answer = Envelope("A" * 22, 7, b"\x01" * 40)
    calls: list[tuple[Route, object]] = []

    async def fixed(route: Route, body: object) -> Envelope:
        calls.append((route, body))
        return answer

    world.b.services.handle = fixed  # type: ignore[method-assign]
    # The node app's provider answers as the default one: the fast path builds its bytes.
    provider = world.b.app.json
    assert type(provider).response is DefaultJSONProvider.response and provider.compact is None
    sent = b'{"session_id": "x", "counter": 1, "ciphertext": "\\u00e9"}'
    fast_answer, slow_answer = await both(world, f"{world.b.url}/api/v3/p2p/messaging/send",
                                          sent)
    assert fast_answer == slow_answer
    assert fast_answer[0] == 200 and json.loads(fast_answer[2]) == answer.to_json()
    assert calls[0] == calls[1] == (SEND, json.loads(sent))
    # Another provider mode (pretty-printed): the fast path asks the provider itself.
    provider.compact = False
    try:
        fast_answer, slow_answer = await both(
            world, f"{world.b.url}/api/v3/p2p/messaging/send", sent)
    finally:
        provider.compact = None
    assert fast_answer == slow_answer and b'\n  "ciphertext"' in fast_answer[2]


class _OwnDumps(DefaultJSONProvider):
    def dumps(self, obj: Any, **kwargs: Any) -> str:
        return super().dumps(obj, **kwargs).replace(",", ", ")


@pytest.mark.parametrize("envelope", [
    Envelope("A" * 22, 7, b"\x01" * 40), Envelope("Zz09-_" * 3 + "abcd", 2**64 - 2, b""),
    Envelope("A" * 22, 0, bytes(range(256)) * 5), Envelope("short", 1, b"\xff"),
    Envelope('quote"\u00e9\u2028' * 2, 3, b"x"), Envelope("A" * 22, True, b"x"),  # type: ignore[arg-type]
])
@pytest.mark.parametrize("mode", ["default", "unsorted", "ascii-off", "pretty", "debug",
                                  "own-dumps", "schema"])
async def test_envelope_answers_are_json_answers_bytes(envelope: Envelope, mode: str) -> None:
    """``envelope_answer`` is ``json_answer(app, envelope.to_json())``, in every provider mode."""
    app = Quart("t")
    if mode == "schema":
        QuartSchema(app)
    if mode == "own-dumps":
        app.json = _OwnDumps(app)
    provider = app.json
    if mode == "unsorted":
        provider.sort_keys = False  # type: ignore[attr-defined]
    if mode == "ascii-off":
        provider.ensure_ascii = False  # type: ignore[attr-defined]
    if mode == "pretty":
        provider.compact = False  # type: ignore[attr-defined]
    if mode == "debug":
        app.debug = True
    async with app.app_context():
        assert await envelope_answer(app, envelope) == await json_answer(app, envelope.to_json())


async def test_real_messages_and_every_refusal_match_quart(world: World) -> None:
    grant_id = await granted(world)
    channel = await world.a.services.connect(grant_id)
    sid = channel.session_id
    url = f"{world.b.url}/api/v3/p2p/messaging/send"

    def message(text: str) -> bytes:
        return json.dumps({"message_id": b64url(text.encode().ljust(16, b"-")[:16]),
                           "text": text, "sent_at": now()}).encode()

    # Two fresh messages, one each way: both delivered, answers of the same form.
    one, two = await sealed(world, sid, message("one")), await sealed(world, sid, message("two"))
    fast_answer, slow_answer = await both(world, url, body_of(one), body_of(two))
    assert fast_answer[0] == slow_answer[0] == 200
    assert fast_answer[1] == slow_answer[1]
    for raw in (fast_answer[2], slow_answer[2]):
        assert raw.endswith(b"}\n") and set(json.loads(raw)) == {
            "session_id", "counter", "ciphertext"}
    # Replayed (each path replays what the other accepted): the same 409.
    assert (await both(world, url, body_of(two), body_of(one)))[0][0] == 409
    a, b = await both(world, url, body_of(one), body_of(two))
    assert a == b and a[0] == 409
    # Reordered: a later message first, then the earlier one, is accepted once each.
    early, late = (await sealed(world, sid, message("early")),
                   await sealed(world, sid, message("late")))
    assert (await post(url, body_of(late)))[0] == 200
    assert (await post(url, body_of(early)))[0] == 200
    a, b = await both(world, url, body_of(early))
    assert a == b and a[0] == 409
    # Tampered, moved to another session, to another action, malformed, oversized.
    fresh = await sealed(world, sid, message("never"))
    flipped = bytes([fresh.ciphertext[0] ^ 1]) + fresh.ciphertext[1:]
    other_route = await sealed(world, sid, message("moved"), Route("messaging", "other"))
    other_session = (await world.a.services.connect(await granted(world))).session_id
    cases: list[tuple[str, bytes, int]] = [
        (url, body_of(fresh, ciphertext=b64url(flipped)), 401),
        (url, body_of(fresh, session_id=b64url(bytes(16))), 404),
        (url, body_of(fresh, session_id=other_session), 401),  # another live session
        (url, body_of(other_route), 401),  # sealed for messaging/other, posted to send
        (f"{world.b.url}/api/v3/p2p/messaging/other", body_of(fresh), 404),
        (url, body_of(fresh, counter="7"), 400),
        (url, body_of(fresh, counter=7.5), 400),
        (url, body_of(fresh, counter=True), 400),
        (url, json.dumps({"session_id": sid}).encode(), 400),
        (url, body_of(fresh, ciphertext="A" * 360_000), 413),
    ]
    for target, raw, status in cases:
        a, b = await both(world, target, raw)
        assert a == b, (raw[:60], a, b)
        assert a[0] == status and a[2].startswith(b"{")
    # A request whose plaintext is not a message: the handler's 422, the same both ways.
    bad_one, bad_two = (await sealed(world, sid, b"not json"),
                        await sealed(world, sid, b"not json"))
    a, b = await both(world, url, body_of(bad_one), body_of(bad_two))
    assert a == b and a[0] == 422
    # Nothing the refusals carried reached the inbox.
    texts = sorted(m.text for m in await world.b.services.messaging.inbox())
    assert texts == ["early", "late", "one", "two"]


async def test_odd_bodies_are_refused_the_same_way(world: World) -> None:
    url = f"{world.b.url}/api/v3/p2p/messaging/send"
    for raw in ODD_BODIES:
        a, b = await both(world, url, raw)
        assert a == b, (raw[:40], a, b)
        assert 400 <= a[0] < 500


async def test_requests_it_must_not_take_reach_quart(world: World) -> None:
    path = fast(world)
    url = f"{world.b.url}/api/v3/p2p/messaging/send"
    raw = b'{"session_id": "AAAAAAAAAAAAAAAAAAAAAA", "counter": 1, "ciphertext": ""}'
    served = path.served
    for target, headers in [
        (url, {"Content-Type": "text/plain"}),
        (url, {"Content-Type": "application/json; charset=utf-8"}),
        (url + "?x=1", {}),
        (f"{world.b.url}/api/v3/p2p/Messaging/send", {}),
    ]:
        status, _, _ = await post(target, raw, headers)
        assert 400 <= status < 500
    async with aiohttp.ClientSession() as session:
        async def chunks() -> Any:
            yield raw

        async with session.post(url, data=chunks(),
                                headers={"Content-Type": "application/json"}) as resp:
            assert resp.status == 404  # unknown session, answered by Quart
    assert path.served == served
    # Host-based matching or refusal is left to Quart (served by it, not by the fast path).
    world.b.app.config["TRUSTED_HOSTS"] = ["example.org"]
    try:
        status, _, _ = await post(url, raw)
    finally:
        world.b.app.config["TRUSTED_HOSTS"] = None
    assert status == 404 and path.served == served
    # Middleware on the app sees every request: with a hook installed, Quart serves them.
    seen: list[str] = []

    async def hook() -> None:
        from quart import request

        seen.append(request.path)

    world.b.app.before_request_funcs[None].append(hook)  # as a module's middleware would
    status, _, _ = await post(url, raw)
    assert status == 404 and seen == ["/api/v3/p2p/messaging/send"]
    assert path.served == served
