"""openred.web.asgi.HTTPConnection answers with Quart's exact bytes, under Hypercorn too."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from quart import Quart, Response
from quart.asgi import ASGIHTTPConnection

from openred.errors import RequestRefused
from openred.web.asgi import HTTPConnection
from openred.web.problems import install
from tests.servers import serve_in_loop


def make_app(ours: bool) -> Quart:
    app = Quart("asgi-test")
    app.config["MAX_CONTENT_LENGTH"] = 64
    install(app)
    assert app.asgi_http_class is HTTPConnection
    if not ours:
        app.asgi_http_class = ASGIHTTPConnection

    @app.get("/json")
    async def json_answer() -> Any:
        return {"a": 1, "b": [1, 2]}

    @app.get("/empty")
    async def empty() -> Any:
        return "", 204

    @app.route("/text", methods=["GET", "HEAD"])
    async def text() -> Any:
        return Response("héllo", content_type="text/plain", headers={"X-One": "1"})

    @app.get("/stream")
    async def stream() -> Any:
        async def chunks() -> AsyncIterator[bytes]:
            for part in (b"one", b"", b"two"):
                yield part

        return chunks(), 200, {"Content-Type": "application/octet-stream"}

    @app.post("/echo")
    async def echo() -> Any:
        from quart import request

        return await request.get_data()

    @app.get("/refuse")
    async def refuse() -> Any:
        raise RequestRefused(429, "rate-limited", "slow down", retry_after=2)

    return app


CASES: list[tuple[str, str, bytes]] = [
    ("GET", "/json", b""), ("GET", "/empty", b""), ("GET", "/text", b""),
    ("HEAD", "/text", b""), ("GET", "/stream", b""), ("POST", "/echo", b"x" * 10),
    ("POST", "/echo", b"x" * 100), ("GET", "/refuse", b""), ("GET", "/missing", b""),
    ("PUT", "/json", b""),
]


async def asgi(app: Quart, method: str, path: str, body: bytes) -> tuple[Any, bytes, bool]:
    sent: list[Any] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Any:
        if messages:
            return messages.pop(0)
        await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    headers = [(b"host", b"localhost")]
    if body:
        headers.append((b"content-length", str(len(body)).encode()))
    scope = {"type": "http", "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": headers, "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80),
             "extensions": {}}
    await app(scope, receive, send)
    start = sent[0]
    bodies = [m for m in sent[1:] if m["type"] == "http.response.body"]
    assert len(bodies) == len(sent) - 1
    return ((start["status"], start["headers"]), b"".join(m.get("body", b"") for m in bodies),
            bodies[-1].get("more_body", False))


async def test_the_same_answers_as_quarts_connection() -> None:
    ours, theirs = make_app(True), make_app(False)
    for method, path, body in CASES:
        a = await asgi(ours, method, path, body)
        b = await asgi(theirs, method, path, body)
        assert a == b, (method, path)
        assert a[2] is False  # the last body message ends the answer


async def raw_exchange(url: str, requests: list[bytes]) -> bytes:
    host, port = url.removeprefix("http://").split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    out = b""
    try:
        for raw in requests:
            writer.write(raw)
            await writer.drain()
            await asyncio.sleep(0.05)
        writer.write(b"GET /json HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        out = await asyncio.wait_for(reader.read(), 10)
    finally:
        writer.close()
    return b"\r\n".join(line for line in out.split(b"\r\n") if not line.startswith(b"date:"))


async def test_the_same_bytes_on_the_wire_under_hypercorn() -> None:
    requests = [f"{m} {p} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(b)}\r\n\r\n".encode() + b
                for m, p, b in CASES if len(b) <= 64]
    found = []
    for ours in (True, False):
        async with serve_in_loop(make_app(ours)) as url:
            found.append(await raw_exchange(url, requests))
    assert found[0] == found[1]
    assert found[0].count(b"HTTP/1.1 ") == len(requests) + 1
