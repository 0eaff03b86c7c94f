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
from collections.abc import Awaitable, Callable

from openred.crypto.httpsig import new_nonce
from tests.directory.test_fast_routes import (
    CONNECT,
    HEARTBEAT,
    REGISTER,
    PairFactory,
    Peer,
    Served,
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


async def registered(side: Served, peer: Peer) -> None:
    """``peer`` registers on ``side`` (201)."""
    found = await status(side, signed_bytes(side, peer, "POST", REGISTER, peer.body(1)))
    assert found[0] == 201, found


async def same_on_both_paths(pairs: PairFactory, peer: Peer,
                             ask: Callable[[Served], Awaitable[object]]) -> None:
    """A pair with the public URL :data:`PUBLIC`: on each side ``peer`` registers, then
    ``ask`` (which checks each answer and returns them); both sides answered the same."""
    async with pairs(OPENRED_PUBLIC_URL=PUBLIC) as pair:
        answers = []
        for side in (pair.fast, pair.slow):
            await registered(side, peer)
            answers.append(await ask(side))
        assert answers[0] == answers[1]


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
            await registered(side, alice)
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


async def test_content_digests_a_hostile_client_signs(
    make_pair: PairFactory,  # noqa: F811
) -> None:
    """RFC 9530 digests in odd forms, each signed as it stands: every digest the field holds
    is checked against the body (one wrong of two is 401), SHA-512 alone is as good as
    SHA-256, an unknown algorithm alone or a digest of another body is 401 — on both paths,
    with the same answer, never 500."""
    alice = Peer(f"http://{HOST}:{free_port()}")
    body = b"{}"
    wrong = sha256(b"{ }")
    cases = [
        (sha512(body), 200),
        (f"{sha256(body)}, {sha512(body)}", 200),
        (f"{sha512(body)}, {wrong}", 401),
        (f"{wrong.replace('sha-256', 'sha-512')}, {sha256(body)}", 401),
        (f"{sha256(body)}, {sha256(body)}", 401),  # one algorithm twice
        (wrong, 401),
        ("md5=:" + base64.b64encode(hashlib.md5(body).digest()).decode() + ":", 401),
        (f"{sha256(body)}, md5=:AAAA:", 401),
        ("sha-256=:AAAA:", 401),
        ("sha-256=:" + "A" * 44 + ":;x=1", 401),
        ("sha-256=?1", 401),
    ]

    async def ask(side: Served) -> list[tuple[int, bytes]]:
        answers = []
        for digest, wanted in cases:
            code, answer = await status(side, signed_bytes(side, alice, "POST", HEARTBEAT,
                                                           body, digest=digest))
            assert code == wanted, (digest, code, answer)
            answers.append((code, answer))
        return answers

    await same_on_both_paths(make_pair, alice, ask)


async def test_one_directory_counts_and_remembers_across_its_two_paths(
    make_pair: PairFactory,  # noqa: F811
) -> None:
    """The fast path and Quart's share one nonce cache and one rate limit: a request served
    below Quart, replayed in HTTP/1.0 (which only Quart takes), is 401, and requests that
    alternate between the paths reach the limit together. A body that never arrives is 408
    on both paths (the fast path serving it itself)."""
    alice = Peer(f"http://{HOST}:{free_port()}")
    body = b"{}"
    async with make_pair(OPENRED_PUBLIC_URL=PUBLIC, OPENRED_RATE_PER_CLIENT="4") as pair:
        side = pair.fast
        await registered(side, alice)
        data = signed_bytes(side, alice, "POST", HEARTBEAT, body)
        served = side.fast.served
        assert (await status(side, data))[0] == 200
        assert side.fast.served == served + 1
        old = data.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)
        code, answer = await status(side, old)
        assert (code, json.loads(answer)["detail"]) == (401, "nonce replayed inside the window")
        assert side.fast.served == served + 1
        # The other way round: Quart first, then the fast path.
        data = signed_bytes(side, alice, "POST", HEARTBEAT, body)
        assert (await status(side, data.replace(b" HTTP/1.1\r\n", b" HTTP/1.0\r\n", 1)))[0] == 200
        assert (await status(side, data))[0] == 401
        assert side.fast.served == served + 2
        # 4 per window: 2 counted above (the replays are taken back), 2 more, then 429
        # whichever path serves it.
        codes = []
        for version in (b"1.1", b"1.0", b"1.1", b"1.0"):
            data = signed_bytes(side, alice, "POST", HEARTBEAT, body)
            codes.append((await status(side, data.replace(
                b" HTTP/1.1\r\n", b" HTTP/" + version + b"\r\n", 1)))[0])
        assert codes == [200, 200, 429, 429]
        # A body that never comes: 408 from both paths, the same problem.
        timed_out = []
        for path in (pair.fast, pair.slow):
            path.app.config["BODY_TIMEOUT"] = 1
            served = path.fast.served
            data = signed_bytes(path, alice, "POST", HEARTBEAT, body)
            timed_out.append([(line, [h for h in headers if h[0] != "x-request-id"], content)
                              for line, headers, content
                              in answers_of(await exchange(path, data[:-1]))])
            assert path.fast.served == served + (path is pair.fast)
        assert timed_out[0] == timed_out[1]
        assert [int(status.split()[1]) for status, _, _ in timed_out[0]] == [408]


async def test_odd_covered_components_are_refused_with_a_reason_not_a_python_message(
    make_pair: PairFactory,  # noqa: F811
) -> None:
    """A ``Signature-Input`` that covers components the profile does not need, some of them
    malformed: always 401 with a reason, the same on both paths — not the library's Python
    ``TypeError`` text (``@query-param`` without a name) nor an empty reason
    (``@signature-params`` covered)."""
    alice = Peer(f"http://{HOST}:{free_port()}")
    odd = ['"@query-param"', '"@signature-params"', '"@status"', '"@foo"', '"x-missing"',
           '"content-type";key="x"', '"@query-param";name="a"', '"@authority"', '""']

    async def ask(side: Served) -> list[tuple[int, bytes]]:
        answers = []
        for component in odd:
            data = signed_bytes(side, alice, "POST", HEARTBEAT + "?a=1", b"{}")
            data = data.replace(b'"content-digest");',
                                b'"content-digest" ' + component.encode() + b");", 1)
            code, answer = await status(side, data)
            detail = json.loads(answer)["detail"]
            assert code == 401, (component, answer)
            assert detail.startswith("bad signature"), (component, detail)
            assert not detail.endswith(": "), (component, detail)
            assert "argument" not in detail and "()" not in detail, (component, detail)
            answers.append((code, answer))
        return answers

    await same_on_both_paths(make_pair, alice, ask)


async def test_a_schema_refusal_does_not_echo_a_huge_field_name(
    make_pair: PairFactory,  # noqa: F811
) -> None:
    """An unknown field whose name is most of the body was echoed whole in the 422's detail
    (a 50 kB answer): each field path in a detail is now cut short, with an ellipsis, on both
    paths alike."""
    alice = Peer(f"http://{HOST}:{free_port()}")
    name = "x" * 50_000
    body = json.dumps({"target": "a" * 32, name: 1, "y" * 100: 2}).encode()

    async def ask(side: Served) -> bytes:
        code, answer = await status(side, signed_bytes(side, alice, "POST", CONNECT, body))
        assert code == 422, answer[:200]
        assert len(answer) < 1000, len(answer)
        detail = json.loads(answer)["detail"]
        assert detail.count("Extra inputs are not permitted") == 2, detail
        assert "x" * 64 + "…" in detail and "y" * 100 not in detail, detail
        return answer

    await same_on_both_paths(make_pair, alice, ask)
