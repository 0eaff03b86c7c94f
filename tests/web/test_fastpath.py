"""The shared fast-path pieces (:mod:`openred.web.fastpath`) equal what Quart does with a request.

Each piece is compared with Quart's own code on the same input: the request Quart builds from
an ASGI scope (headers, ``@target-uri``), ``request.get_json()``, quart-schema's
``validate_querystring`` and ``validate_request``, ``app.json.response``, the app's problem
handler. The directory's OpenAPI document is the same with and without its fast routes.
"""

from __future__ import annotations

import json
import random
import string
from pathlib import Path
from typing import Any

import pytest
from pydantic import BaseModel, ConfigDict
from quart import Quart
from quart.asgi import ASGIHTTPConnection
from quart_schema import QuartSchema, validate_querystring

from openred.directory import app as directory_app
from openred.directory.schemas import DiscoverQuery, SignedRecordBody
from openred.settings import DirectorySettings
from openred.web.fastpath import (
    FastPath,
    body_is_plain,
    hooked,
    json_answer,
    load_body,
    load_query,
    problem_answer,
    ready,
    request_json,
)
from openred.web.problems import install
from openred.web.signatures import scope_http_request, to_http_request


def new_app() -> Quart:
    app = Quart("fastpath-test")
    QuartSchema(app)
    install(app)
    return app


def scope(headers: list[tuple[bytes, bytes]], *, path: str = "/a/b", raw_path: bytes | None = None,
          query: bytes = b"", client: Any = ("10.0.0.7", 1234), method: str = "POST") -> Any:
    found: dict[str, Any] = {
        "type": "http", "http_version": "1.1", "method": method, "scheme": "http",
        "path": path, "raw_path": raw_path if raw_path is not None else path.encode(),
        "query_string": query, "root_path": "", "headers": headers, "client": client,
        "server": ("127.0.0.1", 8700), "extensions": {},
    }
    return found


def quart_request(app: Quart, asgi_scope: Any, body: bytes) -> Any:
    async def send(message: Any) -> None:
        raise AssertionError("nothing is sent")

    request = ASGIHTTPConnection(app, asgi_scope)._create_request_from_scope(send)
    request.body.set_result(body)
    return request


NAMES = [b"content-type", b"signature-input", b"signature", b"content-digest", b"x-request-id",
         b"remote-addr", b"host", b"accept", b"x-a_b", b"weird-NAME", b"x-\xe9"]


async def test_scope_requests_equal_the_requests_quart_builds() -> None:
    app = new_app()
    rng = random.Random(7)
    for _ in range(300):
        headers = [(rng.choice(NAMES), bytes(rng.choice(b"abc =,;\"\xe9:") for _ in range(
            rng.randrange(0, 12)))) for _ in range(rng.randrange(0, 8))]
        path = rng.choice(["/api/v3/nodes/register", "/a b/é"])
        raw = rng.choice([None, b"/api/v3/nodes/%72egister", b"/a%20b/%C3%A9"])
        query = rng.choice([b"", b"node_id=abc", b"a=%ff&b=+x&b=", b"x"])
        client = rng.choice([("10.0.0.7", 1), None, ("::1", 2)])
        asgi = scope(headers, path=path, raw_path=raw, query=query, client=client)
        if raw is None:
            asgi.pop("raw_path")
        body = bytes(rng.randrange(256) for _ in range(rng.randrange(0, 20)))
        public = rng.choice(["http://127.0.0.1:8700", "https://dir.example.org/"])
        expected = await to_http_request(public, quart_request(app, asgi, body))
        assert scope_http_request(public, asgi, body) == expected


async def test_query_models_equal_quart_schemas() -> None:
    app = new_app()
    seen: list[Any] = []

    @validate_querystring(DiscoverQuery)
    async def view(query_args: DiscoverQuery) -> None:
        seen.append(query_args)

    node = "a" * 32
    queries = [b"", b"node_id=" + node.encode(), b"limit=5&status=active", b"limit=0",
               b"limit=abc", b"node_id=x", b"other=1", b"node_id=" + node.encode() * 2,
               b"node_id=" + node.encode() + b"&node_id=" + node.encode(),
               b"node_id%5B%5D=" + node.encode(), b"node_id[]=" + node.encode(),
               b"cursor=&limit=", b"limit=5&limit=6", b"a=%ff&b=+x", b"status=", b"&&=&",
               b"limit=%35", b"limit=+5", b"limit=5.0", b"node_id=" + node.upper().encode()]
    for query in queries:
        request = quart_request(app, scope([], query=query, method="GET"), b"")
        quart_error: Exception | None = None
        async with app.request_context(request):
            try:
                await view()
            except Exception as exc:
                quart_error = exc
        try:
            mine: Any = load_query(app, query, DiscoverQuery)
        except Exception as exc:
            assert quart_error is not None and type(exc) is type(quart_error), query
            assert str(exc.validation_error) == str(  # type: ignore[attr-defined]
                quart_error.validation_error), query  # type: ignore[attr-defined]
            continue
        assert quart_error is None, query
        assert mine == seen[-1], query


class Loose(BaseModel):
    model_config = ConfigDict(extra="forbid")
    a: int = 0


BODIES = [b"", b"null", b"[]", b"{}", b'{"a": 1}', b'{"a": "1"}', b'{"b": 1}', b"{", b"1e999",
          b"[" * 5000 + b"]" * 5000, b"\xff\xfe", b'{"a": "\\ud800"}', "{\"é\": 1}".encode(),
          b'{"a": 1} x', b"NaN", b" {} "]


async def test_request_json_and_body_models_equal_quarts() -> None:
    app = new_app()
    for body in BODIES:
        for model in (Loose, SignedRecordBody):
            headers = [(b"content-type", b"application/json"),
                       (b"content-length", b"%d" % len(body))]
            request = quart_request(app, scope(headers), body)
            quart_result: Any = None
            quart_error: Exception | None = None
            async with app.request_context(request):
                try:
                    quart_result = load_body(app, await request.get_json(), model)
                except Exception as exc:
                    quart_error = exc
            try:
                mine = load_body(app, request_json(app, body), model)
            except Exception as exc:
                assert quart_error is not None and type(exc) is type(quart_error), body[:20]
                assert str(exc) == str(quart_error), body[:20]
                # The problem answers are the same too.
                assert await problem_answer(app, exc, []) == await problem_answer(
                    app, quart_error, [])
                continue
            assert quart_error is None and mine == quart_result, body[:20]


async def test_json_answers_equal_the_providers() -> None:
    app = new_app()
    values = [{"b": 1, "a": [1, 2.5, None, "é"]}, {"items": [], "next_cursor": None}, {}]
    for compact in (None, False):
        app.json.compact = compact  # type: ignore[attr-defined]
        for value in values:
            for status in (200, 201):
                async with app.app_context():
                    response = app.json.response(value)
                    response.status_code = status
                    expected = (status, [(k.lower().encode(), v.encode())
                                         for k, v in response.headers.items()],
                                await response.get_data())
                assert await json_answer(app, value, status) == expected


def test_plain_bodies() -> None:
    json_type = (b"content-type", b"application/json")

    def length(n: int | bytes) -> tuple[bytes, bytes]:
        return (b"content-length", n if isinstance(n, bytes) else b"%d" % n)

    assert body_is_plain([json_type, length(5)], 10, json=True)
    assert body_is_plain([(b"content-type", b"Application/JSON"), length(5)], 10, json=True)
    for headers in ([json_type], [length(5)], [json_type, length(11)],
                    [json_type, length(5), length(5)], [json_type, json_type, length(5)],
                    [json_type, length(b"-1")], [json_type, length(b"1" * 10)],
                    [json_type, length(5), (b"expect", b"100-continue")],
                    [json_type, (b"transfer-encoding", b"chunked")],
                    [(b"content-type", b"application/json; charset=utf-8"), length(5)]):
        assert not body_is_plain(headers, 10, json=True), headers
    assert body_is_plain([], 10, json=False)
    assert body_is_plain([(b"content-type", b"text/plain"), length(3)], 10, json=False)
    assert not body_is_plain([length(11)], 10, json=False)
    assert not body_is_plain([(b"transfer-encoding", b"chunked")], 10, json=False)


def test_ready_only_without_hooks_and_with_the_problem_handler() -> None:
    app = new_app()
    assert ready(app) and not hooked(app)
    app.config["DEBUG"] = True
    assert hooked(app)
    app.config["DEBUG"] = False

    @app.teardown_appcontext
    async def teardown(exc: BaseException | None) -> None:
        return None

    assert hooked(app) and not ready(app)
    bare = Quart("bare")
    assert not hooked(bare) and not ready(bare)  # no handler for Exception


async def test_the_openapi_document_is_the_same_without_the_fast_routes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = DirectorySettings.load(tmp_path, environ={})

    async def document() -> Any:
        app = directory_app.create_app(settings)
        response = await app.test_client().get("/openapi.json")
        assert response.status_code == 200
        return json.loads(await response.get_data())

    with_fast = await document()
    monkeypatch.setattr(directory_app, "install_fast_routes", lambda app: None)
    without = await document()
    assert with_fast == without and "/api/v3/nodes/discover" in with_fast["paths"]


def test_random_names_are_title_cased_like_werkzeug() -> None:
    rng = random.Random(3)
    for _ in range(200):
        name = "".join(rng.choice(string.ascii_letters + "-_0") for _ in range(8))
        asgi = scope([(name.lower().encode(), b"v")])
        assert name.lower().title() in scope_http_request("http://x", asgi, b"").headers


async def test_requests_go_to_quart_unless_claimed_ready_and_open() -> None:
    app = new_app()
    calls: list[str] = []

    async def inner(asgi: Any, receive: Any, send: Any) -> None:
        calls.append("quart")

    class Everything(FastPath):
        def route(self, asgi: Any) -> Any:
            async def serve(services: Any, receive: Any, send: Any) -> None:
                calls.append("fast")

            return serve

    path = Everything(app, inner, services_key="svc")

    async def call(**changes: Any) -> str:
        asgi = {**scope([]), **changes}
        await path(asgi, None, None)
        return calls.pop()

    assert await call() == "quart"  # the service is not open
    app.extensions["svc"] = object()
    assert await call() == "fast" and path.served == 1
    assert await call(type="websocket") == "quart"
    assert await call(root_path="/prefix") == "quart"
    path.enabled = False
    assert await call() == "quart"
    path.enabled = True

    async def hook() -> None:
        return None

    app.before_request_funcs[None].append(hook)
    assert await call() == "quart"
    app.before_request_funcs[None].remove(hook)
    assert await call() == "fast" and path.served == 2
