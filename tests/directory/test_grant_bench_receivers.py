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

from bench.bench_directory import receivers_app, receivers_app_quart
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
