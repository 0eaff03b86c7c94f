"""The shared web pieces on a real Hypercorn server: problems, inbound signatures, the client."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import nacl.signing
import pytest
from pydantic import BaseModel, ConfigDict
from quart import Quart, request
from quart_schema import QuartSchema, validate_request

from openred.crypto.httpsig import NonceCache
from openred.crypto.identity import SignKey
from openred.errors import PeerUnreachable, RequestRefused, StoreError, UnsafeUrl
from openred.web.client import HttpClient, Signer
from openred.web.problems import PROBLEM_JSON, install
from openred.web.signatures import InboundVerifier
from tests.servers import free_port, serve_in_loop


class Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)
    n: int


@dataclass
class Site:
    url: str
    key: nacl.signing.SigningKey
    calls: list[str]


def build_app(public_url: str, key: SignKey, calls: list[str]) -> Quart:
    app = Quart(__name__)
    app.config["MAX_CONTENT_LENGTH"] = 1024
    QuartSchema(app)
    install(app)
    verifier = InboundVerifier(public_url)
    small = InboundVerifier(public_url, nonce_cache=NonceCache(max_entries=100,
                                                               max_per_signer=1))

    async def resolve(keyid: str) -> SignKey | None:
        return key if keyid == str(key.node_id) else None

    @app.post("/echo")
    @validate_request(Body)
    async def echo(data: Body) -> dict[str, int]:
        return {"n": data.n}

    @app.post("/signed")
    async def signed() -> dict[str, str]:
        keyid, _ = await verifier.verify(request, resolve)
        return {"keyid": keyid}

    @app.post("/signed-small")
    async def signed_small() -> dict[str, str]:
        keyid, _ = await small.verify(request, resolve)
        return {"keyid": keyid}

    @app.get("/refuse")
    async def refuse() -> None:
        raise RequestRefused(429, "rate-limited", "slow down", retry_after=7)

    @app.post("/named")
    async def named() -> None:
        # A refusal naming what the client sent, which may hold a lone surrogate ("\ud800").
        body = await request.get_json(force=True)
        raise RequestRefused(404, "unknown-name", f"no thing named {body['name']}")

    @app.get("/store")
    async def store() -> None:
        raise StoreError("disk gone")

    @app.get("/bug")
    async def bug() -> None:
        raise ZeroDivisionError("secret internal detail")

    @app.get("/slow")
    async def slow() -> dict[str, int]:
        await asyncio.sleep(30)  # cancelled when the client leaves
        return {"n": 0}

    @app.route("/flaky", methods=["GET", "POST"])
    async def flaky() -> tuple[dict[str, int], int]:
        calls.append("flaky")
        return ({"n": len(calls)}, 503) if len(calls) < 3 else ({"n": len(calls)}, 200)

    return app


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    sk = nacl.signing.SigningKey.generate()
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    calls: list[str] = []
    async with serve_in_loop(build_app(url, SignKey(bytes(sk.verify_key)), calls), port):
        yield Site(url, sk, calls)


def signer_for(sk: nacl.signing.SigningKey) -> Signer:
    async def sign_base(base: bytes) -> bytes:
        return bytes(sk.sign(base).signature)

    return Signer(str(SignKey(bytes(sk.verify_key)).node_id), sign_base)


Answer = tuple[int, str, dict[str, object], dict[str, str]]


async def raw(method: str, url: str, **kw: object) -> Answer:
    async with aiohttp.ClientSession() as s, s.request(method, url, **kw) as r:  # type: ignore[arg-type]
        return r.status, r.content_type, await r.json(content_type=None), dict(r.headers)


@pytest.mark.parametrize("method,path,kw,status,slug", [
    ("POST", "/echo", {"data": b"{not json", "headers": {"Content-Type": "application/json"}},
     400, "malformed"),
    ("POST", "/echo", {"data": b'{"n": "\x91"}', "headers": {"Content-Type": "application/json"}},
     400, "malformed"),
    ("POST", "/echo", {"json": {"n": "1"}}, 422, "invalid-field"),
    ("POST", "/echo", {"json": {"n": 1, "extra": 2}}, 422, "invalid-field"),
    ("POST", "/echo", {"json": [1]}, 422, "invalid-field"),
    ("POST", "/echo", {"data": b"x" * 5000, "headers": {"Content-Type": "application/json"}},
     413, "too-large"),
    ("GET", "/nowhere", {}, 404, "not-found"),
    ("GET", "/echo", {}, 405, "method-not-allowed"),
    ("GET", "/refuse", {}, 429, "rate-limited"),
    ("POST", "/named", {"data": b'{"name": "\\ud800"}'}, 404, "unknown-name"),
    ("GET", "/store", {}, 503, "store-unavailable"),
    ("POST", "/signed", {"data": b"{}"}, 401, "bad-signature"),
])
async def test_failures_are_problem_details(
    site: Site, method: str, path: str, kw: dict[str, object], status: int, slug: str
) -> None:
    code, ctype, body, headers = await raw(method, site.url + path, **kw)
    assert (code, ctype) == (status, PROBLEM_JSON)
    assert body["type"] == f"urn:openred:problem:{slug}" and body["status"] == status
    assert isinstance(body["detail"], str) and "Traceback" not in body["detail"]
    assert "disk gone" not in body["detail"]  # a store's own words stay in the log
    if status == 429:
        assert headers["Retry-After"] == "7"


async def test_a_bug_is_a_500_that_reveals_nothing(site: Site) -> None:
    code, ctype, body, _ = await raw("GET", site.url + "/bug")
    assert (code, ctype) == (500, PROBLEM_JSON)
    assert "secret" not in str(body)


async def test_signed_requests_verify_and_replays_are_refused(site: Site) -> None:
    async with HttpClient(signer=signer_for(site.key), allow_private=True) as client:
        reply = await client.request("POST", site.url + "/signed", json_body={"a": 1},
                                     signed=True)
        assert reply.status == 200
        assert reply.json()["keyid"] == str(SignKey(bytes(site.key.verify_key)).node_id)
        # An unknown key.
        async with HttpClient(signer=signer_for(nacl.signing.SigningKey.generate()),
                              allow_private=True) as stranger:
            reply = await stranger.request("POST", site.url + "/signed", json_body={},
                                           signed=True)
            assert reply.status == 401 and "unknown key" in reply.json()["detail"]
    # The same signed bytes twice: the nonce is remembered.
    captured: dict[str, str] = {}

    async def capture(base: bytes) -> bytes:
        return bytes(site.key.sign(base).signature)

    import time

    from openred.crypto.httpsig import HttpRequest, new_nonce, sign_request

    req = await sign_request(HttpRequest("POST", site.url + "/signed", {}, b"{}"),
                             keyid=str(SignKey(bytes(site.key.verify_key)).node_id),
                             sign_base=capture, now=int(time.time()), nonce=new_nonce())
    captured.update(req.headers)
    first = await raw("POST", site.url + "/signed", data=b"{}", headers=captured)
    again = await raw("POST", site.url + "/signed", data=b"{}", headers=captured)
    assert first[0] == 200
    assert again[0] == 401 and "replayed" in str(again[2]["detail"])
    # Signed for another service's URL: refused here.
    other = await sign_request(HttpRequest("POST", "http://elsewhere.example/signed", {}, b"{}"),
                               keyid=str(SignKey(bytes(site.key.verify_key)).node_id),
                               sign_base=capture, now=int(time.time()), nonce=new_nonce())
    moved = await raw("POST", site.url + "/signed", data=b"{}", headers=dict(other.headers))
    assert moved[0] == 401
    # A stale created.
    stale = await sign_request(HttpRequest("POST", site.url + "/signed", {}, b"{}"),
                               keyid=str(SignKey(bytes(site.key.verify_key)).node_id),
                               sign_base=capture, now=int(time.time()) - 600, nonce=new_nonce())
    old = await raw("POST", site.url + "/signed", data=b"{}", headers=dict(stale.headers))
    assert old[0] == 401 and "older than the window" in str(old[2]["detail"])


async def test_the_client_retries_503_then_succeeds(site: Site) -> None:
    async with HttpClient(allow_private=True, attempts=3, backoff=0.01) as client:
        reply = await client.request("GET", site.url + "/flaky")
    assert reply.status == 200 and len(site.calls) == 3


async def test_a_budget_bounds_all_attempts_and_backoff_together(site: Site) -> None:
    """``budget``: the whole request's time. A peer that never answers costs it, not three
    tries of the client's total time each; a retried answer is returned as it stands when no
    time is left for the next try."""
    async with HttpClient(allow_private=True, attempts=3, total_timeout=10,
                          backoff=0.01) as client:
        started = time.monotonic()
        with pytest.raises(PeerUnreachable, match="after 1 attempts"):
            await client.request("GET", site.url + "/slow", budget=0.5)
        assert time.monotonic() - started < 1.5
    async with HttpClient(allow_private=True, attempts=3, backoff=5) as client:
        started = time.monotonic()
        reply = await client.request("GET", site.url + "/flaky", budget=1)
        assert reply.status == 503 and len(site.calls) == 1
        assert time.monotonic() - started < 1


async def test_the_client_reports_an_unreachable_peer() -> None:
    port = free_port()
    async with HttpClient(allow_private=True, attempts=2, backoff=0.01) as client:
        with pytest.raises(PeerUnreachable, match="after 2 attempts"):
            await client.request("GET", f"http://127.0.0.1:{port}/x")


async def test_the_client_refuses_unsafe_addresses() -> None:
    async with HttpClient(allow_private=False) as client:
        for url in ("http://127.0.0.1:1/x", "http://169.254.169.254/latest",
                    "http://[fe80::1]/x", "http://localhost:1/x"):
            with pytest.raises(UnsafeUrl):
                await asyncio.wait_for(client.request("GET", url), 5)



async def test_a_full_nonce_quota_is_a_503_with_retry_after(site: Site) -> None:
    async with HttpClient(signer=signer_for(site.key), allow_private=True, attempts=1) as c:
        first = await c.request("POST", site.url + "/signed-small", json_body={}, signed=True)
        second = await c.request("POST", site.url + "/signed-small", json_body={}, signed=True)
    assert first.status == 200
    assert second.status == 503 and second.headers["Retry-After"] == "5"
    assert second.json()["type"] == "urn:openred:problem:busy"


def test_a_planted_nonces_file_cannot_lock_a_signer_out_for_good(tmp_path: Path) -> None:
    """``nonces.json`` is a file of the service's user, read back at start. Written by another
    process of that user with entries of one node that live "forever", it filled that node's
    nonce quota: every request it signed was 503 ``busy``, and a clean stop saved the entries
    again. A restored entry now lives at most as long as a signature seen before the start
    can still pass (two windows), and a file with more entries of a signer than its quota is
    not trusted (signatures older than the start are refused, as without a file)."""
    import json

    victim, far = "v" * 32, 10**12
    entries = [[victim, f"nonce-{i:012d}", far] for i in range(5000)]
    (tmp_path / "nonces.json").write_text(json.dumps({"v": 1, "window": 60,
                                                      "entries": entries}))
    now = [1000.0]
    verifier = InboundVerifier("http://x", window_seconds=60, clock=lambda: now[0])
    assert not verifier.restore(tmp_path / "nonces.json")
    assert verifier.nonce_cache.count(victim) == 0 and verifier.not_before == 1000
    (tmp_path / "nonces.json").write_text(json.dumps({"v": 1, "window": 60,
                                                      "entries": entries[:10]}))
    again = InboundVerifier("http://x", window_seconds=60, clock=lambda: now[0])
    assert again.restore(tmp_path / "nonces.json")
    cache = again.nonce_cache
    assert cache.count(victim) == 10
    now[0] = 1000.0 + 2 * 60 + 1
    cache.remember(victim, "a-fresh-nonce-0001", created=int(now[0]), now=int(now[0]))
    assert cache.count(victim) == 1


def test_nonces_saved_under_a_shorter_window_are_not_trusted_under_a_longer_one(
    tmp_path: Path,
) -> None:
    """A saved nonce is kept until its signature leaves the window it was seen under. Restored
    by a process with a longer window (``OPENRED_SIGNATURE_WINDOW`` raised across a restart),
    it was forgotten while its signature still passed the new window: a replay. Such a file
    counts as none (older signatures are refused)."""
    now = [1000.0]
    old = InboundVerifier("http://x", window_seconds=60, clock=lambda: now[0])
    old.nonce_cache.remember("k", "n", created=1000, now=1000)
    old.save(tmp_path / "nonces.json")
    now[0] = 1001.0
    longer = InboundVerifier("http://x", window_seconds=120, clock=lambda: now[0])
    assert not longer.restore(tmp_path / "nonces.json")
    assert longer.not_before == 1001
    same = InboundVerifier("http://x", window_seconds=60, clock=lambda: now[0])
    same.nonce_cache.remember("k", "m", created=1000, now=1000)
    same.save(tmp_path / "nonces.json")
    again = InboundVerifier("http://x", window_seconds=60, clock=lambda: now[0])
    assert again.restore(tmp_path / "nonces.json") and again.not_before is None
    assert ("k", "m") in again.nonce_cache



async def test_a_target_that_is_not_a_path_cannot_carry_another_hosts_signature() -> None:
    """Any service's inbound verifier (a node's too): ``POST api/echo`` reaches Quart's
    ``/api/echo`` route, and glued to the public URL ``http://svc.test`` the target made
    ``http://svc.testapi/echo`` — a URL on another host, whose signature verified here. A
    signed request's target must be a path, or the public URL itself in absolute-form."""
    import time

    from openred.crypto.httpsig import HttpRequest, new_nonce, sign_request
    from tests.servers import HOST, split_answers

    sk = nacl.signing.SigningKey.generate()
    key = SignKey(bytes(sk.verify_key))
    verifier = InboundVerifier("http://svc.test")
    app = Quart("svc")
    install(app)

    async def resolve(keyid: str) -> SignKey | None:
        return key if keyid == str(key.node_id) else None

    @app.post("/api/echo")
    async def echo() -> dict[str, str]:
        keyid, _ = await verifier.verify(request, resolve)
        return {"keyid": keyid}

    async def sign(base: bytes) -> bytes:
        return bytes(sk.sign(base).signature)

    async def send(port: int, target: str, url: str) -> int:
        req = await sign_request(HttpRequest("POST", url, {}, b"{}"), keyid=str(key.node_id),
                                 sign_base=sign, now=int(time.time()), nonce=new_nonce())
        lines = [f"POST {target} HTTP/1.1", f"Host: {HOST}:{port}", "Connection: close",
                 "Content-Type: application/json", "Content-Length: 2",
                 *(f"{k}: {v}" for k, v in req.headers.items())]
        reader, writer = await asyncio.open_connection(HOST, port)
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode() + b"{}")
        data = await asyncio.wait_for(reader.read(), 10)
        writer.close()
        await writer.wait_closed()
        ((status, _, _),) = split_answers(data)
        return int(status.split()[1])

    port = free_port()
    async with serve_in_loop(app, port):
        assert await send(port, "api/echo", "http://svc.testapi/echo") == 401
        assert await send(port, "http://other.test/api/echo",
                          "http://other.test/api/echo") == 401
        assert await send(port, "/api/echo", "http://svc.test/api/echo") == 200
        assert await send(port, "http://svc.test/api/echo", "http://svc.test/api/echo") == 200
