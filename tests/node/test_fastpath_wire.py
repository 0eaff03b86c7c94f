"""The node's P2P fast path against hostile bytes on the wire, compared with Quart's route.

:mod:`tests.node.test_fastpath` posts through aiohttp. These tests write real encrypted calls
byte by byte on a raw socket to a real served node, once with
:class:`~openred.node.fastpath.FastP2P` serving and once with Quart serving: HTTP/1.0,
percent-encoded paths, header names in any case, duplicate ``Content-Length`` and
``Content-Type`` lines, several calls pipelined on one keep-alive connection, a body longer or
shorter than its ``Content-Length``, and clients that leave mid-body or right after it. The
answers must agree (status, headers but ``Date``, body length: the bodies are sealed under
other counters), nothing answers 500, a call left mid-body reaches neither the inbox nor the
log, and the node's log verifies after it all.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from audit_tools.verify import verify
from openred.crypto.identity import b64url
from openred.modules.messaging.service import SEND
from openred.node.envelope import Envelope
from openred.node.fastpath import FAST_P2P, FastP2P
from openred.store.sqlite import DATABASE_NAME
from tests.node import test_app
from tests.node.test_app import World, granted, now
from tests.servers import split_answers

world = test_app.world  # the two served nodes of the app tests (a pytest fixture)
PATH = "/api/v3/p2p/messaging/send"

Answer = tuple[str, list[tuple[str, str]], int]


def fast(world: World) -> FastP2P:
    path: FastP2P = world.b.app.extensions[FAST_P2P]
    return path


def wire(body: bytes, *, target: str = PATH, version: str = "HTTP/1.1",
         headers: list[tuple[str, str]] | None = None, length: int | None = None,
         close: bool = False, port: int = 0) -> bytes:
    lines = [f"POST {target} {version}", f"Host: 127.0.0.1:{port}",
             "X-Request-Id: wire-test"]
    given = headers if headers is not None else [("Content-Type", "application/json")]
    lines += [f"{k}: {v}" for k, v in given]
    lines.append(f"Content-Length: {len(body) if length is None else length}")
    if close:
        lines.append("Connection: close")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


async def exchange(url: str, data: bytes, *, read: bool = True) -> list[Answer]:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(data)
        await writer.drain()
        raw = await asyncio.wait_for(reader.read(), 30) if read else b""
    finally:
        writer.close()
        await writer.wait_closed()
    answers = split_answers(raw)
    for _, headers, body in answers:
        assert len(body) == int(dict(headers).get("content-length", "0"))
    return [(status, headers, len(body)) for status, headers, body in answers]


async def test_odd_wire_forms_of_real_calls_answer_as_quart_does(world: World) -> None:
    grant_id = await granted(world)
    channel = await world.a.services.connect(grant_id)
    sid = channel.session_id
    port = int(world.b.url.rsplit(":", 1)[1])
    counter = iter(range(1_000_000))

    async def sealed() -> bytes:
        text = f"m{next(counter)}"
        plain = json.dumps({"message_id": b64url(text.encode().ljust(16, b"-")[:16]),
                            "text": text, "sent_at": now()}).encode()
        ch = await world.a.services.keeper.channel(sid, now())
        envelope: Envelope = ch.seal_request(SEND, plain)
        return json.dumps(envelope.to_json()).encode()

    async def one(**kw: Any) -> bytes:
        return wire(await sealed(), close=True, port=port, **kw)

    async def piped(count: int) -> bytes:
        calls = [wire(await sealed(), port=port) for _ in range(count - 1)]
        return b"".join(calls) + wire(await sealed(), close=True, port=port)

    async def longer(rest: bytes) -> bytes:
        return wire(await sealed(), port=port) + rest

    cases: list[tuple[Any, int | None, list[int]]] = [
        (lambda: one(), 1, [200]),
        (lambda: one(version="HTTP/1.0"), 1, [200]),
        (lambda: one(target="/api/v3/p2p/messaging/s%65nd"), 1, [200]),
        (lambda: one(target="/api/v3/p2p/messaging/send%ff"), 0, [404]),
        (lambda: one(target="/api/v3/p2p//messaging/send"), 0, [308]),
        (lambda: one(headers=[("cOnTeNt-TyPe", "APPLICATION/JSON")]), 1, [200]),
        (lambda: one(headers=[("Content-Type", "application/json")] * 2), 0, [200]),
        (lambda: one(headers=[("Content-Type", "application/json"),
                              ("Content-Length", "999")]), None, [400]),
        (lambda: piped(4), 4, [200, 200, 200, 200]),
        (lambda: longer(b"GARBAGE\r\n\r\n"), 1, [200, 400]),
    ]
    path = fast(world)
    for make, taken, wanted in cases:
        found: list[list[Answer]] = []
        for enabled in (True, False):
            path.enabled = enabled
            try:
                before = path.served
                found.append(await exchange(world.b.url, await make()))
                if taken is not None:
                    assert path.served == before + (taken if enabled else 0), found
            finally:
                path.enabled = True
        assert found[0] == found[1], found
        assert [int(status.split()[1]) for status, _, _ in found[0]] == wanted, found
    # A body shorter than its Content-Length, then the client leaves: nothing delivered.
    inbox = len(await world.b.services.messaging.inbox())
    for enabled in (True, False):
        path.enabled = enabled
        try:
            body = await sealed()
            assert await exchange(world.b.url, wire(body[:-3], length=len(body), port=port),
                                  read=False) == []
        finally:
            path.enabled = True
    # A client that leaves right after its body: the fast path delivers it whole (Quart may
    # too, or cancel it); the log stays sound either way.
    for enabled in (True, False):
        path.enabled = enabled
        try:
            await exchange(world.b.url, wire(await sealed(), port=port), read=False)
        finally:
            path.enabled = True
    found_inbox = len(await world.b.services.messaging.inbox())
    assert found_inbox >= inbox
    assert (await exchange(world.b.url, await one()))[0][0].split()[1] == "200"
    report = verify(world.b.data / DATABASE_NAME)
    assert report.ok, report
