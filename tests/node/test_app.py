"""The node app on real Hypercorn servers: token delivery, handshake and encrypted calls over HTTP.

Two nodes are served on loopback (in this test's event loop, each with its own real jail and
log); a directory log mints real grants, pushes them signed with RFC 9421 (keyid ``directory``)
and answers checkpoint requests. Every refusal is an RFC 9457 problem, never a 500, and leaves
nothing half-written in the log.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from quart import Quart

from openred.crypto.client import JailClient
from openred.crypto.identity import SignKey, b64url
from openred.node import events as ev
from openred.node.app import create_app
from openred.node.routes import EXTENSION
from openred.node.services import NodeServices
from openred.node.settings import NodeSettings
from openred.web.client import HttpClient, Signer
from openred.web.problems import PROBLEM_JSON
from tests.node.world import Directory, JailPair, record_envelopes
from tests.servers import free_port, serve_in_loop


def now() -> int:
    return int(time.time())


def directory_app(directory: Directory) -> Quart:
    """The directory's checkpoint route over the test's directory log."""
    app = Quart("test-directory")

    @app.get("/api/v3/directory/checkpoint")
    async def checkpoint() -> dict[str, Any]:
        from quart import request

        to = request.args.get("to")
        note, proof = await directory.fetch(int(request.args.get("from", "0")),
                                            None if to is None else int(to))
        return {"checkpoint": note.decode(), "consistency_proof": [b64url(h) for h in proof]}

    return app


@dataclass
class Served:
    name: str
    url: str
    app: Quart
    record: Any
    data: Path

    @property
    def services(self) -> NodeServices:
        svc: NodeServices = self.app.extensions[EXTENSION]
        return svc

    @property
    def id(self) -> Any:
        return self.services.keys.node_id

    # What Directory.pair needs of a node:
    @property
    def keys(self) -> Any:
        return self.services.keys


@contextlib.asynccontextmanager
async def serve_node(name: str, jail: JailClient, data: Path, directory_key: SignKey,
                     directory_url: str, port: int | None = None, *,
                     session_lifetime: int = 86400, **extra: Any) -> AsyncIterator[Served]:
    port = port or free_port()
    url = f"http://127.0.0.1:{port}"
    settings = NodeSettings(
        data_dir=data, host="127.0.0.1", port=port, public_url=url, allow_private_urls=True,
        directory_url=directory_url, directory_key=directory_key.b64url(),
        lifecycle_interval=3600, session_lifetime=session_lifetime, **extra,
    )
    data.mkdir(parents=True, exist_ok=True)
    app = create_app(settings, jail=jail)
    async with serve_in_loop(app, port):
        services: NodeServices = app.extensions[EXTENSION]
        # The node's own record (signed when it started): what the directory's grants name.
        yield Served(name, url, app, services.own_record.signed, data)


@dataclass
class World:
    a: Served
    b: Served
    directory: Directory
    pusher: HttpClient
    jails: list[JailClient]
    directory_url: str
    b_server: contextlib.AsyncExitStack


@pytest.fixture
async def world(jails: JailPair, directory: Directory, tmp_path: Path) -> AsyncIterator[World]:
    clients = [JailClient(p.socket_path, timeout=10) for p in jails.procs[:2]]

    async def sign_base(base: bytes) -> bytes:
        return bytes(directory.signing.sign(base).signature)

    pusher = HttpClient(signer=Signer("directory", sign_base), allow_private=True, attempts=1)
    async with contextlib.AsyncExitStack() as stack:
        dir_url = await stack.enter_async_context(serve_in_loop(directory_app(directory)))
        a = await stack.enter_async_context(
            serve_node("a", clients[0], tmp_path / "a", directory.key, dir_url))
        b_server = contextlib.AsyncExitStack()
        stack.push_async_callback(b_server.aclose)
        b = await b_server.enter_async_context(
            serve_node("b", clients[1], tmp_path / "b", directory.key, dir_url))
        yield World(a, b, directory, pusher, clients, dir_url, b_server)
    await pusher.close()
    for client in clients:
        await client.close()


async def push(world: World, to: Served, body: Any, *, signed: bool = True) -> Any:
    return await world.pusher.request("POST", f"{to.url}/api/v3/tokens/receive",
                                      json_body=body, signed=signed)


async def granted(world: World) -> str:
    """A grant from a to b, pushed to both over HTTP."""
    grant, for_a, for_b = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                                     issued_at=now())
    for node, body in ((world.a, for_a), (world.b, for_b)):
        reply = await push(world, node, body)
        assert reply.status == 200, reply.body
        assert reply.json() == {"grant_id": grant.grant_id, "status": "received"}
    return grant.grant_id


def problem(reply: Any, status: int, slug: str) -> None:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith(PROBLEM_JSON)
    assert reply.json()["type"] == f"urn:openred:problem:{slug}"


async def raw_post(url: str, data: bytes | str, content_type: str = "application/json") -> Any:
    async with aiohttp.ClientSession() as session, session.post(
        url, data=data, headers={"Content-Type": content_type}
    ) as resp:
        return resp.status, resp.headers.get("Content-Type", ""), await resp.read()


async def types(node: Served) -> list[str]:
    return [e.type for e in await node.services.store.read()]


async def test_health_names_the_node_and_its_modules(world: World) -> None:
    async with aiohttp.ClientSession() as session, session.get(
        f"{world.b.url}/api/v3/health"
    ) as resp:
        body = await resp.json()
    assert resp.status == 200
    assert body["node_id"] == world.b.id and body["status"] == "ok"
    assert body["modules"] == {"loaded": ["file_sharing", "messaging"], "failed": []}  # defaults


async def test_health_tells_a_stranger_nothing_of_the_nodes_traffic(world: World) -> None:
    """``GET /api/v3/health`` answers anyone on the public port. It said how many sessions
    were active, how many tokens waited and how long the log was, so whoever polled two nodes
    saw each grant, handshake and message as it happened (the log grows by one entry per
    message received, two per message sent) and could pair the nodes that talk: the metadata
    the encryption and the admin-only metrics keep to the operator."""

    async def health() -> dict[str, Any]:
        async with aiohttp.ClientSession() as session, session.get(
            f"{world.b.url}/api/v3/health"
        ) as resp:
            assert resp.status == 200
            body: dict[str, Any] = await resp.json()
            return body

    before = await health()
    grant_id = await granted(world)
    channel = await world.a.services.connect(grant_id)
    await world.a.services.send_message(channel.session_id, "does anyone see this?")
    assert await health() == before
    assert set(before) == {"status", "version", "node_id", "modules"}


async def test_token_delivery_needs_the_directory_signature(world: World) -> None:
    grant, _, for_b = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                                 issued_at=now())
    problem(await push(world, world.b, for_b, signed=False), 401, "bad-signature")
    # Signed by a node key instead of the directory's: refused too.

    async def node_sign(base: bytes) -> bytes:
        return bytes(await world.jails[0].sign("http_signature_base", base))

    impostor = HttpClient(signer=Signer("directory", node_sign), allow_private=True, attempts=1)
    try:
        reply = await impostor.request("POST", f"{world.b.url}/api/v3/tokens/receive",
                                       json_body=for_b, signed=True)
    finally:
        await impostor.close()
    problem(reply, 401, "bad-signature")
    assert await types(world.b) == ["LogOpened"]
    reply = await push(world, world.b, for_b)
    assert reply.json() == {"grant_id": grant.grant_id, "status": "received"}
    assert (await push(world, world.b, for_b)).json()["status"] == "duplicate"


async def test_a_forged_grant_and_a_grant_for_another_node_are_refused(world: World) -> None:
    _, for_a, for_b = await world.directory.pair(world.a, world.b,  # type: ignore[arg-type]
                                                 issued_at=now())
    forged = dict(for_b, grant={**for_b["grant"], "expires_at": for_b["grant"]["expires_at"] + 9})
    problem(await push(world, world.b, forged), 401, "bad-grant-signature")
    # A's half delivered to B: B is a party, but the peer record is its own, not A's.
    problem(await push(world, world.b, for_a), 422, "unverifiable-delivery")
    problem(await push(world, world.b, {"grant": 1}), 400, "malformed-delivery")
    assert await types(world.b) == ["LogOpened"]


async def test_nodes_shake_hands_and_talk_over_http(world: World) -> None:
    grant_id = await granted(world)
    channel = await world.a.services.connect(grant_id)
    [row] = await world.b.services.book.sessions()
    assert row.session_id == channel.session_id and row.peer == world.a.id
    receipt = await world.a.services.send_message(channel.session_id, "hello over HTTP")
    [message] = await world.b.services.messaging.inbox()
    assert (message.text, message.peer, message.message_id) == (
        "hello over HTTP", world.a.id, receipt.message_id)
    # The responder sends on the same session to the initiator's server.
    await world.b.services.send_message(channel.session_id, "hello back")
    assert [m.text for m in await world.a.services.messaging.inbox()] == ["hello back"]
    [out] = await world.a.services.messaging.outbox()
    assert out.delivered_at is not None


async def test_handshake_refusals_over_http(world: World) -> None:
    grant_id = await granted(world)
    sent: list[dict[str, Any]] = []
    services = world.a.services
    original = services.http.request

    async def recording(method: str, url: str, **kw: Any) -> Any:
        if url.endswith("/p2p/handshake"):
            sent.append(kw["json_body"])
        return await original(method, url, **kw)

    services.http.request = recording  # type: ignore[method-assign]
    await services.connect(grant_id)
    url = f"{world.b.url}/api/v3/p2p/handshake"
    size = world.b.services.store.head.size
    # A replayed message 1 against the real server: the grant is used.
    status, kind, body = await raw_post(url, json.dumps(sent[0]))
    assert (status, json.loads(body)["type"]) == (409, "urn:openred:problem:grant-used")
    assert kind.startswith(PROBLEM_JSON)
    status, _, body = await raw_post(url, json.dumps({**sent[0], "grant_id": b64url(bytes(16))}))
    assert (status, json.loads(body)["type"]) == (404, "urn:openred:problem:unknown-grant")
    for bad, expected in ((b"{not json", 400), (json.dumps({"grant_id": 5}), 400),
                          (json.dumps({**sent[0], "message": "A" * 3000}), 413),
                          (b"x" * (world.b.services.settings.max_body_bytes + 1), 413)):
        status, kind, _ = await raw_post(url, bad)
        assert status == expected and kind.startswith(PROBLEM_JSON)
    rejected = [e.type for e in await world.b.services.store.read(size + 1)]
    assert rejected == [ev.HANDSHAKE_REJECTED, ev.HANDSHAKE_REJECTED]


async def test_encrypted_calls_refuse_replays_tampering_and_malformed_envelopes(
    world: World, monkeypatch: pytest.MonkeyPatch,
) -> None:
    grant_id = await granted(world)
    channel = await world.a.services.connect(grant_id)
    envelopes: list[dict[str, Any]] = []
    record_envelopes(monkeypatch, envelopes)
    await world.a.services.send_message(channel.session_id, "one")
    size = world.b.services.store.head.size
    url = f"{world.b.url}/api/v3/p2p/messaging/send"
    good = envelopes[0]
    from openred.modules.messaging.service import SEND

    fresh = (await world.a.services.keeper.channel(channel.session_id, now())).seal_request(
        SEND, b"never sent as is")
    flipped = bytes([fresh.ciphertext[0] ^ 1]) + fresh.ciphertext[1:]  # always differs
    tampered = dict(fresh.to_json(), ciphertext=b64url(flipped))
    cases = [
        (good, 409, "replayed-message"),
        (tampered, 401, "message-rejected"),
        (dict(good, counter="7"), 400, "malformed-envelope"),
        (dict(good, counter=7.5), 400, "malformed-envelope"),
        (dict(good, session_id=b64url(bytes(16))), 404, "unknown-session"),
        ({"session_id": good["session_id"]}, 400, "malformed-envelope"),
        (dict(good, ciphertext="A" * 360_000), 413, "envelope-too-large"),
    ]
    for body, status, slug in cases:
        got_status, kind, raw = await raw_post(url, json.dumps(body))
        assert (got_status, json.loads(raw)["type"]) == (status, f"urn:openred:problem:{slug}")
        assert kind.startswith(PROBLEM_JSON)
    # Moved to another action: unknown route; to a route the module does not have: 404.
    status, _, raw = await raw_post(f"{world.b.url}/api/v3/p2p/messaging/other",
                                    json.dumps(good))
    assert (status, json.loads(raw)["type"]) == (404, "urn:openred:problem:unknown-route")
    status, _, _ = await raw_post(f"{world.b.url}/api/v3/p2p/Bad/x", json.dumps(good))
    assert status == 404
    assert world.b.services.store.head.size == size  # nothing half-written
    assert [m.text for m in await world.b.services.messaging.inbox()] == ["one"]


async def test_a_restarted_node_resumes_its_session_over_http(
    world: World, directory: Directory, monkeypatch: pytest.MonkeyPatch,
) -> None:
    grant_id = await granted(world)
    channel = await world.a.services.connect(grant_id)
    envelopes: list[dict[str, Any]] = []
    record_envelopes(monkeypatch, envelopes)
    await world.a.services.send_message(channel.session_id, "before the restart")
    port = int(world.b.url.rsplit(":", 1)[1])
    # B's server stops (its app closes its log, signing a last checkpoint) and a new app
    # serves the same data directory at the same URL: nothing of the session is in memory.
    await world.b_server.aclose()
    async with serve_node("b", world.jails[1], world.b.data, directory.key,
                          world.directory_url, port=port) as b2:
        assert b2.url == world.b.url
        receipt = await world.a.services.send_message(channel.session_id, "after the restart")
        texts = sorted(m.text for m in await b2.services.messaging.inbox())
        assert texts == ["after the restart", "before the restart"]
        assert receipt.message_id
        # The request A sent before the restart, replayed to the new process: refused.
        status, _, raw = await raw_post(f"{b2.url}/api/v3/p2p/messaging/send",
                                        json.dumps(envelopes[0]))
        assert (status, json.loads(raw)["type"]) == (409, "urn:openred:problem:replayed-message")
        saved = [e.type for e in await b2.services.store.read()].count(ev.SESSION_STATE_SAVED)
        assert saved == 1  # restored once, saved before it answered


async def test_a_module_that_fails_to_load_does_not_take_the_node_down(
    jails: JailPair, directory: Directory, tmp_path: Path,
) -> None:
    port, dir_port = free_port(), free_port()
    url = f"http://127.0.0.1:{port}"
    settings = NodeSettings(
        data_dir=tmp_path / "c", host="127.0.0.1", port=port, public_url=url,
        allow_private_urls=True, directory_url=f"http://127.0.0.1:{dir_port}",
        directory_key=directory.key.b64url(), modules=("messaging", "not_installed"),
    )
    settings.data_dir.mkdir()
    async with serve_in_loop(directory_app(directory), dir_port), JailClient(
        jails.procs[2].socket_path
    ) as jail, serve_in_loop(
        create_app(settings, jail=jail), port
    ), aiohttp.ClientSession() as session, session.get(f"{url}/api/v3/health") as resp:
        body = await resp.json()
    assert resp.status == 200
    assert body["modules"] == {"loaded": ["messaging"], "failed": ["not_installed"]}


ODD_BODIES: list[bytes] = [
    b"", b"null", b"[]", b"{}", b'"text"', b"1e999", b"-0", b"true",
    b'{"grant_id": null, "message": null}', b'{"session_id": [], "counter": {}, "ciphertext": 1}',
    b"[" * 5000 + b"]" * 5000, b'{"a": "\\ud800"}', "{\"é\": \"ü\"}".encode(),
    b'{"session_id": "AAAAAAAAAAAAAAAAAAAAAA", "counter": 18446744073709551616, '
    b'"ciphertext": ""}',
    b'{"grant": {}, "grant_signature": "", "sealed_token": "", "peer_record": {}, "entry": {}, '
    b'"checkpoint": "", "inclusion_proof": {}}',
    b"\xff\xfe\x00garbage",
]


async def test_no_body_a_client_can_send_gets_a_500(world: World) -> None:
    paths = ["/api/v3/p2p/handshake", "/api/v3/p2p/messaging/send", "/api/v3/tokens/receive",
             "/api/v3/p2p/x/y", "/api/v3/p2p/batch", "/api/v3/health"]
    for path in paths:
        for body in ODD_BODIES:
            for content_type in ("application/json", "text/plain"):
                status, kind, _ = await raw_post(world.b.url + path, body, content_type)
                assert 400 <= status < 500, (path, body[:40], status)
                assert kind.startswith(PROBLEM_JSON), (path, body[:40], kind)
    assert await types(world.b) == ["LogOpened"]


async def test_refused_handshakes_are_rate_limited_per_address_before_they_reach_the_log(
    jails: JailPair, directory: Directory, tmp_path: Path,
) -> None:
    async with JailClient(jails.procs[2].socket_path) as jail, serve_node(
        "c", jail, tmp_path / "c", directory.key, "http://127.0.0.1:9", handshake_refusals=3,
    ) as c:
        url = f"{c.url}/api/v3/p2p/handshake"
        body = json.dumps({"grant_id": b64url(bytes(16)), "message": b64url(bytes(48))})
        for _ in range(3):
            status, _, _ = await raw_post(url, body)
            assert status == 404
        async with aiohttp.ClientSession() as session, session.post(
            url, data=body, headers={"Content-Type": "application/json"}
        ) as resp:
            assert resp.status == 429
            assert int(resp.headers["Retry-After"]) >= 1
            assert (await resp.json())["type"] == "urn:openred:problem:rate-limited"
        assert (await types(c)).count(ev.HANDSHAKE_REJECTED) == 3


async def test_a_burst_of_refused_handshakes_cannot_outrun_the_limit(
    jails: JailPair, directory: Directory, tmp_path: Path,
) -> None:
    """Handshakes sent at once all passed the per-address check before the first refusal was
    counted (the refusal comes after awaits): a burst put one log entry each in the log."""
    async with JailClient(jails.procs[2].socket_path) as jail, serve_node(
        "c", jail, tmp_path / "c", directory.key, "http://127.0.0.1:9", handshake_refusals=3,
    ) as c:
        url = f"{c.url}/api/v3/p2p/handshake"
        body = json.dumps({"grant_id": b64url(bytes(16)), "message": b64url(bytes(48))})
        answers = await asyncio.gather(*(raw_post(url, body) for _ in range(20)))
        statuses = sorted(status for status, _, _ in answers)
        assert statuses == [404] * 3 + [429] * 17, statuses
        assert (await types(c)).count(ev.HANDSHAKE_REJECTED) == 3


async def test_the_openapi_document_lists_every_route_and_its_problems(world: World) -> None:
    async with aiohttp.ClientSession() as session, session.get(
        f"{world.b.url}/openapi.json"
    ) as resp:
        doc = await resp.json()
    paths = doc["paths"]
    assert set(paths) >= {"/api/v3/tokens/receive", "/api/v3/p2p/handshake",
                          "/api/v3/p2p/{module}/{action}", "/api/v3/p2p/batch",
                          "/api/v3/health"}
    handshake = paths["/api/v3/p2p/handshake"]["post"]["responses"]
    assert {"200", "401", "404", "409", "410", "429"} <= set(handshake)
    envelope = paths["/api/v3/p2p/{module}/{action}"]["post"]["responses"]
    assert {"200", "400", "401", "404", "409", "410", "413", "429", "507"} <= set(envelope)
    assert {"200", "400", "413"} <= set(paths["/api/v3/p2p/batch"]["post"]["responses"])


async def documented_statuses(node: Served, path: str) -> set[int]:
    """The statuses ``/openapi.json`` lists for ``POST path``."""
    async with aiohttp.ClientSession() as session, session.get(f"{node.url}/openapi.json") as resp:
        doc = await resp.json()
    return {int(code) for code in doc["paths"][path]["post"]["responses"]}


async def test_a_refused_renewal_proof_is_a_documented_422(world: World) -> None:
    """Found by tests/node/test_schemathesis.py: the handshake answered 422 ``invalid-renewal``
    (a ``renews`` proof naming no session due for renewal) but did not document 422."""
    grant_id = await granted(world)
    proof = {"session_id": b64url(bytes(16)), "counter": 0, "ciphertext": b64url(bytes(32))}
    status, kind, body = await raw_post(
        f"{world.b.url}/api/v3/p2p/handshake",
        json.dumps({"grant_id": grant_id, "message": b64url(bytes(48)), "renews": proof}))
    assert (status, json.loads(body)["type"]) == (422, "urn:openred:problem:invalid-renewal")
    assert kind.startswith(PROBLEM_JSON)
    assert status in await documented_statuses(world.b, "/api/v3/p2p/handshake")
