"""The push path's fast pieces, proved equal to the slow ones: bodies built once, URL checks.

``push_bodies`` encodes the part both pushes share once; it must give exactly the bytes the
HTTP client's own JSON encoding gives for the merged object. ``HttpClient.request(body=...)``
must send what ``json_body=`` sends, signed the same way. The client remembers URLs that passed
its check, never ones that failed.
"""

from __future__ import annotations

import json
import random
import string
from typing import Any

import nacl.signing
import pytest
from quart import Quart, request

from openred.crypto.identity import SignKey
from openred.directory.service import push_bodies
from openred.errors import UnsafeUrl
from openred.web.client import HttpClient, Signer
from openred.web.signatures import InboundVerifier
from tests.servers import free_port, serve_in_loop


def client_encoding(value: Any) -> bytes:
    """What ``HttpClient.request(json_body=value)`` sends."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def random_value(rng: random.Random, depth: int = 0) -> Any:
    kind = rng.randrange(7 if depth < 3 else 4)
    if kind == 0:
        return rng.randrange(-2**60, 2**60)
    if kind == 1:
        return rng.choice([True, False, None, 0.5, -1e300])
    if kind in (2, 3):
        alphabet = string.printable + "é€😀\u2028\x00\"\\/"
        return "".join(rng.choice(alphabet) for _ in range(rng.randrange(12)))
    if kind == 4:
        return [random_value(rng, depth + 1) for _ in range(rng.randrange(4))]
    return {f"k{i}{rng.choice('aé😀')}": random_value(rng, depth + 1)
            for i in range(rng.randrange(4))}


def test_push_bodies_are_byte_for_byte_the_clients_encoding_of_the_merged_object() -> None:
    rng = random.Random(7)
    for _ in range(500):
        common = {f"c{i}": random_value(rng) for i in range(1 + rng.randrange(5))}
        own = [{f"o{j}{i}": random_value(rng) for i in range(1 + rng.randrange(3))}
               for j in range(2)]
        assert push_bodies(common, *own) == [client_encoding({**common, **o}) for o in own]


@pytest.mark.parametrize("common,own", [
    ({}, {"a": 1}),
    ({"a": 1}, {}),
    ({"a": 1}, {"a": 2}),
])
def test_push_bodies_refuse_what_would_not_be_one_object_with_each_key_once(
    common: dict[str, Any], own: dict[str, Any],
) -> None:
    with pytest.raises(ValueError):
        push_bodies(common, own)


async def test_a_prebuilt_body_is_sent_and_signed_exactly_like_json_body() -> None:
    sk = nacl.signing.SigningKey.generate()
    key = SignKey(bytes(sk.verify_key))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    verifier = InboundVerifier(url)
    seen: list[tuple[bytes, str | None, str]] = []
    app = Quart("echo")

    async def resolve(keyid: str) -> SignKey | None:
        return key if keyid == str(key.node_id) else None

    @app.post("/in")
    async def receive() -> dict[str, str]:
        keyid, _ = await verifier.verify(request, resolve)
        seen.append((await request.get_data(), request.headers.get("Content-Type"), keyid))
        return {"status": "ok"}

    async def sign_base(base: bytes) -> bytes:
        return bytes(sk.sign(base).signature)

    value = {"grant": {"v": 3, "x": "é😀"}, "n": [1, 2, None]}
    async with serve_in_loop(app, port), HttpClient(
            signer=Signer(str(key.node_id), sign_base), allow_private=True, attempts=1) as c:
        one = await c.request("POST", url + "/in", json_body=value, signed=True)
        two = await c.request("POST", url + "/in", body=client_encoding(value), signed=True)
        with pytest.raises(ValueError):
            await c.request("POST", url + "/in", json_body=value, body=b"{}")
    assert one.status == two.status == 200
    assert seen[0] == seen[1] == (client_encoding(value), "application/json", str(key.node_id))


async def test_the_client_remembers_only_urls_that_passed_its_check() -> None:
    async with HttpClient(allow_private=False) as client:
        for _ in range(2):  # refused every time: a failure is never remembered
            with pytest.raises(UnsafeUrl):
                client._check("http://127.0.0.1:1/x")
        assert not client._checked
    async with HttpClient(allow_private=True) as client:
        for i in range(5000):
            client._check(f"http://127.0.0.1:{1 + i}/x")
        assert 0 < len(client._checked) <= 4096
        with pytest.raises(UnsafeUrl):  # always refused, allow_private or not
            client._check("http://169.254.169.254/latest")


async def test_the_pooled_client_keeps_no_cookies() -> None:
    """A peer's Set-Cookie is never sent back (on a host name, where a jar would keep it)."""
    port = free_port()
    seen: list[str | None] = []
    app = Quart("cookies")

    @app.post("/in")
    async def receive() -> tuple[dict[str, str], int, dict[str, str]]:
        seen.append(request.headers.get("Cookie"))
        return {"status": "ok"}, 200, {"Set-Cookie": "session=peer; Path=/"}

    async with serve_in_loop(app, port), HttpClient(allow_private=True, attempts=1) as c:
        for _ in range(2):
            reply = await c.request("POST", f"http://localhost:{port}/in", json_body={})
            assert reply.status == 200
            assert "session=peer" in reply.headers.get("Set-Cookie", "")
    assert seen == [None, None]
