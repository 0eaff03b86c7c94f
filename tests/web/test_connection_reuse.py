"""Every answer on a kept-alive connection either leaves it usable or says ``Connection: close``.

An app may answer before it has read its request's whole body: a 413 for a declared length
above ``MAX_CONTENT_LENGTH`` (Quart answers before reading), a route that never reads a body
(a GET sent with one), a 404 or 405. Hypercorn then closes the connection once the answer is
out, because the rest of the body is still unread, but the answer did not say so: the client
keeps the connection in its pool and its next request, sent before the close arrives, gets no
answer at all (``RemoteDisconnected``: the flaky admin fuzz test of docs/decisions.md).

Served for real (:func:`tests.servers.serve_in_loop`, the services' own ``serve_app`` and
Hypercorn configuration), spoken to over a raw socket so that what is on the wire is what is
checked: after each odd request's answer, a plain GET on the same connection must be answered
unless that answer carried ``Connection: close``.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from quart import Quart, request

from openred.web.fastpath import FastPath, json_answer, send_answer
from openred.web.problems import install
from tests.servers import HOST, serve_in_loop

LIMIT = 256 * 1024
"""``MAX_CONTENT_LENGTH`` of the app (the node admin API's)."""


def make_app() -> Quart:
    app = Quart("reuse")
    app.config["MAX_CONTENT_LENGTH"] = LIMIT
    install(app)

    @app.get("/status")
    async def status() -> dict[str, Any]:
        return {"ok": True}

    @app.post("/echo")
    async def echo() -> dict[str, Any]:
        return {"size": len(await request.get_data())}

    class Fast(FastPath):
        """``GET /fast`` answered below Quart without reading a body (as the node's and the
        directory's fast GETs are)."""

        def route(self, scope: Any) -> Any:
            if scope["method"] != "GET" or scope["path"] != "/fast":
                return None

            async def serve(services: Any, receive: Any, send: Any) -> None:
                await send_answer(send, await json_answer(app, {"fast": True}))

            return serve

    app.extensions["reuse.services"] = object()
    app.asgi_app = app.extensions["reuse.fast"] = Fast(  # type: ignore[method-assign]
        app, app.asgi_app, services_key="reuse.services")
    return app


def head(method: str, path: str, length: int | None, extra: str = "") -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {HOST}", "Content-Type: application/json"]
    if length is not None:
        lines.append(f"Content-Length: {length}")
    return ("\r\n".join(lines) + extra + "\r\n\r\n").encode()


async def read_answer(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    """One answer off the connection: status, headers (lower-case names), body."""
    top = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
    status_line, *lines = top.decode("latin-1").rstrip("\r\n").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await asyncio.wait_for(reader.readexactly(int(headers.get("content-length", "0"))), 10)
    return int(status_line.split()[1]), headers, body


async def send_slowly(writer: asyncio.StreamWriter, first: bytes, rest: bytes) -> None:
    """Headers and the body's start, a pause (the app answers in it if it answers early: what a
    loaded machine does to a client still sending), then the rest, all before reading the
    answer, as HTTP clients send. A server that closed early is no error here (what it
    answered is read next)."""
    try:
        writer.write(first)
        await writer.drain()
        await asyncio.sleep(0.3)
        writer.write(rest)
        await writer.drain()
    except ConnectionError:
        pass


async def then_reusable(reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                        headers: dict[str, str], what: str) -> None:
    """Unless the answer said ``Connection: close``, the connection answers a GET afterwards,
    even a moment later (when a server that closes it has certainly done so)."""
    if headers.get("connection", "").lower() == "close":
        return
    await asyncio.sleep(0.3)
    writer.write(head("GET", "/status", None))
    try:
        await writer.drain()
        status, _, body = await read_answer(reader)
    except (ConnectionError, asyncio.IncompleteReadError) as exc:
        pytest.fail(f"{what}: the answer kept the connection open, but the next request on "
                    f"it got no answer ({exc!r})")
    assert (status, body) == (200, b'{"ok":true}\n'), what


# (what, method, path, declared length, bytes sent as the body)
ODD = [
    ("413 for a declared length above the limit", "POST", "/echo", 300_000, 300_000),
    ("a GET route that never reads the body it was sent", "GET", "/status", 200_000, 200_000),
    ("a path nothing matches", "POST", "/nowhere", 200_000, 200_000),
    ("a method the route does not take", "PUT", "/echo", 200_000, 200_000),
    ("a fast path that reads no body", "GET", "/fast", 100_000, 100_000),
]


@pytest.mark.parametrize(("what", "method", "path", "declared", "sent"), ODD,
                         ids=[o[0] for o in ODD])
async def test_an_answer_given_before_the_body_was_read_leaves_the_connection_usable(
        what: str, method: str, path: str, declared: int, sent: int) -> None:
    app = make_app()
    async with serve_in_loop(app) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        try:
            body = b"[" + b"1" * (sent - 2) + b"]"
            await send_slowly(writer, head(method, path, declared) + body[:65536], body[65536:])
            status, headers, _ = await read_answer(reader)
            assert 400 <= status < 500 or (method, status) == ("GET", 200), (what, status)
            await then_reusable(reader, writer, headers, what)
        finally:
            writer.close()
    assert app.extensions["reuse.fast"].served == (path == "/fast")


async def test_an_early_answer_to_a_body_too_big_to_wait_for_says_the_connection_closes(
        ) -> None:
    """A declared length far above what is worth receiving (8 MiB): the 413 comes at once,
    without waiting for the body, and says ``Connection: close``."""
    async with serve_in_loop(make_app()) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        try:
            writer.write(head("POST", "/echo", 8 * 1024 * 1024) + b"[" + b"1" * 1000)
            await writer.drain()
            status, headers, _ = await read_answer(reader)
            assert status == 413, status
            assert headers.get("connection") == "close", headers
        finally:
            writer.close()


async def test_a_request_sent_right_after_an_early_answer_is_answered() -> None:
    """The race itself, made certain: the next request is on the wire right behind the body
    (pipelined) while the app has answered 413 before reading it; it is answered in turn, or
    the 413 said that the connection closes (then a client knows to send it again on a new
    one)."""
    async with serve_in_loop(make_app()) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        try:
            await send_slowly(writer, head("POST", "/echo", 300_000) + b"x" * 65536,
                              b"x" * (300_000 - 65536) + head("GET", "/status", None))
            status, headers, _ = await read_answer(reader)
            assert status == 413, status
            if headers.get("connection", "").lower() != "close":
                try:
                    second, _, body = await read_answer(reader)
                except (ConnectionError, asyncio.IncompleteReadError) as exc:
                    pytest.fail(f"the request after the 413 got no answer ({exc!r})")
                assert (second, body) == (200, b'{"ok":true}\n')
        finally:
            writer.close()


async def test_a_body_the_app_reads_keeps_the_connection() -> None:
    """The ordinary case is unchanged: a body read whole, the connection kept alive."""
    async with serve_in_loop(make_app()) as url:
        port = int(url.rsplit(":", 1)[1])
        reader, writer = await asyncio.open_connection(HOST, port, limit=1 << 20)
        try:
            for size in (0, 10, 200_000):
                writer.write(head("POST", "/echo", size) + b"x" * size)
                await writer.drain()
                status, headers, body = await read_answer(reader)
                assert (status, body) == (200, b'{"size":%d}\n' % size)
                assert "connection" not in headers
        finally:
            writer.close()

