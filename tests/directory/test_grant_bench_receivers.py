"""The grant benchmark's receivers: the plain ASGI one answers a push as the bare Quart one did.

Both served by Hypercorn with the benchmark's configuration on loopback; the raw answers to
the same pushes (whole body read first, also when it arrives in chunks) are the same bytes
once the ``date`` header is set aside. Other paths and methods get the same status.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
from hypercorn.asyncio import serve

from bench.bench_directory import _AckProtocol, receivers_app, receivers_app_quart
from openred.web.serve import hypercorn_config
from tests.servers import free_port, wait_listening

HOST = "127.0.0.1"


@asynccontextmanager
async def _served(factory: Callable[[], Any]) -> AsyncIterator[int]:
    port = free_port()
    config = hypercorn_config(HOST, port)
    config.errorlog = None
    stop = asyncio.Event()
    task = asyncio.create_task(serve(factory(), config, shutdown_trigger=stop.wait))
    try:
        await wait_listening(port, task)
        yield port
    finally:
        stop.set()
        await asyncio.wait_for(task, 10)


async def _exchange(port: int, parts: list[bytes]) -> bytes:
    reader, writer = await asyncio.open_connection(HOST, port)
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.01)
    answer = await asyncio.wait_for(reader.read(), 10)
    writer.close()
    await writer.wait_closed()
    return re.sub(rb"\r\ndate: [^\r]*", b"", answer)


def _push(body: bytes, *, chunked: bool = False) -> list[bytes]:
    head = (b"POST /api/v3/tokens/receive HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nConnection: close\r\n")
    if not chunked:
        return [head + b"Content-Length: %d\r\n\r\n" % len(body) + body]
    half = len(body) // 2
    return [head + b"Transfer-Encoding: chunked\r\n\r\n",
            b"%x\r\n%s\r\n" % (half, body[:half]),
            b"%x\r\n%s\r\n0\r\n\r\n" % (len(body) - half, body[half:])]


@pytest.mark.parametrize("parts", [
    _push(b'{"grant":{}}'),
    _push(b'{"x":"' + b"a" * 200_000 + b'"}'),
    _push(b'{"x":"' + b"b" * 70_000 + b'"}', chunked=True),
])
async def test_a_push_gets_the_same_acknowledgement(parts: list[bytes]) -> None:
    async with _served(receivers_app) as plain, _served(receivers_app_quart) as quart:
        ours, theirs = await _exchange(plain, parts), await _exchange(quart, parts)
    assert ours == theirs
    assert ours.startswith(b"HTTP/1.1 200 ") and ours.endswith(b'\r\n\r\n{"status":"ok"}\n')


@pytest.mark.parametrize(("request_line", "status"), [
    (b"GET /api/v3/tokens/receive", b"405"),
    (b"POST /api/v3/other", b"404"),
    (b"GET /", b"404"),
])
async def test_other_requests_get_the_same_status(request_line: bytes, status: bytes) -> None:
    parts = [request_line + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]
    async with _served(receivers_app) as plain, _served(receivers_app_quart) as quart:
        ours, theirs = await _exchange(plain, parts), await _exchange(quart, parts)
    assert ours.split(b" ", 2)[1] == theirs.split(b" ", 2)[1] == status


# -- the lean receivers (a bare asyncio protocol, what the benchmark runs) ------------------------

@asynccontextmanager
async def _lean() -> AsyncIterator[int]:
    port = free_port()
    server = await asyncio.get_running_loop().create_server(_AckProtocol, HOST, port)
    try:
        yield port
    finally:
        server.close()
        await server.wait_closed()


def _head_and_body(answer: bytes) -> tuple[int, str | None, bytes]:
    head, _, body = answer.partition(b"\r\n\r\n")
    lines = head.split(b"\r\n")
    fields = dict(line.lower().split(b": ", 1) for line in lines[1:])
    kind = fields.get(b"content-type")
    return int(lines[0].split(b" ")[1]), kind.decode() if kind else None, body


async def _answers(port: int, parts: list[bytes], count: int) -> list[bytes]:
    """``count`` answers on one connection (read by their Content-Length)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    for part in parts:
        writer.write(part)
        await writer.drain()
        await asyncio.sleep(0.01)
    answers = []
    for _ in range(count):
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(re.search(rb"content-length: (\d+)", head.lower()).group(1))  # type: ignore[union-attr]
        answers.append(head + await asyncio.wait_for(reader.readexactly(length), 10))
    writer.close()
    await writer.wait_closed()
    return answers


def _keep_alive(body: bytes) -> bytes:
    return (b"POST /api/v3/tokens/receive HTTP/1.1\r\nHost: x\r\n"
            b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % len(body) + body)


async def test_the_lean_receivers_acknowledge_as_the_asgi_ones_on_one_connection() -> None:
    """Pushes one after another on a kept-alive connection (as the directory's pool sends
    them), bodies split over several writes: the same status, type and bytes as the ASGI
    receivers answer."""
    big = _keep_alive(b'{"x":"' + b"c" * 100_000 + b'"}')
    parts = [_keep_alive(b'{"grant":{}}') + big[:500], big[500:70_000], big[70_000:],
             _keep_alive(b"{}")]
    async with _lean() as lean, _served(receivers_app) as plain:
        ours = await _answers(lean, parts, 3)
        theirs = await _answers(plain, parts, 3)
    assert [_head_and_body(a) for a in ours] == [_head_and_body(a) for a in theirs]
    assert _head_and_body(ours[0]) == (200, "application/json", b'{"status":"ok"}\n')


@pytest.mark.parametrize(("request_line", "status"), [
    (b"GET /api/v3/tokens/receive", 405),
    (b"POST /api/v3/other", 404),
    (b"GET /", 404),
])
async def test_the_lean_receivers_answer_other_requests_as_the_asgi_ones(
    request_line: bytes, status: int
) -> None:
    parts = [request_line + b" HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"]
    async with _lean() as lean, _served(receivers_app) as plain:
        ours, theirs = await _exchange(lean, parts), await _exchange(plain, parts)
    assert _head_and_body(ours)[0] == _head_and_body(theirs)[0] == status


@pytest.mark.parametrize("head", [
    b"POST /api/v3/tokens/receive HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
    b"POST /api/v3/tokens/receive HTTP/1.1\r\nContent-Length: x\r\n\r\n",
    b"POST /api/v3/tokens/receive HTTP/1.1\r\nContent-Length: -1\r\n\r\n",
    b"NONSENSE\r\n\r\n",
])
async def test_what_the_lean_receivers_cannot_frame_gets_400_and_a_close(head: bytes) -> None:
    async with _lean() as lean:
        answer = await _exchange(lean, [head])
    assert _head_and_body(answer)[0] == 400
