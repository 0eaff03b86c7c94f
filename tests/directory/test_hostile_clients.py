"""Hostile clients against a real served directory: replays, address limits, metric labels."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import threading
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from quart import Quart

from openred.crypto.httpsig import NonceCache
from openred.directory.app import create_app
from openred.directory.fastroutes import FAST_ROUTES, DirectoryFastPath
from openred.directory.keys import create_keystore
from openred.directory.routing import EXTENSION
from openred.directory.service import DirectoryService
from openred.modules.monitoring.service import REACHABILITY_EXTENSION
from openred.settings import DirectorySettings
from openred.web import urls
from openred.web.middleware import MIDDLEWARE_EXTENSION
from openred.web.signatures import NONCES_FILE
from tests.directory.conftest import TEST_JAIL_ENV, Directory, Node
from tests.directory.test_bad_input import signed_headers
from tests.servers import HOST, free_port, serve_in_loop


@pytest.fixture
def restartable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DirectorySettings:
    """Settings of one directory (data directory, port) that a test may serve several times."""
    return settings_for(tmp_path, monkeypatch)


def settings_for(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                 **overrides: Any) -> DirectorySettings:
    for name, value in TEST_JAIL_ENV.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    data_dir = tmp_path / "directory"
    data_dir.mkdir()
    env = {"OPENRED_ALLOW_PRIVATE_URLS": "1", "OPENRED_RATE_PER_CLIENT": "100000"}
    settings = DirectorySettings.load(data_dir, environ=env, host=HOST, port=port,
                                      jail_socket=Path(f"/tmp/openred-test-{port}/j.sock"),
                                      **overrides)
    create_keystore(settings)
    return settings


@contextlib.asynccontextmanager
async def serving_app(settings: DirectorySettings) -> AsyncIterator[tuple[Directory, Quart]]:
    app = create_app(settings)
    async with serve_in_loop(app, settings.port) as url:
        service: DirectoryService = app.extensions[EXTENSION]
        yield Directory(url, settings, service.key, service), app


@contextlib.asynccontextmanager
async def serving(settings: DirectorySettings) -> AsyncIterator[Directory]:
    async with serving_app(settings) as (directory, _):
        yield directory


async def send(method: str, url: str, headers: dict[str, str], body: bytes) -> Any:
    async with aiohttp.ClientSession() as s, s.request(method, url, data=body or None,
                                                       headers=headers) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize("stop", ["clean", "crash"])
async def test_a_request_captured_before_a_restart_is_not_replayed_after_it(
        restartable: DirectorySettings, stop: str) -> None:
    """A signed DELETE seen on the wire knocked out a node that came back, once the directory
    had restarted (its nonce cache started empty). A clean stop saves the live nonces and the
    next start knows them again; after a crash (nothing saved) a signature made before the
    start cannot be known fresh and is refused. Either way 401, and the node stays."""
    async with serving(restartable) as directory:
        alice = Node(directory, api_url=directory.url)
        assert (await alice.register()).status == 201
        url = directory.url + f"/api/v3/nodes/{alice.node_id}"
        captured = await signed_headers(alice, url, b"", method="DELETE")
        assert (await send("DELETE", url, captured, b""))[0] == 200
        # Replayed at once: the nonce is remembered.
        status, problem = await send("DELETE", url, captured, b"")
        assert status == 401, problem
        # Alice comes back with a newer record.
        assert (await alice.register()).status == 201
    if stop == "crash":
        # What a killed directory leaves: no saved nonces. It restarts in a later second.
        (restartable.data_dir / NONCES_FILE).unlink()
        await asyncio.sleep(1.01 - time.time() % 1)
    # The directory restarts (same data, same port) within the signature window.
    async with serving(restartable) as directory:
        alice.directory = directory
        status, problem = await send("DELETE", url, captured, b"")
        assert status == 401, problem
        assert problem["type"] == "urn:openred:problem:bad-signature"
        assert ("replayed" if stop == "clean" else "before this service started") in (
            problem["detail"])
        found = await alice.call("GET", f"/api/v3/nodes/discover?node_id={alice.node_id}")
        assert found.status == 200 and found.json()["items"][0]["status"] == "active"
        # A request signed now still goes through.
        assert (await alice.call("POST", "/api/v3/nodes/heartbeat", {})).status == 200


async def asgi_post(directory: Directory, app: Any, path: str, headers: dict[str, str],
                    body: bytes, client: str) -> tuple[int, dict[str, Any]]:
    """One HTTP/1.1 request into the served app's ASGI callable, from address ``client``.

    (Loopback offers one IPv6 address; the app sees the peer only as the scope's ``client``.)
    """
    sent = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
    sent.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": path, "raw_path": path.encode(),
             "query_string": b"", "root_path": "", "headers": sent,
             "client": (client, 40000), "server": (HOST, directory.settings.port),
             "extensions": {}}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    answer: dict[str, Any] = {"body": b""}

    async def receive() -> dict[str, Any]:
        if messages:
            return messages.pop(0)
        await asyncio.Event().wait()  # no disconnect before the answer
        raise AssertionError

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            answer["status"] = message["status"]
        elif message["type"] == "http.response.body":
            answer["body"] += message.get("body", b"")

    await app(scope, receive, send)
    return answer["status"], json.loads(answer["body"])


@pytest.mark.parametrize("fast", [True, False])
async def test_one_ipv6_network_is_one_client_for_the_registration_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    """Registrations are limited per client address because new keys cost nothing; an IPv6
    client owns a whole /64 (2^64 addresses) and took a fresh one for every registration. The
    /64 is the client now; IPv4 addresses (also in their IPv4-mapped IPv6 spelling) are one
    each. Fast path and Quart alike."""
    settings = settings_for(tmp_path, monkeypatch, rate_per_client=3)
    async with serving_app(settings) as (directory, app):
        fast_routes: DirectoryFastPath = app.extensions[FAST_ROUTES]
        fast_routes.enabled = fast
        served = fast_routes.served
        url = directory.url + "/api/v3/nodes/register"

        async def register(client: str) -> int:
            node = Node(directory, api_url=directory.url)
            body = json.dumps(node.record().to_wire()).encode()
            headers = await signed_headers(node, url, body)
            status, _ = await asgi_post(directory, app, "/api/v3/nodes/register", headers,
                                        body, client)
            return status

        statuses = [await register(f"2001:db8:1:2::{i + 1:x}") for i in range(4)]
        assert statuses == [201, 201, 201, 429]
        # Another /64 of the same /48 is another client.
        assert await register("2001:db8:1:3::1") == 201
        # 198.51.100.7 and ::ffff:198.51.100.7 are one client; 198.51.100.8 another.
        assert [await register(a) for a in ("198.51.100.7", "::ffff:198.51.100.7",
                                            "198.51.100.7", "::ffff:198.51.100.7")] == [
            201, 201, 201, 429]
        assert await register("198.51.100.8") == 201
        assert fast_routes.served == served + (10 if fast else 0)


async def test_request_methods_a_client_invents_do_not_grow_the_metrics(
        restartable: DirectorySettings) -> None:
    """Every HTTP method token a client sent became a label of the request metrics: a series
    kept forever by the registry and shown by every scrape (unauthenticated memory growth,
    one long token at a time). Methods outside HTTP's own are counted as ``OTHER``."""
    async with serving_app(restartable) as (directory, app):
        metrics = app.extensions[MIDDLEWARE_EXTENSION].metrics
        assert metrics is not None
        async with aiohttp.ClientSession() as session:
            for i in range(20):
                method = f"X{i:03d}" + "M" * 200
                async with session.request(method, directory.url + "/api/v3/health") as r:
                    assert r.status == 405, await r.text()
            async with session.get(directory.url + "/api/v3/health") as r:
                assert r.status == 200
        text = (await metrics.exposition()).decode()
        assert "MMMM" not in text
        assert 'method="OTHER",route="<unmatched>",status="405"} 20.0' in text
        assert 'method="GET",route="/api/v3/health",status="200"} 1.0' in text


async def test_failed_grants_are_counted_by_kind_not_by_their_node_ids(
        restartable: DirectorySettings) -> None:
    """A failed delivery's reason names the node ids and the error text: as a metric label it
    made a new series for every pair of nodes an attacker's grants failed between (nodes that
    answer nothing cost nothing). The label is the kind of failure."""
    async with serving_app(restartable) as (directory, app):
        metrics = app.extensions[MIDDLEWARE_EXTENSION].metrics
        alice = Node(directory, api_url=f"http://{HOST}:{free_port()}")
        bob = Node(directory, api_url=f"http://{HOST}:{free_port()}")
        for node in (alice, bob):
            assert (await node.register()).status == 201
        reply = await alice.call("POST", "/api/v3/tokens/request-connection",
                                 {"target": bob.node_id})
        assert reply.status == 502, reply.body
        text = (await metrics.exposition()).decode()
        assert alice.node_id not in text and bob.node_id not in text
        assert 'openred_grants_failed_total{reason="push"} 1.0' in text


async def test_the_directory_remembers_a_bounded_number_of_node_targets(
        restartable: DirectorySettings) -> None:
    """Each node a grant was pushed to became a reachability target ("node host:port", a URL
    the node chose) and an ``openred_dependency_up`` series, kept forever. The directory keeps
    the most recent ``max_targets`` (1024; 2 here) and drops the series of the others."""
    async with serving_app(restartable) as (directory, app):
        metrics = app.extensions[MIDDLEWARE_EXTENSION].metrics
        reachability = app.extensions[REACHABILITY_EXTENSION]
        reachability.max_targets = 2
        nodes = [Node(directory, api_url=f"http://{HOST}:{free_port()}") for _ in range(3)]
        for node in nodes:
            assert (await node.register()).status == 201
        for target in nodes[1:]:
            reply = await nodes[0].call("POST", "/api/v3/tokens/request-connection",
                                        {"target": target.node_id})
            assert reply.status == 502, reply.body
        text = (await metrics.exposition()).decode()
        series = [line for line in text.splitlines()
                  if line.startswith("openred_dependency_up{")]
        assert len(series) == 2, series
        assert len(reachability) == 2
        # Named by a key only this process can map back to the node's address.
        assert nodes[0].api_url.removeprefix("http://") not in "".join(series)
        assert all(line.startswith('openred_dependency_up{dependency="node ') for line in series)


async def test_a_name_whose_dns_never_answers_does_not_hold_registrations_or_others(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A node registers an api_url under a DNS zone it controls and makes that zone silent.
    The directory resolved it with no time limit, in the event loop's default executor (a
    handful of threads here): the registration hung for as long as the resolver tried, and
    a few of them held every thread other work needs (``/health``'s database probe). Now a
    lookup has its own small pool and a time limit: 422 when the name does not resolve in
    time, 503 when too many lookups wait already, and the rest of the directory answers."""
    release = threading.Event()
    real = socket.getaddrinfo

    def getaddrinfo(host: Any, *args: Any, **kwargs: Any) -> Any:
        if str(host).endswith(".silent.example"):
            release.wait(20)  # a resolver that never hears back (until the test ends)
            raise socket.gaierror(socket.EAI_AGAIN, "temporary failure in name resolution")
        return real(host, *args, **kwargs)

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    monkeypatch.setattr(urls, "RESOLVE_TIMEOUT", 0.5)
    settings = settings_for(tmp_path, monkeypatch)
    try:
        async with serving(settings) as directory:
            async def register(host: str) -> tuple[int, str]:
                node = Node(directory, api_url=f"http://{host}:8080")
                reply = await asyncio.wait_for(node.register(), 10)
                return reply.status, reply.json()["type"]

            first = await register("n0.silent.example")
            assert first == (422, "urn:openred:problem:unsafe-url")
            # More silent names than lookups may wait: the others are refused at once, busy.
            answers = await asyncio.gather(*(register(f"n{i}.silent.example")
                                             for i in range(1, 24)))
            assert set(answers) <= {first, (503, "urn:openred:problem:busy")}
            assert (503, "urn:openred:problem:busy") in answers
            # What needs the default executor still answers.
            async with aiohttp.ClientSession() as session, session.get(
                    directory.url + "/api/v3/health",
                    timeout=aiohttp.ClientTimeout(total=5)) as r:
                assert r.status == 200, await r.text()
    finally:
        release.set()


@pytest.mark.parametrize("fast", [True, False])
async def test_a_node_over_its_limit_gets_429_not_a_full_nonce_quota(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    """Requests refused by the per-client limit still had their nonces remembered, so a node
    that kept sending filled its own nonce quota and then got 503 ``busy`` (retry soon)
    instead of 429 with Retry-After, and its refused requests took room in the shared cache.
    The limit is now checked before the nonce is remembered (and a hit counted after it, so a
    replayed request still costs its signer nothing)."""
    settings = settings_for(tmp_path, monkeypatch, rate_per_client=2)
    async with serving_app(settings) as (directory, app):
        app.extensions[FAST_ROUTES].enabled = fast
        cache = NonceCache(window_seconds=60, max_entries=100, max_per_signer=3)
        directory.service.verifier.nonce_cache = cache
        alice = Node(directory, api_url=directory.url)
        url = directory.url + "/api/v3/nodes/heartbeat"
        body = b"{}"
        assert (await alice.register()).status == 201  # a nonce (its limit is the address's)
        first = await signed_headers(alice, url, body)
        assert (await send("POST", url, first, body))[0] == 200  # a nonce, a hit
        # A replay of it is refused as a replay and costs nothing.
        assert (await send("POST", url, first, body))[0] == 401
        assert (await send("POST", url, await signed_headers(alice, url, body), body))[0] == 200
        assert cache.count(alice.node_id) == 3
        for _ in range(3):
            status, problem = await send("POST", url, await signed_headers(alice, url, body),
                                         body)
            assert (status, problem["type"]) == (429, "urn:openred:problem:rate-limited")
        assert cache.count(alice.node_id) == 3


@pytest.mark.parametrize("fast", [True, False])
async def test_a_burst_of_signed_requests_cannot_outrun_the_limit(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fast: bool) -> None:
    """Requests sent at once are each checked against the limit and counted with no await in
    between: the limit holds for a burst, and a replay inside it still costs nothing."""
    settings = settings_for(tmp_path, monkeypatch, rate_per_client=3)
    async with serving_app(settings) as (directory, app):
        app.extensions[FAST_ROUTES].enabled = fast
        alice = Node(directory, api_url=directory.url)
        assert (await alice.register()).status == 201  # counted for the address, not alice
        url = directory.url + "/api/v3/nodes/heartbeat"
        body = b"{}"
        first = await signed_headers(alice, url, body)
        assert (await send("POST", url, first, body))[0] == 200
        # Replays (at once) are refused as replays and cost nothing.
        replays = await asyncio.gather(*(send("POST", url, first, body) for _ in range(5)))
        assert [status for status, _ in replays] == [401] * 5
        burst = [await signed_headers(alice, url, body) for _ in range(20)]
        statuses = sorted(s for s, _ in await asyncio.gather(
            *(send("POST", url, headers, body) for headers in burst)))
        assert statuses == [200] * 2 + [429] * 18  # the limit's 3, one spent before
