"""Batched encrypted calls (:mod:`openred.node.batch`): ``POST /api/v3/p2p/batch``.

A batch changes nothing about a call: each one gets exactly the status and body its own route
would answer, is committed or refused on its own, and its answer stays bound to its request.
Tested on real served nodes (fast path and Quart alike), with hostile batches and a hostile
peer that reorders or tampers with answers, and the sender's :class:`CallBatcher` on its own.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Sequence
from typing import Any

import aiohttp
import pytest

from audit_tools.verify import verify
from openred.crypto.identity import b64url
from openred.errors import (
    CryptoError,
    NodeRefused,
    PeerUnreachable,
    StoreUnavailable,
    TransportError,
)
from openred.modules.messaging.service import SEND, Receipt
from openred.node import batch as batch_module
from openred.node.batch import (
    BATCH_PATH,
    MAX_CALLS,
    BatchUnsupported,
    CallBatcher,
    batch_body,
    parse_batch,
    post_batch,
)
from openred.node.envelope import MAX_CIPHERTEXT, Envelope, Route
from openred.node.fastpath import FAST_P2P, FastP2P
from openred.store.sqlite import DATABASE_NAME
from openred.web.client import HttpClient, Reply
from tests.node.test_app import ODD_BODIES, World, granted, now
from tests.node.test_fastpath import body_of, both, post, sealed, world

__all__ = ["world"]

PLAIN = Envelope("A" * 22, 7, b"\x01" * 40)


def message(text: str) -> bytes:
    return json.dumps({"message_id": b64url(text.encode().ljust(16, b"-")[:16]),
                       "text": text, "sent_at": now()}).encode()


def call(route: Route | str, envelope: Envelope, **changes: Any) -> dict[str, Any]:
    return {"route": str(route), **dict(envelope.to_json(), **changes)}


def batch(*calls: dict[str, Any]) -> bytes:
    return json.dumps({"calls": list(calls)}).encode()


# -- the wire format --

@pytest.mark.parametrize("body", [
    None, [], "calls", {}, {"calls": []}, {"calls": None}, {"calls": {}},
    {"calls": [1]}, {"calls": [{"session_id": "x"}]}, {"calls": [{"route": 7}]},
    {"calls": [call(SEND, PLAIN)], "more": 1},
    {"calls": [call(SEND, PLAIN)] * (MAX_CALLS + 1)},
])
def test_what_is_not_a_batch_is_refused_whole(body: object) -> None:
    with pytest.raises(NodeRefused) as caught:
        parse_batch(body)
    assert (caught.value.status, caught.value.reason) == (400, "malformed")


def test_a_call_keeps_its_own_fields_and_a_bad_route_is_its_own_refusal() -> None:
    parsed = parse_batch({"calls": [call(SEND, PLAIN), call("Messaging/send", PLAIN, x=1),
                                    call("a/b/c", PLAIN), call("send", PLAIN),
                                    call(SEND, PLAIN, counter="7")]})
    assert parsed[0] == (SEND, PLAIN.to_json())
    assert parsed[4] == (SEND, dict(PLAIN.to_json(), counter="7"))
    for route, _ in parsed[1:4]:
        assert isinstance(route, NodeRefused) and route.status == 404
    assert len(parse_batch({"calls": [call(SEND, PLAIN)] * MAX_CALLS})) == MAX_CALLS


@pytest.mark.parametrize("envelope", [
    PLAIN, Envelope("Zz09-_" * 3 + "abcd", 2**64 - 2, b""), Envelope('q"\u00e9\u2028', 3, b"x"),
])
def test_the_batch_body_is_each_calls_envelope_with_its_route(envelope: Envelope) -> None:
    other = Route("files", "chunk")
    assert json.loads(batch_body([(SEND, envelope), (other, PLAIN)])) == {
        "calls": [call(SEND, envelope), call(other, PLAIN)]}


# -- the receiving node --

def fast(world: World) -> FastP2P:
    path: FastP2P = world.b.app.extensions[FAST_P2P]
    return path


async def test_each_call_gets_what_its_own_route_answers(world: World) -> None:
    """Successes, every kind of refusal, a replay inside the batch: as the single route says."""
    sid = (await world.a.services.connect(await granted(world))).session_id
    batched = world.b.url + BATCH_PATH
    other_session = (await world.a.services.connect(await granted(world))).session_id
    channel = await world.a.services.keeper.channel(sid, now())

    async def cases() -> list[tuple[Route | str, Envelope, dict[str, Any]]]:
        """One of each, sealed afresh (each is sent twice: alone and in the batch)."""
        fresh = await sealed(world, sid, message("never"))
        flipped = b64url(bytes([fresh.ciphertext[0] ^ 1]) + fresh.ciphertext[1:])
        return [
            (SEND, fresh, {"ciphertext": flipped}),  # tampered: 401
            (SEND, fresh, {"session_id": b64url(bytes(16))}),  # unknown session: 404
            (SEND, fresh, {"session_id": other_session}),  # another live session: 401
            (SEND, await sealed(world, sid, message("moved"), Route("messaging", "other")),
             {}),  # sealed for another action: 401
            ("messaging/other", fresh, {}),  # no such action: 404
            ("Bad/route", fresh, {}),  # not a route at all: 404
            (SEND, fresh, {"counter": "7"}), (SEND, fresh, {"counter": 7.5}),
            (SEND, fresh, {"counter": True}), (SEND, fresh, {"extra": 1}),  # 400 each
            (SEND, fresh, {"ciphertext": "A" * (MAX_CIPHERTEXT * 4 // 3 + 8)}),  # 413
            (SEND, await sealed(world, sid, b"not json"), {}),  # the handler's 422
        ]

    alone = []
    for route, envelope, changes in await cases():
        status, _, content = await post(f"{world.b.url}/api/v3/p2p/{route}",
                                        body_of(envelope, **changes))
        alone.append((status, json.loads(content)))
    ok_one, ok_two = (await sealed(world, sid, message("one")),
                      await sealed(world, sid, message("two")))
    refused = [call(route, envelope, **changes) for route, envelope, changes in await cases()]
    calls = [call(SEND, ok_one), *refused, call(SEND, ok_two), call(SEND, ok_one)]
    status, headers, content = await post(batched, batch(*calls))
    assert status == 200 and ("content-type", "application/json") in headers
    answers = json.loads(content)["answers"]
    assert len(answers) == len(calls)
    # Every refusal is the single route's (the "bad route" one is the node's unknown-route).
    for got, (status, body) in zip(answers[1:-2], alone, strict=True):
        if body.get("type") == "urn:openred:problem:not-found":  # the URL matched no route
            assert got["status"] == 404
            assert got["body"]["type"] == "urn:openred:problem:unknown-route"
            continue
        assert (got["status"], got["body"]) == (status, body)
    assert [a["status"] for a in answers[1:-2]] == [
        401, 404, 401, 401, 404, 404, 400, 400, 400, 400, 413, 422]
    # The two messages are delivered; the one sent twice in the batch is a replay (409).
    assert answers[0]["status"] == answers[-2]["status"] == 200
    assert answers[-1]["status"] == 409
    assert answers[-1]["body"]["type"] == "urn:openred:problem:replayed-message"
    receipts = [json.loads(channel.open_answer(SEND, env.counter, Envelope.from_json(a["body"])))
                for env, a in ((ok_one, answers[0]), (ok_two, answers[-2]))]
    assert [r["message_id"] for r in receipts] == [
        json.loads(message("one"))["message_id"], json.loads(message("two"))["message_id"]]
    # Nothing a refused call carried reached the inbox; each message is there once.
    assert sorted(m.text for m in await world.b.services.messaging.inbox()) == ["one", "two"]
    report = verify(world.b.data / DATABASE_NAME)
    assert report.ok, report


async def test_a_replayed_batch_is_refused_call_by_call_and_stores_nothing(
    world: World,
) -> None:
    sid = (await world.a.services.connect(await granted(world))).session_id
    body = batch(*[call(SEND, await sealed(world, sid, message(f"r{i}"))) for i in range(3)])
    first = json.loads((await post(world.b.url + BATCH_PATH, body))[2])["answers"]
    assert [a["status"] for a in first] == [200, 200, 200]
    entries = await world.b.services.store.read()
    again = json.loads((await post(world.b.url + BATCH_PATH, body))[2])["answers"]
    assert [a["status"] for a in again] == [409, 409, 409]
    assert {a["body"]["type"] for a in again} == {"urn:openred:problem:replayed-message"}
    assert await world.b.services.store.read() == entries
    assert sorted(m.text for m in await world.b.services.messaging.inbox()) == ["r0", "r1", "r2"]


async def test_the_fast_path_and_quart_answer_a_batch_the_same(world: World) -> None:
    answer = Envelope("A" * 22, 7, b"\x01" * 40)

    async def fixed(route: Route, body: object) -> Envelope:
        if route.action == "refuse":
            raise NodeRefused(409, "replayed-message", "seen")
        if route.action == "crash":
            raise RuntimeError("a handler bug")
        return answer

    world.b.services.handle = fixed  # type: ignore[method-assign]
    for module, action in (("messaging", "refuse"), ("m", "crash")):
        world.b.services.actions.add(module, action, fixed, batchable=True)  # type: ignore[arg-type]
    url = world.b.url + BATCH_PATH
    body = batch(call(SEND, PLAIN), call("messaging/refuse", PLAIN), call("m/crash", PLAIN))
    fast_answer, slow_answer = await both(world, url, body)
    assert fast_answer == slow_answer
    answers = json.loads(fast_answer[2])["answers"]
    assert answers[0] == {"status": 200, "body": answer.to_json()}
    assert answers[1]["status"] == 409 and answers[1]["body"]["detail"] == "seen"
    # A bug in one call is that call's 500 problem, with nothing of it in the answer.
    assert answers[2]["status"] == 500 and "bug" not in json.dumps(answers[2])
    for raw in ODD_BODIES:
        a, b = await both(world, url, raw)
        assert a == b, (raw[:40], a, b)
        assert 400 <= a[0] < 500 and a[1] == b[1]
    a, b = await both(world, url, batch(*[call(SEND, PLAIN)] * (MAX_CALLS + 1)))
    assert a == b and a[0] == 400


async def test_only_actions_registered_as_batchable_are_handled_in_a_batch(
    world: World,
) -> None:
    handled: list[Route] = []

    async def recording(route: Route, body: object) -> Envelope:
        handled.append(route)
        return PLAIN

    world.b.services.handle = recording  # type: ignore[method-assign]
    chunk = Route("file_sharing", "chunk")
    status, _, content = await post(world.b.url + BATCH_PATH, batch(
        call(chunk, PLAIN), call(SEND, PLAIN), call("nobody/here", PLAIN)))
    answers = json.loads(content)["answers"]
    assert status == 200 and [a["status"] for a in answers] == [400, 200, 404]
    assert answers[0]["body"]["type"] == "urn:openred:problem:not-batchable"
    assert answers[2]["body"]["type"] == "urn:openred:problem:unknown-route"
    assert handled == [SEND]  # the file chunk was never served


async def test_a_batch_over_the_body_limit_is_refused_whole(world: World) -> None:
    limit = world.b.app.config["MAX_CONTENT_LENGTH"]
    big = Envelope("A" * 22, 1, b"\x00" * 60_000)
    calls = [call(SEND, big)] * (limit // 80_000 + 1)
    status, _, content = await post(world.b.url + BATCH_PATH, batch(*calls))
    assert status == 413 and json.loads(content)["status"] == 413


# -- the sending node, over real HTTP --

async def test_concurrent_messages_leave_in_batches_and_all_arrive(world: World) -> None:
    sessions = [(await world.a.services.connect(await granted(world))).session_id
                for _ in range(2)]
    texts = [f"message {i}" for i in range(40)]
    receipts = await asyncio.gather(*(
        world.a.services.send_message(sessions[i % 2], text) for i, text in enumerate(texts)))
    assert len({r.message_id for r in receipts}) == len(texts)
    (batcher,) = world.a.services.batchers.values()
    assert batcher.stats.batches >= 1 and batcher.stats.batched_calls >= 2
    assert batcher.stats.singles + batcher.stats.batched_calls == len(texts)
    assert sorted(m.text for m in await world.b.services.messaging.inbox(limit=100)) == sorted(
        texts)
    delivered = [m for m in await world.a.services.messaging.outbox(limit=100)
                 if m.delivered_at is not None]
    assert len(delivered) == len(texts)


async def test_a_peer_without_the_route_gets_the_calls_one_by_one(world: World) -> None:
    sid = (await world.a.services.connect(await granted(world))).session_id

    async def no_batches(body: object, render: Any) -> Any:
        raise NodeRefused(404, "not-found", "no such route")

    world.b.services.handle_batch = no_batches  # type: ignore[method-assign]
    texts = [f"old peer {i}" for i in range(12)]
    await asyncio.gather(*(world.a.services.send_message(sid, t) for t in texts))
    (batcher,) = world.a.services.batchers.values()
    assert batcher.stats.fallbacks >= 1 and batcher.stats.batches == 0
    assert not batcher.batching  # not tried again for a while
    assert sorted(m.text for m in await world.b.services.messaging.inbox()) == sorted(texts)


async def _hostile_batches(world: World, change: Any) -> list[Any]:
    """Send 6 messages at once through a peer whose batch answers ``change`` rewrites."""
    sid = (await world.a.services.connect(await granted(world))).session_id
    real = world.b.services.handle_batch

    async def hostile(body: object, render: Any) -> list[dict[str, Any]]:
        answers = await real(body, render)
        return list(change(answers)) if len(answers) > 1 else answers

    world.b.services.handle_batch = hostile  # type: ignore[method-assign]
    return await asyncio.gather(*(world.a.services.send_message(sid, f"m{i}") for i in range(6)),
                                return_exceptions=True)


async def test_answers_swapped_inside_a_batch_are_not_taken_for_receipts(world: World) -> None:
    outcomes = await _hostile_batches(world, lambda answers: answers[::-1])
    refused = [o for o in outcomes if isinstance(o, Exception)]
    (batcher,) = world.a.services.batchers.values()
    # Every message of a reversed batch (but the middle one of an odd count, which keeps its
    # own answer) had its answer refused: each is bound to another request's counter.
    assert batcher.stats.batches >= 1 and len(refused) >= 2
    assert all(isinstance(error, CryptoError) for error in refused), refused
    delivered = {m.message_id for m in await world.a.services.messaging.outbox()
                 if m.delivered_at is not None}
    assert len(delivered) == len(outcomes) - len(refused)


async def test_a_tampered_answer_fails_only_its_own_message(world: World) -> None:
    def tamper(answers: list[dict[str, Any]]) -> list[dict[str, Any]]:
        body = dict(answers[0]["body"])
        raw = bytearray(Envelope.from_json(body).ciphertext)
        raw[0] ^= 1
        answers[0] = {"status": 200, "body": dict(body, ciphertext=b64url(bytes(raw)))}
        return answers

    outcomes = await _hostile_batches(world, tamper)
    refused = [o for o in outcomes if isinstance(o, Exception)]
    (batcher,) = world.a.services.batchers.values()
    assert len(refused) == batcher.stats.batches >= 1
    assert all(isinstance(error, CryptoError) for error in refused), refused


# -- post_batch against answers that are not batch answers --

class _Canned(HttpClient):
    """An HttpClient whose ``request`` (as a wrapping module's would) answers ``reply``."""

    def __init__(self, reply: Reply) -> None:
        super().__init__(allow_private=True)
        self.reply = reply
        self.sent: list[bytes] = []

    async def request(self, method: str, url: str, **kwargs: Any) -> Reply:
        self.sent.append(kwargs["body"])
        return self.reply


def _refuse(route: Route, reply: Reply) -> Exception:
    return NodeRefused(reply.status, "peer-refused", f"{route} {reply.status}")


@pytest.mark.parametrize("content", [
    b"not json", b"[]", b'{"answers": {}}', b'{"answers": [{"status": 200, "body": {}}]}',
    b'{"answers": [{"status": 200}, {"status": 200}]}',
    b'{"answers": [{"status": "200", "body": 1}, {"status": 200, "body": 1}]}',
    b'{"answers": [{"status": true, "body": 1}, {"status": 200, "body": 1}]}',
    b'{"answers": [{"status": 99, "body": 1}, {"status": 200, "body": 1}]}',
])
async def test_an_answer_that_is_not_a_batch_answer_is_a_transport_error(content: bytes) -> None:
    http = _Canned(Reply(200, {}, content))
    try:
        with pytest.raises(TransportError):
            await post_batch(http, "http://127.0.0.1:1/x", [(SEND, PLAIN), (SEND, PLAIN)],
                             refuse=_refuse)
    finally:
        await http.close()
    assert http.sent == [batch_body([(SEND, PLAIN), (SEND, PLAIN)])]


async def test_post_batch_maps_each_answer_and_whole_refusals() -> None:
    problem = {"type": "urn:openred:problem:replayed-message", "status": 409, "detail": "x"}
    content = json.dumps({"answers": [
        {"status": 200, "body": PLAIN.to_json()}, {"status": 409, "body": problem},
        {"status": 200, "body": {"session_id": "nope"}}]}).encode()
    http = _Canned(Reply(200, {}, content))
    try:
        calls = [(SEND, PLAIN)] * 3
        first, second, third = await post_batch(http, "http://127.0.0.1:1/x", calls,
                                                refuse=_refuse)
        assert first == PLAIN
        assert isinstance(second, NodeRefused) and second.status == 409
        assert isinstance(third, NodeRefused) and third.reason == "malformed-envelope"
        for status in (404, 405, 413):
            http.reply = Reply(status, {}, b"{}")
            with pytest.raises(BatchUnsupported):
                await post_batch(http, "http://127.0.0.1:1/x", calls, refuse=_refuse)
        http.reply = Reply(503, {}, b"{}")
        with pytest.raises(NodeRefused) as caught:
            await post_batch(http, "http://127.0.0.1:1/x", calls, refuse=_refuse)
        assert caught.value.status == 503
    finally:
        await http.close()


async def test_an_unreachable_peer_fails_every_call_of_the_batch() -> None:
    http = HttpClient(allow_private=True, connect_timeout=1, total_timeout=2)
    try:
        with pytest.raises(PeerUnreachable):
            await post_batch(http, "http://127.0.0.1:9/api/v3/p2p/batch", [(SEND, PLAIN)] * 2,
                             refuse=_refuse)
    finally:
        await http.close()


# -- the batcher on its own --

class _Peer:
    """Single and batch sends that wait until released, recording what was sent."""

    def __init__(self) -> None:
        self.singles: list[int] = []
        self.batches: list[list[int]] = []
        self.gate = asyncio.Event()
        self.unsupported: int | None = None
        self.fail: Exception | None = None

    def batched(self) -> list[int]:
        return [counter for batch in self.batches for counter in batch]

    async def single(self, route: Route, envelope: Envelope) -> Envelope:
        self.singles.append(envelope.counter)
        await self.gate.wait()
        if envelope.counter < 0:
            raise NodeRefused(409, "replayed-message", "no")
        return Envelope(envelope.session_id, envelope.counter + 1000, b"")

    async def many(self, calls: Sequence[tuple[Route, Envelope]]) -> list[Any]:
        self.batches.append([e.counter for _, e in calls])
        await self.gate.wait()
        if self.unsupported is not None:
            raise BatchUnsupported(self.unsupported)
        if self.fail is not None:
            raise self.fail
        return [NodeRefused(409, "replayed-message", "no") if e.counter % 7 == 0
                else Envelope(e.session_id, e.counter + 1000, b"") for _, e in calls]


def env(counter: int, size: int = 0) -> Envelope:
    return Envelope("A" * 22, counter, b"\x00" * size)


async def _settled(tasks: list[asyncio.Task[Envelope]]) -> list[Any]:
    return await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_lone_call_leaves_at_once_and_waiting_calls_leave_together() -> None:
    peer = _Peer()
    batcher = CallBatcher(peer.single, peer.many, in_flight=2)
    tasks = [asyncio.create_task(batcher.call(SEND, env(i))) for i in range(1, 11)]
    await asyncio.sleep(0)
    assert peer.singles == [1, 2] and peer.batches == []  # two under way, the rest wait
    peer.gate.set()
    results = await _settled(tasks)
    assert peer.batches and sorted(peer.singles + peer.batched()) == list(range(1, 11))
    for i, result in enumerate(results, start=1):
        if i % 7 == 0:
            assert isinstance(result, NodeRefused)
        else:
            assert result == Envelope("A" * 22, i + 1000, b"")
    assert batcher.idle and batcher.stats.batched_calls == sum(len(b) for b in peer.batches)


async def test_batches_respect_the_call_and_byte_limits() -> None:
    peer = _Peer()
    batcher = CallBatcher(peer.single, peer.many, in_flight=1, max_calls=3, max_bytes=10_000)
    first = asyncio.create_task(batcher.call(SEND, env(1)))
    await asyncio.sleep(0)
    tasks = [asyncio.create_task(batcher.call(SEND, env(i, 3000))) for i in range(2, 9)]
    huge = asyncio.create_task(batcher.call(SEND, env(50, 20_000)))  # over max_bytes: alone
    await asyncio.sleep(0)
    assert 50 in peer.singles
    peer.gate.set()
    await _settled([first, huge, *tasks])
    assert all(len(b) <= 3 for b in peer.batches)
    assert all(sum(4000 + 160 for _ in b) <= 10_000 for b in peer.batches)
    assert sorted(peer.singles + peer.batched()) == [1, *range(2, 9), 50]


async def test_a_waiting_call_that_is_cancelled_is_not_sent() -> None:
    peer = _Peer()
    batcher = CallBatcher(peer.single, peer.many, in_flight=1)
    first = asyncio.create_task(batcher.call(SEND, env(1)))
    await asyncio.sleep(0)
    kept = [asyncio.create_task(batcher.call(SEND, env(i))) for i in (2, 3)]
    gone = asyncio.create_task(batcher.call(SEND, env(4)))
    await asyncio.sleep(0)
    gone.cancel()
    peer.gate.set()
    await _settled([first, *kept, gone])
    assert 4 not in peer.singles + peer.batched()
    assert peer.batches == [[2, 3]]


async def test_a_failed_batch_fails_each_of_its_calls() -> None:
    peer = _Peer()
    peer.fail = PeerUnreachable("gone")
    batcher = CallBatcher(peer.single, peer.many, in_flight=1)
    tasks = [asyncio.create_task(batcher.call(SEND, env(i))) for i in range(1, 5)]
    await asyncio.sleep(0)
    peer.gate.set()
    results = await _settled(tasks)
    assert results[0] == Envelope("A" * 22, 1001, b"")
    assert all(isinstance(r, PeerUnreachable) and str(r) == "gone" for r in results[1:])
    assert len({id(r) for r in results[1:]}) == 3  # each caller raises its own


async def test_a_batch_refused_whole_gives_each_caller_its_own_refusal() -> None:
    peer = _Peer()
    peer.fail = NodeRefused(503, "busy", "try later")
    batcher = CallBatcher(peer.single, peer.many, in_flight=1)
    tasks = [asyncio.create_task(batcher.call(SEND, env(i))) for i in range(1, 4)]
    await asyncio.sleep(0)
    peer.gate.set()
    refusals = (await _settled(tasks))[1:]
    assert len({id(r) for r in refusals}) == 2
    for refusal in refusals:
        assert isinstance(refusal, NodeRefused)
        assert (refusal.status, refusal.reason, refusal.detail) == (503, "busy", "try later")


@pytest.mark.parametrize("status", [404, 405, 413])
async def test_a_peer_refusing_batches_gets_single_calls(status: int) -> None:
    clock = [0.0]
    peer = _Peer()
    peer.unsupported = status
    batcher = CallBatcher(peer.single, peer.many, in_flight=1, clock=lambda: clock[0])
    tasks = [asyncio.create_task(batcher.call(SEND, env(i))) for i in range(1, 5)]
    await asyncio.sleep(0)
    peer.gate.set()
    results = await _settled(tasks)
    assert [r.counter for r in results] == [1001, 1002, 1003, 1004]
    assert sorted(peer.singles) == [1, 2, 3, 4] and batcher.stats.fallbacks == 1
    assert batcher.batching is (status == 413)
    clock[0] += batch_module.RETRY_BATCHING_AFTER
    assert batcher.batching


async def test_closing_fails_the_waiting_calls_and_refuses_new_ones() -> None:
    peer = _Peer()
    batcher = CallBatcher(peer.single, peer.many, in_flight=1)
    tasks = [asyncio.create_task(batcher.call(SEND, env(i))) for i in range(1, 6)]
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    await batcher.close()
    peer.gate.set()
    results = await _settled(tasks)
    assert all(isinstance(r, PeerUnreachable) for r in results[1:])
    with pytest.raises(PeerUnreachable):
        await batcher.call(SEND, env(9))


async def test_a_call_leaves_only_after_what_it_waits_for() -> None:
    peer = _Peer()
    batcher = CallBatcher(peer.single, peer.many, in_flight=1)
    loop = asyncio.get_running_loop()
    first = asyncio.create_task(batcher.call(SEND, env(1)))  # under way, held at the gate
    await asyncio.sleep(0)
    slow, failing, cancelled = loop.create_future(), loop.create_future(), loop.create_future()
    waiting = {
        2: asyncio.create_task(batcher.call(SEND, env(2), after=slow)),
        3: asyncio.create_task(batcher.call(SEND, env(3))),
        4: asyncio.create_task(batcher.call(SEND, env(4), after=failing)),
        5: asyncio.create_task(batcher.call(SEND, env(5), after=cancelled)),
        6: asyncio.create_task(batcher.call(SEND, env(6))),
    }
    await asyncio.sleep(0)
    failing.set_exception(StoreUnavailable("disk full"))
    cancelled.cancel()
    peer.gate.set()
    await first
    for _ in range(5):
        await asyncio.sleep(0)
    # The ready ones left together; 2 still waits for its append, 4 and 5 never leave.
    assert peer.batches == [[3, 6]] and peer.singles == [1]
    assert not waiting[2].done()
    with pytest.raises(StoreUnavailable):
        await waiting[4]
    with pytest.raises(TransportError):
        await waiting[5]
    slow.set_result(None)
    assert (await waiting[2]).counter == 1002
    assert peer.singles == [1, 2]
    assert 4 not in peer.batched() + peer.singles and 5 not in peer.batched() + peer.singles


async def test_a_lone_call_waits_for_its_prerequisite_then_leaves() -> None:
    peer = _Peer()
    peer.gate.set()
    batcher = CallBatcher(peer.single, peer.many, in_flight=2)
    loop = asyncio.get_running_loop()
    ready = loop.create_future()
    task = asyncio.create_task(batcher.call(SEND, env(1), after=ready))
    await asyncio.sleep(0)
    assert peer.singles == []
    ready.set_result(None)
    assert (await task).counter == 1001 and peer.singles == [1]
    failed = loop.create_future()
    failed.set_exception(StoreUnavailable("disk full"))
    with pytest.raises(StoreUnavailable):
        await batcher.call(SEND, env(2), after=failed)
    assert peer.singles == [1]


def test_the_batcher_refuses_nonsense_limits() -> None:
    peer = _Peer()
    for in_flight, max_calls in ((0, 1), (1, 0), (1, MAX_CALLS + 1)):
        with pytest.raises(ValueError):
            CallBatcher(peer.single, peer.many, in_flight=in_flight, max_calls=max_calls)


async def test_a_served_batch_through_aiohttp_directly(world: World) -> None:
    """The plain client path (no wrapper): the same answers as ``http.request`` gives."""
    sid = (await world.a.services.connect(await granted(world))).session_id
    envelopes = [await sealed(world, sid, message(f"d{i}")) for i in range(3)]
    http = world.a.services.http
    outcomes = await post_batch(http, world.b.url + BATCH_PATH,
                                [(SEND, e) for e in envelopes], refuse=_refuse)
    assert all(isinstance(o, Envelope) for o in outcomes)
    async with aiohttp.ClientSession() as session, session.post(
        world.b.url + BATCH_PATH, data=batch_body([(SEND, envelopes[0])]),
        headers={"Content-Type": "application/json"},
    ) as resp:
        assert resp.status == 200
        assert (await resp.json())["answers"][0]["status"] == 409  # a replay now


async def test_a_message_leaves_only_once_its_sent_entry_is_committed(world: World) -> None:
    """The batcher takes a message while its ``MessageSent`` is being appended, but the
    request carrying it leaves only after that append committed; a failed one sends nothing."""
    sid = (await world.a.services.connect(await granted(world))).session_id
    a_store = world.a.services.store
    real_append, gate = a_store.append, asyncio.Event()
    appends: list[str] = []

    async def held(events: Any) -> Any:
        if events[0].type == "MessageSent":
            appends.append(events[0].payload["message_id"])
            number = len(appends) - 1
            await gate.wait()
            if number in (2, 5):
                raise StoreUnavailable("disk full")
        return await real_append(events)

    a_store.append = held  # type: ignore[method-assign]
    actions = world.b.services.actions
    receive = actions._handlers[SEND]
    arrived: list[bool] = []

    async def checking(ctx: Any, plaintext: bytes) -> Any:
        message_id = json.loads(plaintext)["message_id"]
        logged = {json.loads(e.payload)["message_id"] for e in await a_store.read()
                  if e.type == "MessageSent"}
        arrived.append(message_id in logged)
        return await receive(ctx, plaintext)

    actions._handlers[SEND] = checking
    sends = [asyncio.create_task(world.a.services.send_message(sid, f"m{i}")) for i in range(8)]
    while len(appends) < 8:
        await asyncio.sleep(0.01)
    await asyncio.sleep(0.2)
    assert arrived == []  # nothing left A while its MessageSent was not committed
    gate.set()
    outcomes = await asyncio.gather(*sends, return_exceptions=True)
    failed = [i for i, o in enumerate(outcomes) if isinstance(o, StoreUnavailable)]
    assert len(failed) == 2 and all(isinstance(o, Receipt) for i, o in enumerate(outcomes)
                                    if i not in failed)
    assert arrived == [True] * 6
    assert sorted(m.text for m in await world.b.services.messaging.inbox()) == [
        f"m{i}" for i in range(8) if i not in failed]
