"""The directory's fast routes against hostile bytes on the wire, compared with Quart's routes.

:mod:`tests.directory.test_fast_routes` sends well-formed HTTP through aiohttp. These tests
write the requests byte by byte on a raw socket to the same pair of real directories (one
serving the hot routes below Quart, one through Quart), each signed for its own directory:
duplicate ``Signature``/``Signature-Input``/``Content-Digest``/``Content-Length``/``Host``/
``Content-Type`` lines, odd header case, percent-encoded and non-UTF-8 paths and queries, a
query on a POST, several requests pipelined on one keep-alive connection (fast and Quart's
interleaved), a body longer or shorter than its ``Content-Length``, ``Transfer-Encoding`` with
a ``Content-Length``, oversized header sections, and clients that leave mid-body or right
after the body. Both must answer the same bytes (but ``Date`` and a grant's random id), count
the same metrics, never answer 500, and keep logs that ``audit_tools verify`` accepts.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from typing import Any

from audit_tools.verify import verify
from openred.settings import DirectorySettings
from openred.store.sqlite import DATABASE_NAME
from tests.directory.test_fast_routes import (
    CONNECT,
    DISCOVER,
    HEARTBEAT,
    REGISTER,
    Pair,
    PairFactory,
    Peer,
    Served,
    _metrics_agree,
    make_pair,  # noqa: F401 - fixture
    masked_body,
    receiver,
    signed,
)
from tests.servers import HOST, free_port, serve_in_loop, split_answers

Raw = Callable[[Served], Awaitable[bytes]]
"""Builds the raw bytes of one or more requests for one directory."""


def port_of(served: Served) -> int:
    return int(served.url.rsplit(":", 1)[1])


def head(method: str, target: str, headers: list[tuple[str, str]], *,
         version: str = "HTTP/1.1") -> bytes:
    lines = [f"{method} {target} {version}"] + [f"{k}: {v}" for k, v in headers]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def request_bytes(served: Served, peer: Peer, method: str, path: str, body: bytes = b"",
                        *, extra: list[tuple[str, str]] | None = None,
                        drop: tuple[str, ...] = (), target: str | None = None,
                        length: int | None = None, close: bool = False,
                        sign_path: str | None = None, **kw: Any) -> bytes:
    """A request ``peer`` signed for ``served`` over ``sign_path`` (default ``path``), as bytes.

    ``target`` replaces the request target on the wire; ``extra`` adds field lines, ``drop``
    removes the named ones; ``length`` overrides ``Content-Length``.
    """
    _, _, headers, _ = await signed(served, peer, method, sign_path or path, body, **kw)
    lines = [("Host", f"{HOST}:{port_of(served)}"), ("X-Request-Id", "wire-test")]
    lines += [(k, v) for k, v in headers.items() if k.lower() not in drop]
    if method != "GET" or body:
        lines.append(("Content-Length", str(len(body) if length is None else length)))
    if close:
        lines.append(("Connection", "close"))
    lines += extra or []
    return head(method, target or path, lines) + body


async def exchange(served: Served, data: bytes, *, half_close: bool = False,
                   read: bool = True) -> bytes:
    """Write ``data`` on a fresh connection and read until the server closes it."""
    reader, writer = await asyncio.open_connection(HOST, port_of(served))
    try:
        writer.write(data)
        await writer.drain()
        if half_close:
            writer.write_eof()
        if not read:
            return b""
        return await asyncio.wait_for(reader.read(), 30)
    finally:
        writer.close()
        await writer.wait_closed()


def answers_of(raw: bytes) -> list[tuple[str, list[tuple[str, str]], bytes]]:
    """The answers in ``raw``: status line, headers (sorted, ``Date`` dropped), body."""
    return [(status, headers, masked_body(body)) for status, headers, body in split_answers(raw)]


async def same_wire(pair: Pair, make: Raw, *, served: int | None = None,
                    **options: Any) -> list[tuple[str, list[tuple[str, str]], bytes]]:
    """Both directories answer ``make``'s bytes alike; ``served``: how many the fast path
    took itself (None: not checked)."""
    before = pair.fast.fast.served
    raw_a = await exchange(pair.fast, await make(pair.fast), **options)
    raw_b = await exchange(pair.slow, await make(pair.slow), **options)
    a = answers_of(raw_a.replace(pair.fast.url.encode(), b"URL"))
    b = answers_of(raw_b.replace(pair.slow.url.encode(), b"URL"))
    assert a == b, (a, b)
    assert pair.slow.fast.served == 0
    if served is not None:
        assert pair.fast.fast.served == before + served, (pair.fast.fast.served - before, a)
    for status, _, _ in a:
        assert " 500 " not in status + " ", a
    return a


async def chunked(served: Served, peer: Peer, path: str, body: bytes) -> bytes:
    """``body`` signed, sent as one chunk, with a ``Content-Length`` line as well."""
    _, _, headers, _ = await signed(served, peer, "POST", path, body)
    lines = [("Host", f"{HOST}:{port_of(served)}"), ("X-Request-Id", "wire-test"),
             *headers.items(), ("Content-Length", str(len(body))),
             ("Transfer-Encoding", "chunked"), ("Connection", "close")]
    return head("POST", path, lines) + b"%x\r\n%s\r\n0\r\n\r\n" % (len(body), body)


def statuses(answers: list[tuple[str, list[tuple[str, str]], bytes]]) -> list[int]:
    return [int(status.split()[1]) for status, _, _ in answers]


def settings_of(served: Served) -> DirectorySettings:
    return served.service.settings


def log_verifies(served: Served) -> None:
    report = verify(settings_of(served).data_dir / DATABASE_NAME)
    assert report.ok, report


async def test_duplicate_and_odd_header_lines_answer_as_quart_does(
    make_pair: PairFactory,  # noqa: F811
) -> None:
    url = f"http://{HOST}:{free_port()}"
    alice, bob = Peer(url), Peer(url)
    async with make_pair() as pair:
        for peer in (alice, bob):
            found = await same_wire(pair, lambda s, p=peer: request_bytes(
                s, p, "POST", REGISTER, p.body(1), close=True), served=1)
            assert statuses(found) == [201]
        beat = b"{}"

        async def doubled(s: Served, name: str, value: str | None = None) -> bytes:
            _, _, headers, _ = await signed(s, alice, "POST", HEARTBEAT, beat)
            return await request_bytes(s, alice, "POST", HEARTBEAT, beat, close=True,
                                       extra=[(name, value or headers[name])])

        cases: list[tuple[Raw, int | None, list[int]]] = [
            # a second, identical Signature / Signature-Input / Content-Digest line
            (lambda s: doubled(s, "Signature"), 1, [401]),
            (lambda s: doubled(s, "Signature-Input"), 1, [401]),
            (lambda s: doubled(s, "Content-Digest"), 1, [401]),
            (lambda s: doubled(s, "Content-Type", "application/json"), 0, [200]),
            (lambda s: doubled(s, "Host", "evil.example"), None, [400]),
            (lambda s: doubled(s, "Content-Length", "2"), None, [200]),
            (lambda s: doubled(s, "Content-Length", "3"), None, [400]),
            # chunked with a Content-Length: the chunks are the body (Quart's, not ours)
            (lambda s: chunked(s, alice, HEARTBEAT, beat), 0, [200]),
            # header names in any case, values with odd spacing
            (lambda s: request_bytes(s, alice, "POST", HEARTBEAT, beat, close=True,
                                     extra=[("cOnTeNt-TyPe", "application/json")],
                                     drop=("content-type",)), 1, [200]),
            (lambda s: request_bytes(s, alice, "POST", HEARTBEAT, beat, close=True,
                                     extra=[("Content-Type", "APPLICATION/JSON")],
                                     drop=("content-type",)), 1, [200]),
            (lambda s: request_bytes(s, alice, "POST", HEARTBEAT, beat, close=True,
                                     length=None, extra=[("X-Filler", "a" * 15_000)]), 1, [200]),
            (lambda s: request_bytes(s, alice, "POST", HEARTBEAT, beat, close=True,
                                     extra=[("X-Filler", "a" * 100_000)]), None, [431]),
        ]
        for make, taken, wanted in cases:
            found = await same_wire(pair, make, served=taken)
            assert statuses(found) == wanted
        await _metrics_agree(pair)
        for side in (pair.fast, pair.slow):
            log_verifies(side)


async def test_paths_queries_pipelines_and_odd_bodies_answer_as_quart_does(
    make_pair: PairFactory,  # noqa: F811
) -> None:
    port = free_port()
    url = f"http://{HOST}:{port}"
    alice, bob, carol = Peer(url), Peer(url), Peer(url)
    async with serve_in_loop(receiver(), port), make_pair() as pair:
        for peer in (alice, bob):
            found = await same_wire(pair, lambda s, p=peer: request_bytes(
                s, p, "POST", REGISTER, p.body(1), close=True), served=1)
            assert statuses(found) == [201]
        beat = b"{}"
        query = f"?node_id={bob.node_id}"
        connect = json.dumps({"target": bob.node_id}).encode()

        def one(method: str, path: str, body: bytes = b"", **kw: Any) -> Raw:
            return lambda s: request_bytes(s, alice, method, path, body, close=True, **kw)

        def piped(*parts: Callable[[Served, bool], Awaitable[bytes]]) -> Raw:
            async def make(s: Served) -> bytes:
                out = b""
                for index, part in enumerate(parts):
                    out += await part(s, index == len(parts) - 1)
                return out
            return make

        def part(method: str, path: str, body: bytes = b"", **kw: Any,
                 ) -> Callable[[Served, bool], Awaitable[bytes]]:
            return lambda s, last: request_bytes(s, alice, method, path, body, close=last, **kw)

        def longer(rest: bytes) -> Raw:
            async def make(s: Served) -> bytes:
                return await request_bytes(s, alice, "POST", HEARTBEAT, beat) + rest
            return make

        cases: list[tuple[Raw, int | None, list[int]]] = [
            # percent-encoded path: the same route, signed over the raw target
            (one("POST", "/api/v3/nodes/h%65artbeat", beat), 1, [200]),
            (one("POST", "/api/v3/nodes/h%65artbeat", beat, sign_path=HEARTBEAT), 1, [401]),
            (one("POST", "/api/v3/nodes/heartbeat%ff", beat), 0, [405]),  # DELETE <node_id>
            (one("POST", "/api/v3/nodes/heartbeat%00", beat), 0, [405]),
            (one("POST", "/api/v3/nodes//heartbeat", beat), 0, [308]),
            (one("POST", "/api/v3/nodes/heartbeat/", beat), 0, [404]),
            # a query on a POST is signed and passed on like any target
            (one("POST", f"{HEARTBEAT}?x=1&x=%ff", beat), 1, [200]),
            (one("POST", f"{HEARTBEAT}?x=1", beat, sign_path=HEARTBEAT), 1, [401]),
            (one("POST", f"{CONNECT}?target=x", connect), 1, [201]),
            # odd queries on discover
            (one("GET", f"{DISCOVER}{query}&%ff=1"), 1, [422]),
            (one("GET", f"{DISCOVER}?node_id=%00"), 1, [422]),
            (one("GET", f"{DISCOVER}?limit%5B%5D=1"), 1, [422]),
            (one("GET", f"{DISCOVER}?limit=%31"), 1, [200]),
            (one("GET", f"{DISCOVER}?limit=1&limit=2"), 1, [422]),
            (one("GET", f"{DISCOVER}?=&&=="), 1, [422]),
            (one("GET", f"{DISCOVER}?limit=+1"), 1, [200]),
            # absolute-form target: Quart's (it maps it to the route; ours only takes a path)
            (one("POST", HEARTBEAT, beat, target=f"http://{HOST}{HEARTBEAT}"), 0, [401]),
            # several requests pipelined on one connection, fast and Quart's interleaved
            (piped(part("POST", HEARTBEAT, beat), part("PUT", HEARTBEAT, beat),
                   part("GET", f"{DISCOVER}{query}"), part("POST", CONNECT, connect),
                   part("POST", CONNECT, connect), part("POST", HEARTBEAT, b"{"),
                   part("POST", HEARTBEAT, beat)), 6, [200, 405, 200, 201, 201, 400, 200]),
            # a body longer than its Content-Length: the rest is read as the next request
            (longer(b"GARBAGE / HTTP/1.1\r\n\r\n"), 1, [200, 400]),
            (longer(b"GET / HTTP/1.1\r\nHost: x\r\nX-Request-Id: wire-test\r\n"
                    b"Connection: close\r\n\r\n"), 1,
             [200, 404]),
        ]
        for make, taken, wanted in cases:
            found = await same_wire(pair, make, served=taken)
            assert statuses(found) == wanted, (found, wanted)
        await _metrics_agree(pair)
        # A body shorter than its Content-Length, then the client leaves (closing, or only
        # its sending side): nothing is answered, counted or logged on either side.
        sizes = [side.store.head.size for side in (pair.fast.service, pair.slow.service)]
        for half_close in (False, True):
            short = lambda s: request_bytes(s, carol, "POST", REGISTER,  # noqa: E731
                                            carol.body(1)[:-5], length=len(carol.body(1)))
            found = await same_wire(pair, short, half_close=half_close, read=half_close,
                                    served=1)
            assert found == []
        assert [side.store.head.size
                for side in (pair.fast.service, pair.slow.service)] == sizes
        await _metrics_agree(pair)
        for side in (pair.fast, pair.slow):
            log_verifies(side)


async def test_clients_that_leave_right_after_their_body_leave_sound_logs(
    make_pair: PairFactory,  # noqa: F811
) -> None:
    """A client that sends a whole request and leaves without reading the answer: the fast
    path finishes the request (an answer Quart also gives when the disconnect arrives after
    its handler is done); Quart may cancel its handler at any await. Either way every log
    verifies, each registration is in it whole or not at all, and both directories go on
    granting with proofs that check."""
    port = free_port()
    url = f"http://{HOST}:{port}"
    alice = Peer(url)
    leavers = [Peer(url) for _ in range(6)]
    async with serve_in_loop(receiver(), port), make_pair() as pair:
        found = await same_wire(pair, lambda s: request_bytes(
            s, alice, "POST", REGISTER, alice.body(1), close=True), served=1)
        assert statuses(found) == [201]
        for side in (pair.fast, pair.slow):
            for index, peer in enumerate(leavers):
                data = await request_bytes(side, peer, "POST", REGISTER, peer.body(1))
                if index % 2:  # then a grant request, also left behind
                    data += await request_bytes(
                        side, alice, "POST", CONNECT,
                        json.dumps({"target": leavers[index - 1].node_id}).encode())
                await exchange(side, data, half_close=index % 3 == 0, read=False)
        # Each leaver registers (again) normally; then alice gets a grant to each.
        for side in (pair.fast, pair.slow):
            for _ in range(200):  # let the requests left behind finish or be cancelled
                await asyncio.sleep(0.01)
            for peer in leavers:
                raw = await exchange(side, await request_bytes(
                    side, peer, "POST", REGISTER, peer.body(2), close=True))
                assert statuses(answers_of(raw)) in ([200], [201]), raw
                raw = await exchange(side, await request_bytes(
                    side, alice, "POST", CONNECT,
                    json.dumps({"target": peer.node_id}).encode(), close=True))
                assert statuses(answers_of(raw)) == [201], raw
            log_verifies(side)
