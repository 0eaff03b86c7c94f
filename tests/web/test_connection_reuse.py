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

from openred.web.bodies import WholeBodies
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


# WholeBodies itself, on ASGI messages: what it waits for and when it gives up.


class Client:
    """The server side of one request as Hypercorn hands it to an app: a queue of receive
    messages, and what was sent."""

    def __init__(self, headers: list[tuple[bytes, bytes]]) -> None:
        self.scope = {"type": "http", "method": "POST", "path": "/", "headers": headers}
        self.queue: asyncio.Queue[Any] = asyncio.Queue()
        self.sent: list[Any] = []

    def body(self, data: bytes, more: bool) -> None:
        self.queue.put_nowait({"type": "http.request", "body": data, "more_body": more})

    async def send(self, message: Any) -> None:
        self.sent.append(message)

    def closes(self) -> bool:
        return (b"connection", b"close") in self.sent[0]["headers"]


async def answer_at_once(scope: Any, receive: Any, send: Any) -> None:
    """An app that answers without reading its body."""
    await send({"type": "http.response.start", "status": 401, "headers": []})
    await send({"type": "http.response.body", "body": b"no"})


@pytest.mark.parametrize("queue_get", [True, False], ids=["hypercorn-queue", "any-receive"])
async def test_the_rest_of_an_unread_body_is_received_before_the_answer(
        queue_get: bool) -> None:
    """Hypercorn's receive (its queue's ``get``, what arrived is taken at once) or any other."""
    client = Client([(b"content-length", b"30")])
    client.body(b"x" * 10, True)

    async def receive() -> Any:
        return await client.queue.get()

    wrapped = WholeBodies(answer_at_once)
    task = asyncio.create_task(wrapped(client.scope, client.queue.get if queue_get else receive,
                                       client.send))
    await asyncio.sleep(0.05)
    assert client.sent == []  # waiting for the rest of the body
    client.body(b"x" * 20, False)
    await asyncio.wait_for(task, 5)
    assert client.queue.empty() and [m["type"] for m in client.sent] == [
        "http.response.start", "http.response.body"]
    assert not client.closes()


async def test_a_body_that_does_not_come_in_time_closes_the_connection() -> None:
    client = Client([(b"content-length", b"30")])
    client.body(b"x" * 10, True)
    wrapped = WholeBodies(answer_at_once, drain_seconds=0.2)
    await asyncio.wait_for(wrapped(client.scope, client.queue.get, client.send), 5)
    assert client.closes() and client.sent[0]["status"] == 401


async def test_a_chunked_body_longer_than_worth_reading_closes_the_connection() -> None:
    client = Client([(b"transfer-encoding", b"chunked")])
    for _ in range(5):
        client.body(b"x" * 1000, True)
    wrapped = WholeBodies(answer_at_once, drain_bytes=3000)
    await asyncio.wait_for(wrapped(client.scope, client.queue.get, client.send), 5)
    assert client.closes()
    assert client.queue.qsize() == 1  # stopped once more than 3000 bytes had come


async def test_a_body_the_app_reads_while_answering_is_not_taken_from_it() -> None:
    """Quart reads the body in a task of its own, concurrently with the route; the messages
    it takes count (the rest of the body is not read twice, nothing is waited for in vain)."""
    client = Client([(b"content-length", b"30")])
    client.body(b"x" * 10, True)
    got: list[bytes] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        async def reader() -> None:
            while True:
                message = await receive()
                got.append(message.get("body", b""))
                if not message.get("more_body"):
                    return

        task = asyncio.create_task(reader())
        await asyncio.sleep(0.02)
        await answer_at_once(scope, receive, send)
        await task

    wrapped = WholeBodies(app, drain_seconds=5)
    run = asyncio.create_task(wrapped(client.scope, client.queue.get, client.send))
    await asyncio.sleep(0.05)
    client.body(b"y" * 20, False)
    await asyncio.wait_for(run, 2)
    assert got == [b"x" * 10, b"y" * 20] and not client.closes()


async def test_other_scopes_pass_through() -> None:
    seen: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append((receive, send))

    async def receive() -> Any:
        return {}

    async def send(message: Any) -> None:
        return None

    await WholeBodies(app)({"type": "lifespan"}, receive, send)
    assert seen == [(receive, send)]
