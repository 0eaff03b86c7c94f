"""The node's outbound HTTP against hostile servers (pattack, 2026-12-02).

A peer (or anyone answering at its URL) chooses how its answers are encoded. The node reads a
P2P answer of known length with one ``read()``, bounded by the answer's ``Content-Length``;
with ``Content-Encoding: gzip`` that length is the compressed one, and aiohttp inflated the
whole body behind it. These tests put a raw asyncio server in front of a served node (a
proxy that passes everything through and compresses the answers it is told to) or answer
alone, and measure what the calling node allocated with :mod:`tracemalloc`.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import tracemalloc
import zlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from openred.crypto.client import JailClient
from openred.crypto.identity import b64url
from openred.errors import NodeRefused, OpenRedError
from openred.node import envelope_binary
from openred.node.app import create_app
from openred.node.envelope import Envelope
from openred.node.routes import EXTENSION
from openred.node.services import NodeServices
from openred.node.settings import NodeSettings
from openred.web.client import HttpClient, Signer
from tests.node.test_app import Served, World, directory_app, granted, serve_node
from tests.node.world import Directory, JailPair
from tests.servers import HOST, free_port, serve_in_loop

INFLATED = 48 << 20
"""What a compressed answer inflates to (48 MiB from about 48 KiB of gzip), 48 times the 1 MiB
bound on an answer (:data:`~openred.web.client.MAX_REPLY_BYTES`)."""
PEAK = 8 << 20
"""Most a call may allocate while it reads such an answer (it may read 1 MiB at most)."""


def gzip_of(padding: int, tail: bytes) -> bytes:
    """``padding`` spaces then ``tail``, gzip-compressed (JSON ignores the spaces)."""
    packer = zlib.compressobj(9, zlib.DEFLATED, 31)
    spaces = b" " * (1 << 20)
    parts = [packer.compress(spaces) for _ in range(padding // len(spaces))]
    parts += [packer.compress(tail), packer.flush()]
    return b"".join(parts)


async def read_request(reader: asyncio.StreamReader) -> tuple[bytes, bytes, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    first, *lines = head[:-4].split(b"\r\n")
    method, path, _ = first.split(b" ", 2)
    headers = {}
    for line in lines:
        name, _, value = line.partition(b":")
        headers[name.strip().lower().decode()] = value.strip().decode()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return method, path, headers, body


HOP = frozenset({"host", "content-length", "connection", "accept-encoding", "transfer-encoding"})


def answer(status: int, content_type: str, body: bytes, *extra: bytes) -> bytes:
    head = [b"HTTP/1.1 %d X" % status, b"Content-Type: " + content_type.encode(),
            b"Content-Length: %d" % len(body), *extra]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


@dataclass
class Proxy:
    """Passes requests to ``target``; P2P answers are gzip-compressed after INFLATED spaces
    while ``compress`` is set. Records each request's headers."""

    target: str
    compress: bool = False
    seen: list[dict[str, str]] = field(default_factory=list)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            async with aiohttp.ClientSession() as session:
                while True:
                    method, path, headers, body = await read_request(reader)
                    self.seen.append(headers)
                    async with session.request(
                        method.decode(), self.target + path.decode(), data=body,
                        headers={k: v for k, v in headers.items() if k not in HOP},
                    ) as resp:
                        status, kind, got = (resp.status, resp.content_type,
                                             await resp.read())
                    if self.compress and path.startswith(b"/api/v3/p2p/"):
                        writer.write(answer(status, kind, gzip_of(INFLATED, got),
                                            b"Content-Encoding: gzip"))
                    else:
                        writer.write(answer(status, kind, got))
                    await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@contextlib.asynccontextmanager
async def raw_server(handle: Callable[[asyncio.StreamReader, asyncio.StreamWriter],
                                      Awaitable[None]]) -> AsyncIterator[str]:
    server = await asyncio.start_server(handle, HOST, 0)
    try:
        yield f"http://{HOST}:{server.sockets[0].getsockname()[1]}"
    finally:
        server.close()
        await server.wait_closed()


@contextlib.asynccontextmanager
async def serve_behind(name: str, jail: JailClient, data: Path, directory: Directory,
                       directory_url: str, proxy: Proxy) -> AsyncIterator[Served]:
    """A node served on loopback whose record names the proxy's URL, not its own."""
    port = free_port()
    proxy.target = f"http://{HOST}:{port}"
    async with raw_server(proxy.handle) as public:
        settings = NodeSettings(
            data_dir=data, host=HOST, port=port, public_url=public, allow_private_urls=True,
            directory_url=directory_url, directory_key=directory.key.b64url(),
            lifecycle_interval=3600,
        )
        data.mkdir(parents=True, exist_ok=True)
        app = create_app(settings, jail=jail)
        async with serve_in_loop(app, port):
            services: NodeServices = app.extensions[EXTENSION]
            yield Served(name, public, app, services.own_record.signed, data)


@pytest.fixture
async def proxied(jails: JailPair, directory: Directory,
                  tmp_path: Path) -> AsyncIterator[tuple[World, Proxy]]:
    """Two served nodes; a reaches b through a proxy that may compress b's answers."""
    clients = [JailClient(p.socket_path, timeout=10) for p in jails.procs[:2]]

    async def sign_base(base: bytes) -> bytes:
        return bytes(directory.signing.sign(base).signature)

    pusher = HttpClient(signer=Signer("directory", sign_base), allow_private=True, attempts=1)
    proxy = Proxy("")
    async with contextlib.AsyncExitStack() as stack:
        dir_url = await stack.enter_async_context(serve_in_loop(directory_app(directory)))
        a = await stack.enter_async_context(
            serve_node("a", clients[0], tmp_path / "a", directory.key, dir_url))
        b = await stack.enter_async_context(
            serve_behind("b", clients[1], tmp_path / "b", directory, dir_url, proxy))
        yield World(a, b, directory, pusher, clients, dir_url, contextlib.AsyncExitStack()), proxy
    await pusher.close()
    for client in clients:
        await client.close()


async def peak_of(call: Callable[[], Awaitable[Any]]) -> tuple[Any, int]:
    """What ``call`` gives (or raises) and the most memory it had allocated at once."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        try:
            outcome: Any = await call()
        except OpenRedError as exc:
            outcome = exc
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_a_compressed_p2p_answer_is_not_inflated_past_the_answer_limit(
    proxied: tuple[World, Proxy],
) -> None:
    """A message's answer of 48 KiB of gzip inflated to 48 MiB and was accepted: the 1 MiB
    bound on a P2P answer was checked against the compressed length (a 1 MiB answer of gzip
    is a gigabyte in memory). Now the node asks for no encoding and inflates nothing: the
    compressed answer is not JSON, a transport failure, and the node allocated little."""
    world, proxy = proxied
    channel = await world.a.services.connect(await granted(world))
    receipt = await world.a.services.send_message(channel.session_id, "plain")
    assert receipt is not None
    proxy.compress = True
    outcome, peak = await peak_of(
        lambda: world.a.services.send_message(channel.session_id, "compressed"))
    assert isinstance(outcome, OpenRedError), outcome
    assert peak < PEAK, f"{peak >> 20} MiB allocated for one answer"
    assert all(seen.get("accept-encoding") == "identity" for seen in proxy.seen), proxy.seen


async def test_a_compressed_refusal_of_a_chunk_is_not_inflated() -> None:
    """A chunk's problem answer is read up to 64 KiB by its Content-Length, the compressed
    one: 48 KiB of gzip inflated to 48 MiB and its problem was taken as the peer's refusal."""
    problem = b'{"type":"urn:openred:problem:bomb","detail":"inflated"}'
    body = gzip_of(INFLATED, problem)
    assert len(body) < envelope_binary.MAX_PROBLEM

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await read_request(reader)
        writer.write(answer(409, "application/problem+json", body, b"Content-Encoding: gzip"))
        await writer.drain()
        writer.close()

    envelope = Envelope(b64url(os.urandom(16)), 1, os.urandom(64))
    async with raw_server(handle) as url, HttpClient(allow_private=True) as http:
        outcome, peak = await peak_of(lambda: envelope_binary.post(
            http, f"{url}/api/v3/p2p/file_sharing/chunk", envelope,
            refuse=lambda reply: NodeRefused(reply.status, "peer-refused",
                                             reply.body[-60:].decode(errors="replace"))))
    assert isinstance(outcome, NodeRefused), outcome
    assert b"inflated" not in outcome.detail.encode(), outcome.detail
    assert peak < PEAK, f"{peak >> 20} MiB allocated for one answer"


@dataclass
class GrantDesk:
    """A directory's request-connection that answers ``status`` after ``hold`` seconds."""

    status: int
    hold: float = 0.0
    asked: int = 0

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await read_request(reader)
            self.asked += 1
            await asyncio.sleep(self.hold)
            problem = (b'{"type":"urn:openred:problem:push-failed","status":%d,'
                       b'"detail":"minted, not delivered"}' % self.status)
            writer.write(answer(self.status, "application/problem+json", problem,
                                b"Connection: close"))
            await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()


@pytest.mark.parametrize("status, hold", [(502, 0.0), (504, 0.0), (200, 12.0), (503, 0.0)])
async def test_a_grant_request_that_may_have_minted_a_grant_is_not_sent_again(
    jails: JailPair, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    status: int, hold: float,
) -> None:
    """``request-connection`` mints a grant and pushes it before it answers. Its answer was
    retried like an idempotent GET's: a 502 ``push-failed`` (the grant minted, one half not
    delivered), a 504, or no answer within the client's 10 s (an honest directory waiting up
    to 3 × 5 s on a silent target's pushes) each sent it again, three grants and six pushes
    for one ``openred connect``, against the initiator's grant budget. It is sent again only
    when the directory refused it before minting anything (503 ``busy``) or was never
    reached; and it may take as long as the directory's pushes do."""
    from openred.node import services as node_services

    monkeypatch.setattr(node_services, "GRANT_TIMEOUT", 2.0, raising=False)
    desk = GrantDesk(status, hold)
    jail = JailClient(jails.procs[0].socket_path, timeout=10)
    try:
        async with raw_server(desk.handle) as desk_url, serve_node(
            "a", jail, tmp_path / "a", directory.key, desk_url,
        ) as node:
            with pytest.raises(OpenRedError) as caught:
                await asyncio.wait_for(node.services.request_grant("b" * 43), 40)
    finally:
        await jail.close()
    assert desk.asked == (3 if status == 503 else 1), f"sent {desk.asked} times"
    if status != 200:
        assert isinstance(caught.value, NodeRefused) and caught.value.status == 502
        assert "minted, not delivered" in caught.value.detail
