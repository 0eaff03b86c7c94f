"""The directory's fast routes (:mod:`openred.directory.fastroutes`) answer exactly as Quart does.

Two real directories (jail, store, Hypercorn on loopback) with the same frozen clock get the
same script of requests, each signed for its own directory by the same nodes: one serves them
through :class:`~openred.directory.fastroutes.DirectoryFastPath`, the other with it switched off,
so Quart's routes serve them. Every answer must be the same — status, headers (but ``Date``)
and bytes — for successes and for every refusal: bad, missing, replayed, stale or future
signatures, a wrong key, schema errors (wrong types, unknown and missing fields, malformed or
non-UTF-8 JSON, deep nesting), unknown, revoked and same-node targets, stale records, unsafe
URLs, rate limits (429 with Retry-After), failed pushes. The fast directory must have served
each of those requests itself, and requests it must not take (oversized, chunked,
``Expect: 100-continue``, HTTP/1.0, other methods, a hook installed) reach Quart. Request ids
and metrics see the fast path's requests with the same labels.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import nacl.public
import nacl.signing
import pytest
from quart import Quart

from openred.crypto.httpsig import HttpRequest, new_nonce, sign_request
from openred.crypto.identity import BoxKey, SignKey
from openred.crypto.records import NodeRecord, SignedNodeRecord
from openred.directory.app import create_app
from openred.directory.fastroutes import FAST_ROUTES, DirectoryFastPath
from openred.directory.keys import create_keystore
from openred.directory.routing import EXTENSION
from openred.directory.service import DirectoryService
from openred.modules.monitoring.service import metrics_of
from openred.settings import DirectorySettings
from tests.directory.conftest import TEST_JAIL_ENV
from tests.servers import HOST, free_port, serve_in_loop

NOW = int(time.time())  # set again before each test: the jail keeps its own clock
REQUEST_ID = "fast-route-test"
ODD_BODIES: list[bytes] = [
    b"", b"null", b"[]", b"{}", b'"text"', b"1e999", b"-0", b"true", b"{", b"{}x",
    b"[" * 5000 + b"]" * 5000, b'{"a": "\\ud800"}', "{\"é\": \"ü\"}".encode(),
    b"\xff\xfe\x00garbage", b'{"record": null, "signature": 1}',
    b'{"target": 7}', b'{"target": "' + b"a" * 32 + b'", "extra": 1}', b'{"x": 1}',
]


@dataclass
class Served:
    """One served directory: its URL, app, open service and fast path."""

    url: str
    app: Quart
    service: DirectoryService
    fast: DirectoryFastPath


@dataclass
class Pair:
    fast: Served
    slow: Served


def receiver() -> Quart:
    """A node's token receiver that takes every push (what it checks is not tested here)."""
    app = Quart("receiver")

    @app.post("/api/v3/tokens/receive")
    async def receive() -> dict[str, str]:
        return {"status": "ok"}

    return app


@contextlib.asynccontextmanager
async def served(tmp_path: Path, env: dict[str, str], *, fast: bool) -> AsyncIterator[Served]:
    port = free_port()
    data_dir = tmp_path / f"dir{port}"
    data_dir.mkdir()
    settings = DirectorySettings.load(data_dir, environ=env, host=HOST, port=port,
                                      jail_socket=Path(f"/tmp/openred-test-{port}/j.sock"))
    create_keystore(settings)
    app = create_app(settings)
    async with serve_in_loop(app, port) as url:
        service: DirectoryService = app.extensions[EXTENSION]
        service.clock = lambda: float(NOW)  # both directories decide at the same instant
        service.verifier.clock = lambda: float(NOW)
        # NOW precedes the start: the restart floor (not_before) would refuse it.
        service.verifier.not_before = None
        path: DirectoryFastPath = app.extensions[FAST_ROUTES]
        path.enabled = fast
        yield Served(url, app, service, path)


PairFactory = Callable[..., contextlib.AbstractAsyncContextManager[Pair]]


@pytest.fixture
async def make_pair(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                    ) -> AsyncIterator[PairFactory]:
    """Pairs of directories; :data:`NOW`, the instant both decide at, is now (when the test
    starts, not when this module was imported)."""
    global NOW
    NOW = int(time.time())
    for name, value in TEST_JAIL_ENV.items():
        monkeypatch.setenv(name, value)

    @contextlib.asynccontextmanager
    async def start(**env_overrides: str) -> AsyncIterator[Pair]:
        env = {"OPENRED_ALLOW_PRIVATE_URLS": "1", "OPENRED_RATE_PER_CLIENT": "100000",
               "OPENRED_RATE_PER_INITIATOR": "1000", "OPENRED_RATE_PER_TARGET": "1000",
               "OPENRED_PUSHES_PER_NETWORK": "1000",
               "OPENRED_PUSH_ATTEMPTS": "1", "OPENRED_PUSH_TIMEOUT": "2", **env_overrides}
        async with served(tmp_path, env, fast=True) as a, served(tmp_path, env, fast=False) as b:
            yield Pair(a, b)

    yield start


@dataclass
class Peer:
    """A node with fixed keys, the same towards both directories."""

    api_url: str
    sk: nacl.signing.SigningKey = field(default_factory=nacl.signing.SigningKey.generate)
    box: nacl.public.PrivateKey = field(default_factory=nacl.public.PrivateKey.generate)

    @property
    def node_id(self) -> str:
        return str(SignKey(bytes(self.sk.verify_key)).node_id)

    def record(self, version: int, **overrides: Any) -> SignedNodeRecord:
        args: dict[str, Any] = {
            "sign_key": SignKey(bytes(self.sk.verify_key)),
            "box_key": BoxKey(bytes(self.box.public_key)), "api_url": self.api_url,
            "modules": ["messaging"], "issued_at": NOW, "version": version}
        args.update(overrides)
        record = NodeRecord.build(**args)
        return SignedNodeRecord(record, self.sk.sign(record.canonical_bytes()).signature)

    def body(self, version: int, **overrides: Any) -> bytes:
        return json.dumps(self.record(version, **overrides).to_wire()).encode()


Request = tuple[str, str, dict[str, str], bytes]
"""method, URL, headers, body."""
Make = Callable[[Served], Awaitable[Request]]
Answer = tuple[int, list[tuple[str, str]], bytes]


async def signed(served: Served, peer: Peer, method: str, path: str, body: bytes = b"", *,
                 created: int | None = None, nonce: str | None = None,
                 key: nacl.signing.SigningKey | None = None,
                 headers: dict[str, str] | None = None) -> Request:
    """``peer``'s request to ``served``, signed as a node signs it (or by ``key``)."""
    signer = key or peer.sk

    async def sign(base: bytes) -> bytes:
        return bytes(signer.sign(base).signature)

    sent = {"Content-Type": "application/json", **(headers or {})}
    if method == "GET":
        sent.pop("Content-Type")
    url = served.url + path
    req = await sign_request(HttpRequest(method, url, sent, body), keyid=peer.node_id,
                             sign_base=sign, now=NOW if created is None else created,
                             nonce=nonce or new_nonce())
    return method, url, dict(req.headers), body


async def send(request: Request, *, chunked: bool = False, **options: Any) -> Answer:
    method, url, headers, body = request
    sent = {"X-Request-Id": REQUEST_ID, **headers}
    data: Any = body if body or method != "GET" else None
    if chunked:
        async def chunks() -> AsyncIterator[bytes]:
            yield body

        data = chunks()
    version = options.pop("version", aiohttp.HttpVersion11)
    async with aiohttp.ClientSession(version=version) as session, session.request(
        method, url, data=data, headers=sent, **options
    ) as resp:
        kept = [(k.lower(), v) for k, v in resp.headers.items() if k.lower() != "date"]
        return resp.status, sorted(kept), await resp.read()


def masked(answer: Answer) -> Answer:
    """The answer with a grant's random id replaced (all else must be equal)."""
    status, headers, body = answer
    return status, headers, masked_body(body)


def masked_body(body: bytes) -> bytes:
    """``body`` with the grant id it names (a JSON object's ``grant_id``) replaced."""
    try:
        parsed = json.loads(body)
    except ValueError:
        return body
    if isinstance(parsed, dict) and isinstance(parsed.get("grant_id"), str):
        body = body.replace(parsed["grant_id"].encode(), b"G" * len(parsed["grant_id"]))
    return body


async def same(pair: Pair, make: Make, *, fast: bool = True, times: int = 1,
               **options: Any) -> Answer:
    """Send ``make``'s request to both directories (``times`` each); the answers must agree.

    ``fast``: whether the fast directory must have served it itself (else Quart did);
    ``options`` go to :func:`send`.
    """
    fast_before, slow_before = pair.fast.fast.served, pair.slow.fast.served
    first, second = await make(pair.fast), await make(pair.slow)
    answer: Answer | None = None
    for _ in range(times):
        a, b = masked(await send(first, **options)), masked(await send(second, **options))
        assert a == b, (first[0], first[1], first[3][:80], a, b)
        answer = a
    assert pair.fast.fast.served == fast_before + (times if fast else 0)
    assert pair.slow.fast.served == slow_before
    assert answer is not None
    return answer


def revoke(pair: Pair, peer: Peer) -> Awaitable[Any]:
    async def both() -> None:
        for side in (pair.fast, pair.slow):
            await side.service.revoke(peer.node_id, "test")

    return both()


REGISTER = "/api/v3/nodes/register"
HEARTBEAT = "/api/v3/nodes/heartbeat"
DISCOVER = "/api/v3/nodes/discover"
CONNECT = "/api/v3/tokens/request-connection"


def status_of(answer: Answer) -> int:
    return answer[0]


async def test_registration_answers_and_refusals_match_quart(
    make_pair: PairFactory, tmp_path: Path,
) -> None:
    url = f"http://{HOST}:{free_port()}"
    alice, bob, mallory = Peer(url), Peer(url), Peer(url)
    async with make_pair() as pair:
        def reg(peer: Peer, body: bytes, **kw: Any) -> Make:
            return lambda s: signed(s, peer, "POST", REGISTER, body, **kw)

        assert status_of(await same(pair, reg(alice, alice.body(1)))) == 201
        assert status_of(await same(pair, reg(alice, alice.body(1)))) == 200  # same record
        assert status_of(await same(pair, reg(alice, alice.body(3)))) == 200  # an update
        assert status_of(await same(pair, reg(mallory, mallory.body(1)))) == 201
        forged = alice.record(4).record
        other_sig = SignedNodeRecord(forged, mallory.sk.sign(forged.canonical_bytes()).signature)
        wrong_id = mallory.record(2).to_wire()
        wrong_id["record"]["node_id"] = alice.node_id
        cases: list[tuple[Make, int]] = [
            (reg(alice, alice.body(2)), 409),  # an older version: stale record
            (reg(mallory, alice.body(5)), 403),  # mallory signs alice's record
            (reg(bob, alice.body(5)), 401),  # a stranger's key for alice's record
            (reg(alice, json.dumps(other_sig.to_wire()).encode()), 422),  # record signed by another
            (reg(mallory, json.dumps(wrong_id).encode()), 422),  # id that is not the key's
            (reg(bob, bob.body(1, api_url="http://169.254.169.254")), 422),  # unsafe URL
            (reg(bob, bob.body(1), created=NOW - 1000), 401),  # stale created
            (reg(bob, bob.body(1), created=NOW + 1000), 401),  # created in the future
            (reg(bob, bob.body(1), key=mallory.sk), 401),  # wrong key
            (lambda s: _unsigned(s, "POST", REGISTER, bob.body(1)), 401),
            (lambda s: _unsigned(s, "POST", REGISTER, b"[]"), 422),  # the body comes first
            (lambda s: _tampered(s, bob, REGISTER, bob.body(1), bob.body(1, modules=[])), 401),
        ]
        for make, status in cases:
            assert status_of(await same(pair, make)) == status
        # Wrong types, unknown and missing fields, malformed JSON: refused before signatures.
        wire = bob.record(1).to_wire()
        bad_wires = [
            {**wire, "extra": 1},
            {"record": wire["record"]},
            {**wire, "record": {**wire["record"], "version": "1"}},
            {**wire, "record": {**wire["record"], "issued_at": 1.5}},
            {**wire, "record": {**wire["record"], "modules": "messaging"}},
            {**wire, "record": {**wire["record"], "unknown": True}},
        ]
        for bad in bad_wires:
            assert status_of(await same(pair, reg(bob, json.dumps(bad).encode()))) == 422
        for raw in ODD_BODIES:
            assert 400 <= status_of(await same(pair, reg(bob, raw))) < 500
        # A replayed request (same nonce): accepted once, then the same 401 on both.
        nonce = new_nonce()
        answers = [await same(pair, reg(bob, bob.body(1), nonce=nonce)) for _ in range(2)]
        assert [status_of(a) for a in answers] == [201, 401]
        # A revoked node cannot come back.
        await revoke(pair, bob)
        assert status_of(await same(pair, reg(bob, bob.body(2)))) == 403
        # Too large: Quart answers 413 on both.
        big = b'{"x": "' + b"a" * 70_000 + b'"}'
        assert status_of(await same(pair, reg(alice, big), fast=False)) == 413
        await _metrics_agree(pair)


def _unsigned(served: Served, method: str, path: str, body: bytes) -> Awaitable[Request]:
    async def make() -> Request:
        return method, served.url + path, {"Content-Type": "application/json"}, body

    return make()


async def _tampered(served: Served, peer: Peer, path: str, body: bytes,
                    sent: bytes) -> Request:
    """Signed over ``body`` but sending ``sent`` (the Content-Digest no longer matches)."""
    method, url, headers, _ = await signed(served, peer, "POST", path, body)
    return method, url, headers, sent


async def test_discovery_and_heartbeat_answers_and_refusals_match_quart(
    make_pair: PairFactory,
) -> None:
    url = f"http://{HOST}:{free_port()}"
    alice, bob, carol, stranger = Peer(url), Peer(url), Peer(url), Peer(url)
    async with make_pair() as pair:
        for peer in (alice, bob, carol):
            assert status_of(await same(
                pair, lambda s, p=peer: signed(s, p, "POST", REGISTER, p.body(1)))) == 201

        def get(peer: Peer, query: str, **kw: Any) -> Make:
            return lambda s: signed(s, peer, "GET", f"{DISCOVER}{query}", **kw)

        one = await same(pair, get(alice, f"?node_id={bob.node_id}"))
        assert status_of(one) == 200 and json.loads(one[2])["items"][0]["record"][
            "node_id"] == bob.node_id
        cases: list[tuple[Make, int]] = [
            (get(alice, ""), 200),
            (get(alice, "?limit=1"), 200),
            (get(alice, f"?status=active&limit=2&cursor={alice.node_id}"), 200),
            (get(alice, f"?node_id={stranger.node_id}"), 404),
            (get(alice, "?node_id=nope"), 422),
            (get(alice, "?limit=0"), 422),
            (get(alice, "?limit=abc"), 422),
            (get(alice, "?status=gone"), 422),
            (get(alice, "?other=1"), 422),
            (get(alice, f"?node_id={bob.node_id}&node_id={carol.node_id}"), 422),
            (get(alice, f"?node_id%5B%5D={bob.node_id}"), 422),
            (get(alice, f"?node_id={bob.node_id}&"), 200),
            (get(alice, f"?node_id=%25{bob.node_id}"), 422),
            (get(alice, "?node_id=%ff%fe"), 422),
            (get(stranger, f"?node_id={bob.node_id}"), 401),  # unknown asker
            (get(alice, f"?node_id={bob.node_id}", created=NOW - 1000), 401),
            (get(alice, f"?node_id={bob.node_id}", key=bob.sk), 401),
            (lambda s: _unsigned(s, "GET", f"{DISCOVER}?node_id={bob.node_id}", b""), 401),
            (lambda s: _unsigned(s, "GET", f"{DISCOVER}?limit=0", b""), 422),  # query first
            (lambda s: signed(s, alice, "GET", f"{DISCOVER}?node_id={bob.node_id}",
                              b'{"a": 1}'), 200),  # a GET with a (signed) body
        ]
        for make, status in cases:
            assert status_of(await same(pair, make)) == status
        # Replayed discovery.
        nonce = new_nonce()
        answers = [await same(pair, get(alice, f"?node_id={bob.node_id}", nonce=nonce))
                   for _ in range(2)]
        assert [status_of(a) for a in answers] == [200, 401]
        # Heartbeats: answer, schema errors, strangers, bad signatures.

        def beat(peer: Peer, body: bytes = b"{}", **kw: Any) -> Make:
            return lambda s: signed(s, peer, "POST", HEARTBEAT, body, **kw)

        heartbeat_cases: list[tuple[Make, int]] = [
            (beat(alice), 200), (beat(stranger), 401), (beat(alice, key=bob.sk), 401),
            (beat(alice, created=NOW + 1000), 401),
            (lambda s: _unsigned(s, "POST", HEARTBEAT, b"{}"), 401),
            (lambda s: _unsigned(s, "POST", HEARTBEAT, b"{"), 400),  # the body comes first
            (lambda s: _unsigned(s, "POST", HEARTBEAT, b'{"x": 1}'), 422),
        ]
        for make, status in heartbeat_cases:
            assert status_of(await same(pair, make)) == status
        for raw in ODD_BODIES:
            answer = await same(pair, beat(alice, raw))
            assert 200 <= status_of(answer) < 500
        # Revoked: the asker is refused discovery and heartbeats (403), the target is shown.
        await revoke(pair, carol)
        assert status_of(await same(pair, get(carol, f"?node_id={bob.node_id}"))) == 403
        assert status_of(await same(pair, beat(carol))) == 403
        assert status_of(await same(pair, get(alice, f"?node_id={carol.node_id}"))) == 200
        await _metrics_agree(pair)


async def test_request_connection_answers_and_refusals_match_quart(
    make_pair: PairFactory,
) -> None:
    port = free_port()
    up = f"http://{HOST}:{port}"
    down = f"http://{HOST}:{free_port()}"
    alice, bob, carol, gone, stranger = Peer(up), Peer(up), Peer(up), Peer(down), Peer(up)
    async with serve_in_loop(receiver(), port), make_pair() as pair:
        for peer in (alice, bob, carol, gone):
            assert status_of(await same(
                pair, lambda s, p=peer: signed(s, p, "POST", REGISTER, p.body(1)))) == 201

        def connect(peer: Peer, target: str, **kw: Any) -> Make:
            body = json.dumps({"target": target}).encode()
            return lambda s: signed(s, peer, "POST", CONNECT, body, **kw)

        granted = await same(pair, connect(alice, bob.node_id))
        assert status_of(granted) == 201
        assert set(json.loads(granted[2])) == {"grant_id", "expires_at", "suite", "delivered"}
        await revoke(pair, carol)
        cases: list[tuple[Make, int]] = [
            (connect(alice, alice.node_id), 422),  # same node
            (connect(alice, stranger.node_id), 404),
            (connect(alice, carol.node_id), 403),  # revoked target
            (connect(carol, alice.node_id), 403),  # revoked initiator
            (connect(stranger, alice.node_id), 401),
            (connect(alice, bob.node_id, key=bob.sk), 401),
            (connect(alice, gone.node_id), 502),  # one node down: the push failed
        ]
        for make, status in cases:
            assert status_of(await same(pair, make)) == status
        for raw in ODD_BODIES:
            answer = await same(pair, lambda s, r=raw: signed(s, alice, "POST", CONNECT, r))
            assert 400 <= status_of(answer) < 500
        await _metrics_agree(pair)


async def test_rate_limits_match_quart(make_pair: PairFactory) -> None:
    url = f"http://{HOST}:{free_port()}"
    peers = [Peer(url) for _ in range(4)]
    async with make_pair(OPENRED_RATE_PER_CLIENT="3", OPENRED_RATE_PER_INITIATOR="1") as pair:
        statuses = []
        for peer in peers:  # per client address: the fourth registration is refused
            answer = await same(pair, lambda s, p=peer: signed(s, p, "POST", REGISTER,
                                                                p.body(1)))
            statuses.append(status_of(answer))
        assert statuses == [201, 201, 201, 429]
        assert ("retry-after", "61") in answer[1]
        alice, bob = peers[0], peers[1]
        found = [status_of(await same(pair, lambda s: signed(
            s, alice, "GET", f"{DISCOVER}?node_id={bob.node_id}"))) for _ in range(4)]
        assert found == [200, 200, 200, 429]
        beats = [status_of(await same(pair, lambda s: signed(s, bob, "POST", HEARTBEAT, b"{}")))
                 for _ in range(4)]
        assert beats == [200, 200, 200, 429]


async def test_requests_it_must_not_take_reach_quart(make_pair: PairFactory) -> None:
    url = f"http://{HOST}:{free_port()}"
    alice, bob = Peer(url), Peer(url)
    async with make_pair() as pair:
        for peer in (alice, bob):
            assert status_of(await same(
                pair, lambda s, p=peer: signed(s, p, "POST", REGISTER, p.body(1)))) == 201
        query = f"?node_id={bob.node_id}"

        def beat(headers: dict[str, str] | None = None, path: str = HEARTBEAT) -> Make:
            return lambda s: signed(s, alice, "POST", path, b"{}", headers=headers)

        not_taken: list[tuple[Make, dict[str, Any], int]] = [
            (lambda s: signed(s, alice, "HEAD", f"{DISCOVER}{query}"), {}, 200),
            (lambda s: signed(s, alice, "PUT", HEARTBEAT, b"{}"), {}, 405),
            (beat({"Content-Type": "text/plain"}), {}, 422),
            (beat({"Content-Type": "application/json; charset=utf-8"}), {}, 200),
            (beat(path=HEARTBEAT + "/"), {}, 404),
            (beat(), {"chunked": True}, 200),
            (beat(), {"expect100": True}, 200),
            (beat(), {"version": aiohttp.HttpVersion10}, 200),
            (lambda s: signed(s, alice, "GET", f"{DISCOVER}{query}"),
             {"version": aiohttp.HttpVersion10}, 200),
        ]
        for make, options, status in not_taken:
            answer = await same(pair, make, fast=False, **options)
            assert status_of(answer) == status, (options, answer)
        # With a request hook on the app (as a module's middleware would be), Quart serves
        # every request and the hook sees it; the fast path takes them again once it is gone.
        seen: list[str] = []

        async def hook() -> None:
            from quart import request

            seen.append(request.path)

        app = pair.fast.app
        app.before_request_funcs[None].append(hook)
        try:
            assert status_of(await same(pair, beat(), fast=False)) == 200
            answer = await same(pair, lambda s: signed(s, alice, "GET", f"{DISCOVER}{query}"),
                                fast=False)
            assert status_of(answer) == 200
        finally:
            app.before_request_funcs[None].remove(hook)
        assert seen == [HEARTBEAT, DISCOVER]
        assert status_of(await same(pair, beat())) == 200
        # Host-based matching or refusal is Quart's too (these routes never read the host).
        for side in (pair.fast, pair.slow):
            side.app.config["TRUSTED_HOSTS"] = ["example.org"]
        try:
            answer = await same(pair, beat(), fast=False)
        finally:
            for side in (pair.fast, pair.slow):
                side.app.config["TRUSTED_HOSTS"] = None
        assert status_of(answer) == 200
        await _metrics_agree(pair)


async def _metrics_agree(pair: Pair) -> None:
    """Both directories counted the same requests under the same labels."""
    def samples(side: Served) -> dict[tuple[str, ...], float]:
        metrics = metrics_of(side.app)
        assert metrics is not None
        found = {}
        for metric in metrics.requests.collect():
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    labels = sample.labels
                    found[(labels["method"], labels["route"], labels["status"])] = sample.value
        return found

    fast, slow = samples(pair.fast), samples(pair.slow)
    assert fast == slow and fast
    assert {REGISTER} <= {route for _, route, _ in fast}
