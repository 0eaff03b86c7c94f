"""The directory's HTTP surface attacked as a hostile client would (hattack, 2026-12-02).

The pair of real directories of :mod:`tests.directory.test_fast_routes` (one serving the hot
routes below Quart, one through Quart), with the public URL ``http://dir.test`` so that an
``@target-uri`` is a host name, not an address and port. Requests are written byte by byte and
signed here by hand (the signature base of RFC 9421 §2.5 in OpenRed's profile), so that the
attacks can sign any URL and any ``Content-Digest``.
"""

from __future__ import annotations

import base64
import hashlib
import json

from openred.crypto.httpsig import new_nonce
from tests.directory.test_fast_routes import (
    HEARTBEAT,
    REGISTER,
    PairFactory,
    Peer,
    Served,
    frozen_now,  # noqa: F401 - autouse fixture: the pair's clock is now, not the import's
    make_pair,  # noqa: F401 - fixture
)
from tests.directory.test_fast_routes_wire import answers_of, exchange, head, port_of
from tests.servers import HOST, free_port

PUBLIC = "http://dir.test"


def sha256(body: bytes) -> str:
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def sha512(body: bytes) -> str:
    return "sha-512=:" + base64.b64encode(hashlib.sha512(body).digest()).decode() + ":"


def signed_bytes(served: Served, peer: Peer, method: str, target: str, body: bytes, *,
                 url: str | None = None, digest: str | None = None,
                 nonce: str | None = None) -> bytes:
    """``peer``'s request for ``target`` on the wire, signed over ``url`` (default: the public
    URL then ``target``) and ``digest`` (default: the body's SHA-256)."""
    from tests.directory import test_fast_routes

    url = url or PUBLIC + target
    digest = digest or sha256(body)
    nonce = nonce or new_nonce()
    params = (f'("@method" "@target-uri" "content-digest");created={test_fast_routes.NOW}'
              f';keyid="{peer.node_id}";alg="ed25519";nonce="{nonce}"')
    base = (f'"@method": {method}\n"@target-uri": {url}\n"content-digest": {digest}\n'
            f'"@signature-params": {params}').encode()
    signature = base64.b64encode(peer.sk.sign(base).signature).decode()
    lines = [("Host", f"{HOST}:{port_of(served)}"), ("Content-Type", "application/json"),
             ("Content-Digest", digest), ("Signature-Input", f"openred={params}"),
             ("Signature", f"openred=:{signature}:"), ("Content-Length", str(len(body))),
             ("Connection", "close")]
    return head(method, target, lines) + body


async def status(served: Served, data: bytes) -> tuple[int, bytes]:
    (answer,) = answers_of(await exchange(served, data))
    return int(answer[0].split()[1]), answer[2]


async def test_a_signature_for_another_url_never_verifies_through_an_odd_request_target(
    make_pair: PairFactory,  # noqa: F811
) -> None:
    """``@target-uri`` is the public URL then the raw request target. A target that is not a
    path (``api/...``, ``x:/api/...``, absolute-form) still reaches the route through Quart
    (which takes the path of what it parses as a URL) and, glued to the public URL, made a URI
    of another host: a signature a node made for ``http://dir.testapi/v3/nodes/heartbeat``
    (a service on the host ``dir.testapi``) verified at ``http://dir.test``. Now any signed
    request whose target is not in origin-form is 401, on both paths."""
    alice = Peer(f"http://{HOST}:{free_port()}")
    body = b"{}"
    async with make_pair(OPENRED_PUBLIC_URL=PUBLIC) as pair:
        for side in (pair.fast, pair.slow):
            found = await status(side, signed_bytes(side, alice, "POST", REGISTER,
                                                    alice.body(1)))
            assert found[0] == 201, found
            odd = [
                ("api/v3/nodes/heartbeat", "http://dir.testapi/v3/nodes/heartbeat"),
                ("x:/api/v3/nodes/heartbeat", "http://dir.testx:/api/v3/nodes/heartbeat"),
                ("x.org://y/api/v3/nodes/heartbeat",
                 "http://dir.testx.org://y/api/v3/nodes/heartbeat"),
                ("http://other.example/api/v3/nodes/heartbeat",
                 "http://dir.testhttp://other.example/api/v3/nodes/heartbeat"),
                ("http://other.example/api/v3/nodes/heartbeat",
                 "http://other.example/api/v3/nodes/heartbeat"),
                ("http://dir.test.evil/api/v3/nodes/heartbeat",
                 "http://dir.test.evil/api/v3/nodes/heartbeat"),
            ]
            served = side.fast.served
            for target, url in odd:
                code, answer = await status(side, signed_bytes(side, alice, "POST", target, body,
                                                               url=url))
                assert code == 401, (target, url, code, answer)
                assert json.loads(answer)["type"] == "urn:openred:problem:bad-signature"
            assert side.fast.served == served  # none of them is the fast path's
            # The same request in origin-form, or in absolute-form naming the public URL
            # (RFC 9112 §3.2.2: then the target URI is that form), signed over that URI, is fine.
            found = await status(side, signed_bytes(side, alice, "POST", HEARTBEAT, body))
            assert found[0] == 200, found
            found = await status(side, signed_bytes(side, alice, "POST", PUBLIC + HEARTBEAT, body,
                                                    url=PUBLIC + HEARTBEAT))
            assert found[0] == 200, found
