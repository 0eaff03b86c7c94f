"""A hostile peer on an established session against a served node: what it seals is checked.

The peer holds the session's keys, so everything it seals authenticates: the receiving node's
checks of the plaintext are all that stand between it and the log. Every call goes over HTTP
to the node, alone and in a batch; each bad one gets its RFC 9457 problem, never a 500, and
leaves nothing in the log.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from quart import Quart, Response, request

from openred.crypto.client import JailClient
from openred.crypto.identity import b64url
from openred.errors import NodeRefused, OpenRedError, TransportError
from openred.modules.messaging import events as ev
from openred.modules.messaging.service import SEND
from openred.node import events as node_events
from openred.node.p2p import Outcome, RequestContext
from openred.node.routes import source
from tests.node.test_app import World, granted, now, raw_post, serve_node
from tests.node.test_batch import batch, call
from tests.node.test_fastpath import sealed, world
from tests.node.world import Directory, JailPair
from tests.servers import serve_in_loop

__all__ = ["world"]

MESSAGE_ID = b64url(b"hostile-peer-id!")


def message(**changes: Any) -> bytes:
    """A message's plaintext as the peer seals it (JSON escapes what UTF-8 cannot carry)."""
    fields: dict[str, Any] = {"message_id": MESSAGE_ID, "text": "hello", "sent_at": now()}
    return json.dumps({**fields, **changes}).encode()


ODD_MESSAGES = [
    message(text="\ud800"), message(text="hi \udfff there"),
    message(sent_at=2**53), message(sent_at=2**64), message(sent_at=10**400),
    message(sent_at=1.5), message(sent_at="1"), message(sent_at=-1),
    message(message_id="\ud800" * 22), b'{"message_id": "' + MESSAGE_ID.encode() + b'"}',
    b"[" * 100_000, b"\xff\xfe", b"",
]


ODD_IDS = ["lone-high-surrogate", "lone-low-surrogate", "sent_at-2^53", "sent_at-2^64",
           "sent_at-10^400", "sent_at-float", "sent_at-string", "sent_at-negative",
           "surrogate-id", "id-only", "deep-nesting", "not-utf8", "empty"]
"""Stable test ids (the messages hold the time: pytest-xdist's workers must collect the same)."""


@pytest.mark.parametrize("plaintext", ODD_MESSAGES, ids=ODD_IDS)
async def test_an_odd_message_gets_a_problem_alone_and_in_a_batch(
    world: World, plaintext: bytes,
) -> None:
    session_id = (await world.a.services.connect(await granted(world))).session_id
    size = world.b.services.store.head.size
    url = f"{world.b.url}/api/v3/p2p/{SEND}"
    alone = await sealed(world, session_id, plaintext)
    status, kind, body = await raw_post(url, json.dumps(alone.to_json()))
    assert 400 <= status < 500 and kind.startswith("application/problem+json"), (status, body)
    in_batch = await sealed(world, session_id, plaintext)
    status, _, body = await raw_post(f"{world.b.url}/api/v3/p2p/batch",
                                     batch(call(SEND, in_batch)))
    assert status == 200, body
    [answer] = json.loads(body)["answers"]
    assert 400 <= answer["status"] < 500, answer
    assert world.b.services.store.head.size == size


@pytest.mark.parametrize("receipt", [
    {"received_at": 2**53}, {"received_at": 2**64}, {"received_at": -1},
    {"received_at": "1"}, {"received_at": True}, {"message_id": "x"},
])
async def test_an_odd_receipt_is_refused_by_the_sender_and_not_logged(
    world: World, receipt: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The peer's answer authenticates, so only the sender's check of the receipt keeps a
    receipt out of its log that the log cannot hold (it was a 503 of the sender's store)."""
    session_id = (await world.a.services.connect(await granted(world))).session_id
    handlers = world.b.services.actions._handlers

    async def hostile(ctx: RequestContext, plaintext: bytes) -> Outcome:
        sent = json.loads(plaintext)
        answer = {"message_id": sent["message_id"], "received_at": now(), **receipt}
        return Outcome(json.dumps(answer).encode())

    monkeypatch.setitem(handlers, SEND, hostile)
    with pytest.raises(NodeRefused) as refused:
        await world.a.services.send_message(session_id, "hello")
    assert (refused.value.status, refused.value.reason) == (502, "bad-receipt")
    assert ev.MESSAGE_DELIVERED not in {e.type for e in await world.a.services.store.read()}


async def test_one_call_twice_in_a_batch_and_alone_at_once_is_handled_once(
    world: World,
) -> None:
    session_id = (await world.a.services.connect(await granted(world))).session_id
    envelope = await sealed(world, session_id, message())
    url = f"{world.b.url}/api/v3/p2p/"
    body = batch(call(SEND, envelope), call(SEND, envelope))
    (status, _, raw), alone = await asyncio.gather(
        raw_post(url + "batch", body), raw_post(url + str(SEND), json.dumps(envelope.to_json())))
    assert status == 200
    statuses = [a["status"] for a in json.loads(raw)["answers"]] + [alone[0]]
    assert sorted(statuses) == [200, 409, 409]
    received = [e for e in await world.b.services.store.read_stream(f"session:{session_id}")
                if e.type == ev.MESSAGE_RECEIVED]
    assert len(received) == 1


async def test_one_message_id_under_two_counters_at_once_is_stored_once(world: World) -> None:
    """The receiver keeps a message id once (a sender's retry gets the same receipt): two
    calls carrying the same message, handled at once in one batch, were both stored."""
    session_id = (await world.a.services.connect(await granted(world))).session_id
    plaintext = message()
    body = batch(*[call(SEND, await sealed(world, session_id, plaintext)) for _ in range(4)])
    status, _, raw = await raw_post(f"{world.b.url}/api/v3/p2p/batch", body)
    assert status == 200
    answers = json.loads(raw)["answers"]
    assert [a["status"] for a in answers] == [200] * 4, answers
    received = [e for e in await world.b.services.store.read_stream(f"session:{session_id}")
                if e.type == ev.MESSAGE_RECEIVED]
    assert len(received) == 1
    assert len(await world.b.services.messaging.inbox()) == 1


async def test_a_peer_answering_deeply_nested_json_fails_the_send_as_a_transport_error(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """An answer JSON cannot parse without recursing past Python's limit, alone and to a
    batch: each send fails as a transport failure of the peer (502), not a RecursionError."""
    session_id = (await world.a.services.connect(await granted(world))).session_id
    hostile = Quart("hostile-peer")
    paths: list[str] = []

    @hostile.post("/api/v3/p2p/<path:rest>")
    async def answer(rest: str) -> Response:
        paths.append(rest)
        if len(paths) == 1:  # the lone first call: answered once the others wait behind it
            async with asyncio.timeout(5):
                while len(world.a.services.batchers[url]._queue) < 3:
                    await asyncio.sleep(0.005)
        return Response(b"[" * 100_000, content_type="application/json")

    async with serve_in_loop(hostile) as url:
        assert world.a.services.peer_urls is not None
        monkeypatch.setattr(world.a.services.peer_urls, "api_url", lambda node_id: url)
        sends = [world.a.services.send_message(session_id, f"m{i}") for i in range(4)]
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
    assert all(isinstance(o, TransportError) for o in outcomes), outcomes
    assert set(paths) == {"batch", str(SEND)}, paths


async def test_a_peer_calling_every_message_a_replay_moves_the_sender_one_epoch_not_one_each(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A sender whose message is refused as a replay moves to a fresh epoch and sends it
    again. Refusing a whole batch (anyone on the path can answer an unauthenticated problem)
    moved it one epoch per message in it, each a ledger reservation, a jail wrap and a log
    entry; past 1024 epochs ahead the honest peer refuses everything on the session until it
    is renewed. Messages sealed in an epoch the sender has left need no further rotation."""
    channel = await world.a.services.connect(await granted(world))
    hostile = Quart("replays-everything")
    first = channel.cipher.send_counter
    loop = asyncio.get_running_loop()

    @hostile.post("/api/v3/p2p/<path:rest>")
    async def answer(rest: str) -> Response:
        # Refuse once every message was sealed for its first try. A message first sealed
        # after a refusal came back is in the new epoch, and its own refusal rightly moves the
        # sender once more (one move per round trip): how many moves, then, would depend on
        # the host's load (it did under a loaded suite), not on the rule under test.
        deadline = loop.time() + 10
        while channel.cipher.send_counter - first < 40 and loop.time() < deadline:
            await asyncio.sleep(0.002)
        return Response(json.dumps({"type": "urn:openred:problem:replayed-message",
                                    "title": "Conflict", "status": 409, "detail": "seen"}),
                        status=409, content_type="application/problem+json")

    epoch = channel.cipher.send_epoch
    saves = len([e for e in await world.a.services.store.read_stream(
        f"session:{channel.session_id}") if e.type == "SessionStateSaved"])
    async with serve_in_loop(hostile) as url:
        assert world.a.services.peer_urls is not None
        monkeypatch.setattr(world.a.services.peer_urls, "api_url", lambda node_id: url)
        sends = [world.a.services.send_message(channel.session_id, f"m{i}") for i in range(40)]
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
    assert all(isinstance(o, NodeRefused) and o.reason == "replayed-message"
               for o in outcomes), outcomes
    assert channel.cipher.send_epoch == epoch + 1
    after = len([e for e in await world.a.services.store.read_stream(
        f"session:{channel.session_id}") if e.type == "SessionStateSaved"])
    assert after == saves + 1


ODD_VALUES: list[Any] = ["\ud800", "messaging/send\udfff", "", "A" * 22 + "\ud800", -1, 2**64,
                         1.5, True, None, [], {}, [[[]]], {"a": {"b": []}}]


async def test_every_field_of_a_handshake_and_a_batch_made_odd_gets_a_problem(
    world: World,
) -> None:
    from tests.node.test_hostile_directory import leaves, replaced

    session_id = (await world.a.services.connect(await granted(world))).session_id
    envelope = await sealed(world, session_id, message())
    grant_id = await granted(world)
    bodies = {
        "p2p/handshake": {"grant_id": grant_id, "message": b64url(bytes(96)),
                          "renews": envelope.to_json()},
        "p2p/batch": {"calls": [call(SEND, envelope)]},
        f"p2p/{SEND}": envelope.to_json(),
    }
    failures = []
    for path, genuine in bodies.items():
        for where in leaves(genuine):
            for odd in ODD_VALUES:
                status, kind, raw = await raw_post(f"{world.b.url}/api/v3/{path}",
                                                   json.dumps(replaced(genuine, where, odd)))
                answers = json.loads(raw).get("answers", []) if status == 200 else []
                problem = 400 <= status < 500 and kind.startswith("application/problem+json")
                refused = status == 200 and all(400 <= a["status"] < 500 for a in answers)
                if not (problem or refused):
                    failures.append((path, where, odd, status, raw[:100]))
    assert failures == [], "\n".join(map(repr, failures))


@pytest.mark.parametrize("answer", [
    b"[" * 100_000, b"[]", b'{"session_id": 1, "message": "AAAA"}',
    b'{"session_id": "x", "message": "!!"}', b'{"session_id": "x", "message": "\\ud800"}',
    json.dumps({"session_id": "A" * 22, "message": b64url(bytes(700_000))}).encode(),
    json.dumps({"session_id": "A" * 22, "message": b64url(bytes(48))}).encode(),
])
async def test_a_hostile_responder_fails_the_handshake_with_a_problem(
    world: World, answer: bytes, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from dataclasses import replace

    hostile = Quart("hostile-responder")

    @hostile.post("/api/v3/p2p/handshake")
    async def handshake() -> Response:
        return Response(answer, content_type="application/json")

    grant_id = await granted(world)
    book = world.a.services.handshakes.book
    known = await book.peer(str(world.b.id))
    assert known is not None
    async with serve_in_loop(hostile) as url:
        async def peer(node_id: str) -> Any:
            return replace(known, api_url=url)

        monkeypatch.setattr(book, "peer", peer)
        with pytest.raises(OpenRedError) as failed:
            await world.a.services.connect(grant_id)
    assert isinstance(failed.value, (NodeRefused, TransportError)), failed.value
    # The grant is still unused: the real responder can still be reached with it.
    monkeypatch.undo()
    await world.a.services.connect(grant_id)


async def test_refused_handshakes_from_many_addresses_do_not_fill_the_log(
    jails: JailPair, directory: Directory, tmp_path: Path,
) -> None:
    """Each address may cause ``handshake_refusals`` logged refusals a minute; anyone with many
    addresses (127.0.0.0/8 here, a /64 of IPv6 anywhere) multiplied that without bound. All
    addresses together now cause at most ten times that many log entries a minute; refusals
    past it are answered the same, and not logged."""
    async with JailClient(jails.procs[2].socket_path) as jail, serve_node(
        "c", jail, tmp_path / "c", directory.key, "http://127.0.0.1:9", handshake_refusals=1,
    ) as c:
        url = f"{c.url}/api/v3/p2p/handshake"
        body = json.dumps({"grant_id": b64url(bytes(16)), "message": b64url(bytes(48))})
        statuses = []
        for host in range(2, 32):
            connector = aiohttp.TCPConnector(local_addr=(f"127.0.0.{host}", 0))
            async with aiohttp.ClientSession(connector=connector) as session:
                for _ in range(2):
                    async with session.post(
                            url, data=body, headers={"Content-Type": "application/json"},
                    ) as resp:
                        assert resp.content_type == "application/problem+json"
                        statuses.append(resp.status)
        assert statuses == [404, 429] * 30
        logged = [e.type for e in await c.services.store.read()]
        assert logged.count(node_events.HANDSHAKE_REJECTED) == 10


def test_the_handshake_limit_counts_an_ipv6_64_as_one_address() -> None:
    assert source("2001:db8:1:2:aaaa::1") == source("2001:db8:1:2:ffff::9") == "2001:db8:1:2::/64"
    assert source("2001:db8:1:3::1") != source("2001:db8:1:2::1")
    assert source("::ffff:192.0.2.7") == source("192.0.2.7") == "192.0.2.7"
    assert source(None) == "unknown" and source("unix-socket") == "unix-socket"


@pytest.mark.parametrize("envelope", [
    {"a": 1}, {"session_id": "x", "counter": 1, "ciphertext": ""}, [],
    {"session_id": "A" * 22, "counter": 1, "ciphertext": "A" * 400_000},
])
async def test_a_peer_answering_what_is_not_an_envelope_is_the_peers_fault(
    world: World, envelope: Any, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A 200 whose body is not an envelope, alone or as a batch's answer: the sender's caller
    gets 502 (the peer failed), not the 400 or 413 its own request would get if it were bad."""
    session_id = (await world.a.services.connect(await granted(world))).session_id
    hostile = Quart("not-an-envelope")
    paths: list[str] = []

    @hostile.post("/api/v3/p2p/<path:rest>")
    async def answer(rest: str) -> Response:
        paths.append(rest)
        if rest == "batch":
            count = len((await request.get_json())["calls"])
            return Response(json.dumps({"answers": [{"status": 200, "body": envelope}] * count}),
                            content_type="application/json")
        async with asyncio.timeout(5):
            while len(paths) == 1 and len(world.a.services.batchers[url]._queue) < 2:
                await asyncio.sleep(0.005)
        return Response(json.dumps(envelope), content_type="application/json")

    async with serve_in_loop(hostile) as url:
        assert world.a.services.peer_urls is not None
        monkeypatch.setattr(world.a.services.peer_urls, "api_url", lambda node_id: url)
        sends = [world.a.services.send_message(session_id, f"m{i}") for i in range(3)]
        outcomes = await asyncio.gather(*sends, return_exceptions=True)
    assert set(paths) == {"batch", str(SEND)}, paths
    assert all(isinstance(o, NodeRefused) and o.status == 502 for o in outcomes), outcomes
