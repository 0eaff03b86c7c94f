"""Every bad input of issue 7 against a real directory: the right problem, nothing logged."""

from __future__ import annotations

import json
import time
from typing import Any

import aiohttp
import nacl.signing
import pytest

from openred.crypto.httpsig import HttpRequest, new_nonce, sign_request
from openred.crypto.identity import b64url
from openred.crypto.records import SignedNodeRecord
from openred.web.problems import PROBLEM_JSON
from tests.directory.conftest import Directory, Node


async def log_size(node: Node) -> int:
    health = await node.call("GET", "/api/v3/health", signed=False)
    return int(health.json()["log"]["size"])


def assert_problem(reply: Any, status: int, slug: str | None = None) -> None:
    assert reply.status == status, reply.body
    assert reply.headers["Content-Type"].startswith(PROBLEM_JSON)
    body = reply.json()
    assert body["status"] == status and "Traceback" not in reply.body.decode()
    if slug is not None:
        assert body["type"] == f"urn:openred:problem:{slug}", body


async def raw_post(url: str, data: bytes, headers: dict[str, str]) -> tuple[int, dict[str, Any]]:
    async with aiohttp.ClientSession() as s, s.post(url, data=data, headers=headers) as r:
        return r.status, await r.json(content_type=None)


async def signed_headers(node: Node, url: str, body: bytes, *, now: int | None = None,
                         nonce: str | None = None, key: nacl.signing.SigningKey | None = None,
                         method: str = "POST") -> dict[str, str]:
    signer = key or node.sk

    async def sign(base: bytes) -> bytes:
        return bytes(signer.sign(base).signature)

    req = await sign_request(
        HttpRequest(method, url, {"Content-Type": "application/json"}, body),
        keyid=node.node_id, sign_base=sign, now=now or int(time.time()),
        nonce=nonce or new_nonce())
    return dict(req.headers)


async def test_registration_refusals(directory: Directory, make_node: Any) -> None:
    alice, mallory = await make_node(), await make_node()
    assert (await alice.register()).status == 201
    size = await log_size(alice)
    url = directory.url + "/api/v3/nodes/register"

    # Registering another node's id: mallory signs the request, the record is alice's.
    assert_problem(await mallory.call("POST", "/api/v3/nodes/register",
                                      alice.record().to_wire()), 401, "bad-signature")
    assert (await mallory.register()).status == 201
    size += 1
    assert_problem(await mallory.call("POST", "/api/v3/nodes/register",
                                      alice.record().to_wire()), 403, "not-your-node")
    # A key/id mismatch: the record names an id that is not its key's.
    wire = mallory.record().to_wire()
    wire["record"]["node_id"] = alice.node_id
    assert_problem(await mallory.call("POST", "/api/v3/nodes/register", wire), 422,
                   "invalid-record")
    # A record signed by another key (the request is properly signed by the record's key).
    record = alice.record().record
    forged = SignedNodeRecord(record, mallory.sk.sign(record.canonical_bytes()).signature)
    assert_problem(await alice.call("POST", "/api/v3/nodes/register", forged.to_wire()),
                   422, "invalid-record")
    # A substituted URL or key after signing.
    for name, value in (("api_url", "http://127.0.0.1:1"), ("box_key", b64url(b"\x05" * 32))):
        wire = alice.record().to_wire()
        wire["record"][name] = value
        assert_problem(await alice.call("POST", "/api/v3/nodes/register", wire), 422,
                       "invalid-record")
    # An older version (a replayed move) and the same version with other content.
    old = alice.record(version=1, issued_at=1)
    assert_problem(await alice.register(old), 409, "stale-record")
    # Unsigned, wrongly signed, replayed, stale.
    body = json.dumps(alice.record().to_wire()).encode()
    status, problem = await raw_post(url, body, {"Content-Type": "application/json"})
    assert status == 401 and "missing" in problem["detail"]
    headers = await signed_headers(alice, url, body, key=nacl.signing.SigningKey.generate())
    status, problem = await raw_post(url, body, headers)
    assert status == 401 and problem["detail"] == "bad signature"
    headers = await signed_headers(alice, url, body)
    assert (await raw_post(url, body, headers))[0] == 200  # a newer version: NodeUpdated
    size += 1
    status, problem = await raw_post(url, body, headers)
    assert status == 401 and "replayed" in problem["detail"]
    headers = await signed_headers(alice, url, body, now=int(time.time()) - 3600)
    status, problem = await raw_post(url, body, headers)
    assert status == 401 and "older than the window" in problem["detail"]
    headers = await signed_headers(alice, url, body, now=int(time.time()) + 3600)
    assert (await raw_post(url, body, headers))[0] == 401
    # The body signed is not the body sent.
    headers = await signed_headers(alice, url, body)
    status, problem = await raw_post(url, body.replace(b"messaging", b"messagingx"), headers)
    assert status in (401, 422)
    assert await log_size(alice) == size


@pytest.mark.parametrize("body,status,slug", [
    (b"{not json", 400, "malformed"),
    (b'{"record": 1, "signature": "x"}', 422, "invalid-field"),
    (b"[]", 422, "invalid-field"),
    (b"null", 422, "invalid-field"),
    (b"x" * 70_000, 413, "too-large"),
    (b"[" * 60_000, 400, "malformed"),
    (b'{"a":' * 10_000 + b"1" + b"}" * 10_000, 400, "malformed"),
    (b'{"record": "\xff\xfe"}', 400, "malformed"),
])
async def test_malformed_bodies(directory: Directory, make_node: Any, body: bytes, status: int,
                                slug: str) -> None:
    alice = await make_node()
    url = directory.url + "/api/v3/nodes/register"
    headers = await signed_headers(alice, url, body)
    code, problem = await raw_post(url, body, headers)
    assert (code, problem["type"]) == (status, f"urn:openred:problem:{slug}")


async def test_wrong_types_and_unknown_fields(directory: Directory, make_node: Any) -> None:
    alice = await make_node()
    good = alice.record().to_wire()
    cases: list[Any] = [
        good | {"extra": 1},
        {**good, "record": {**good["record"], "extra": 1}},
        {**good, "record": {**good["record"], "version": "1"}},
        {**good, "record": {**good["record"], "issued_at": 1.5}},
        {**good, "record": {**good["record"], "modules": "messaging"}},
        {**good, "record": {**good["record"], "node_id": 7}},
        {"record": good["record"]},
    ]
    for body in cases:
        assert_problem(await alice.call("POST", "/api/v3/nodes/register", body), 422,
                       "invalid-field")
    assert_problem(await alice.call("POST", "/api/v3/tokens/request-connection",
                                    {"target": "NOT-AN-ID"}), 422, "invalid-field")
    assert_problem(await alice.call("POST", "/api/v3/nodes/heartbeat", {"x": 1}), 422)
    assert_problem(await alice.call("GET", "/api/v3/nodes/discover?limit=0"), 422)
    assert_problem(await alice.call("GET", "/api/v3/nodes/discover?limit=abc"), 422)
    assert_problem(await alice.call("GET", "/api/v3/directory/checkpoint?from=-1",
                                    signed=False), 422)
    assert_problem(await alice.call("GET", "/api/v3/directory/checkpoint?from=99999",
                                    signed=False), 422)
    for query in ("to=1", "from=2&to=1", "from=0&to=99999", "from=0&to=-1", "from=0&to=x"):
        assert_problem(await alice.call("GET", f"/api/v3/directory/checkpoint?{query}",
                                        signed=False), 422)


@pytest.mark.parametrize("api_url", [
    "http://169.254.169.254/latest", "http://[fe80::1]:8080", "http://[::ffff:169.254.169.254]",
    "http://0.0.0.0:80", "ftp://node.example", "http://u:p@node.example",
])
async def test_ssrf_urls_are_refused(directory: Directory, make_node: Any, api_url: str) -> None:
    alice = await make_node()
    reply = await alice.register(alice.record(api_url=api_url)) if api_url.startswith(
        "http") else None
    if reply is None:
        wire = alice.record().to_wire()
        wire["record"]["api_url"] = api_url
        reply = await alice.call("POST", "/api/v3/nodes/register", wire)
        assert reply.status == 422
        return
    assert_problem(reply, 422, "unsafe-url")


async def test_private_urls_need_the_setting(directory_factory: Any) -> None:
    async with directory_factory(allow_private_urls=False) as public:
        node = Node(public)
        for url in ("http://127.0.0.1:8080", "http://localhost:8080", "http://10.0.0.1",
                    "http://[::1]:80", "http://192.168.0.1", "http://127.0.0.1.nip.example."):
            reply = await node.register(node.record(api_url=url))
            assert reply.status == 422, (url, reply.body)


async def test_connection_refusals(directory: Directory, make_node: Any) -> None:
    alice, bob, carol, dave = [await make_node() for _ in range(4)]
    for n in (alice, bob, carol, dave):
        assert (await n.register()).status == 201
    path = "/api/v3/tokens/request-connection"
    size = await log_size(alice)
    stranger = Node(directory)
    assert_problem(await alice.call("POST", path, {"target": stranger.node_id}), 404,
                   "unknown-target")
    assert_problem(await alice.call("POST", path, {"target": alice.node_id}), 422, "same-node")
    assert_problem(await stranger.call("POST", path, {"target": alice.node_id}), 401)
    # Revoked target and revoked initiator.
    service = directory.service
    await service.revoke(bob.node_id, "test")
    size += 1
    assert_problem(await alice.call("POST", path, {"target": bob.node_id}), 403,
                   "target-revoked")
    assert_problem(await bob.call("POST", path, {"target": alice.node_id}), 403, "revoked")
    assert_problem(await bob.register(), 403, "revoked")
    # Expired target: time passes for the status task.
    real = service.clock
    service.clock = lambda: real() + 10 * 86400
    try:
        assert await service.sweep_statuses() >= 2
    finally:
        service.clock = real
    size = await log_size(alice)
    assert (await alice.call("POST", "/api/v3/nodes/heartbeat", {})).status == 200
    size += 1
    assert_problem(await alice.call("POST", path, {"target": carol.node_id}), 410,
                   "target-expired")
    assert await log_size(alice) == size
    # A deregistered target is unknown; deregistering twice is too.
    assert (await dave.call("POST", "/api/v3/nodes/heartbeat", {})).status == 200
    assert (await dave.call("DELETE", f"/api/v3/nodes/{dave.node_id}")).status == 200
    assert_problem(await alice.call("POST", path, {"target": dave.node_id}), 404,
                   "unknown-target")
    assert_problem(await dave.call("DELETE", f"/api/v3/nodes/{dave.node_id}"), 401)
    # Nobody deregisters another node.
    assert_problem(await alice.call("DELETE", f"/api/v3/nodes/{carol.node_id}"), 403,
                   "not-your-node")

