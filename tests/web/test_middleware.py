"""The request middleware answers and counts exactly like the request hooks it replaced.

``old_install`` is the previous implementation (four Quart before/after request functions), kept
here as the reference: the same requests through both give the same status, headers (the
request id included when the client sends one) and bodies, the same metric samples (every
label set and count), and log records inside a request carry the same id.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from typing import Any

import pytest
from quart import Quart, g, request
from quart_schema import QuartSchema, validate_querystring

from openred.directory.schemas import DiscoverQuery
from openred.errors import RequestRefused
from openred.node.fastpath import _hooked
from openred.web import logging as wl
from openred.web.metrics import Metrics, install_request_metrics
from openred.web.middleware import MIDDLEWARE_EXTENSION, RequestMiddleware
from openred.web.problems import install

TOKEN = re.compile(r"[A-Za-z0-9_-]{16}")


def old_install(app: Quart, metrics: Metrics) -> None:
    """The hooks of openred.web.logging and openred.web.metrics before the middleware."""

    @app.before_request
    async def assign() -> None:
        given = request.headers.getlist(wl.REQUEST_ID_HEADER)
        first = given[0] if given else ""
        wl._REQUEST_ID.set(first if wl._VALID_ID.fullmatch(first) else secrets.token_urlsafe(12))

    @app.after_request
    async def echo(response: Any) -> Any:
        rid = wl._REQUEST_ID.get()
        if rid is not None:
            response.headers[wl.REQUEST_ID_HEADER] = rid
        return response

    app.extensions["openred.metrics"] = metrics

    @app.before_request
    async def start_timer() -> None:
        g.openred_metrics_start = time.perf_counter()

    @app.after_request
    async def observe(response: Any) -> Any:
        start = getattr(g, "openred_metrics_start", None)
        if start is not None:
            rule = request.url_rule.rule if request.url_rule is not None else None
            metrics.observe_request(request.method, rule, response.status_code,
                                    time.perf_counter() - start)
        return response


seen_ids: list[str | None] = []


def make_app(new: bool) -> tuple[Quart, Metrics]:
    app = Quart("mw-test")
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    QuartSchema(app)
    install(app)

    @app.get("/items/<name>")
    async def item(name: str) -> Any:
        logging.getLogger("mw-test").info("item %s", name)
        seen_ids.append(wl.request_id())
        return {"name": name}

    @app.get("/q")
    @validate_querystring(DiscoverQuery)
    async def query(query_args: DiscoverQuery) -> Any:
        return {"limit": query_args.limit}

    @app.post("/refuse")
    async def refuse() -> Any:
        raise RequestRefused(429, "rate-limited", "slow down", retry_after=3)

    @app.get("/boom")
    async def boom() -> Any:
        raise RuntimeError("boom")

    @app.get("/own-id")
    async def own_id() -> Any:
        return {"ok": True}, 200, {"X-Request-Id": "set-by-route", "X-After": "1"}

    metrics = Metrics("test")
    if new:
        wl.install_request_ids(app)
        install_request_metrics(app, metrics)
    else:
        old_install(app, metrics)
    return app, metrics


REQUESTS: list[tuple[str, str, dict[str, str]]] = [
    ("GET", "/items/a", {"X-Request-Id": "given-id.1"}),
    ("GET", "/items/b", {"X-Request-Id": "given-id.2"}),
    ("GET", "/q?limit=5", {"X-Request-Id": "q1"}),
    ("GET", "/q?limit=0", {"X-Request-Id": "q2"}),
    ("GET", "/q?nope=1", {"X-Request-Id": "q3"}),
    ("POST", "/refuse", {"X-Request-Id": "r1"}),
    ("GET", "/refuse", {"X-Request-Id": "r2"}),
    ("GET", "/nowhere", {"X-Request-Id": "n1"}),
    ("GET", "/boom", {"X-Request-Id": "b1"}),
    ("GET", "/own-id", {"X-Request-Id": "o1"}),
    ("DELETE", "/items/a", {"X-Request-Id": "d1"}),
]


def metric_samples(metrics: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in metrics.registry.collect():
        if not family.name.startswith("openred_http"):
            continue
        for s in family.samples:
            if s.name.endswith(("_sum", "_created")) or (
                s.name.endswith("_bucket") and s.labels.get("le") != "+Inf"
            ):
                continue  # durations differ; counts do not
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def run(app: Quart) -> list[tuple[int, list[tuple[str, str]], bytes]]:
    client = app.test_client()
    out = []
    for method, path, headers in REQUESTS:
        response = await client.open(path, method=method, headers=headers)
        out.append((response.status_code, list(response.headers.items()),
                    await response.get_data()))
    return out


async def test_answers_and_metrics_equal_the_hooks() -> None:
    old_app, old_metrics = make_app(False)
    new_app, new_metrics = make_app(True)
    old = await run(old_app)
    new = await run(new_app)
    assert new == old
    assert [a[0] for a in new] == [200, 200, 200, 422, 422, 429, 405, 404, 500, 200, 405]
    assert all(("x-request-id", h["X-Request-Id"]) in a[1]
               for a, (_, _, h) in zip(new, REQUESTS, strict=True))
    assert metric_samples(new_metrics) == metric_samples(old_metrics)
    assert new_metrics.registry.get_sample_value(
        "openred_http_requests_total",
        {"method": "GET", "route": "/items/<name>", "status": "200"}) == 2
    assert new_metrics.registry.get_sample_value(
        "openred_http_requests_total",
        {"method": "GET", "route": "<unmatched>", "status": "404"}) == 1


@pytest.mark.parametrize("given", [None, "", "x" * 65, "bad id", "a/b", "ü"])
async def test_a_missing_or_unusable_id_is_replaced_by_a_fresh_one(given: str | None) -> None:
    app, _ = make_app(True)
    headers = {} if given is None else {"X-Request-Id": given}
    seen_ids.clear()
    response = await app.test_client().get("/items/x", headers=headers)
    rid = response.headers["X-Request-Id"]
    assert TOKEN.fullmatch(rid) and rid != given
    assert response.headers.getlist("X-Request-Id") == [rid]
    assert seen_ids == [rid]  # what the handler's logs carry


class Collect(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)


async def test_the_first_id_line_wins_and_logs_carry_it() -> None:
    app, _ = make_app(True)
    logger = logging.getLogger("mw-test")
    collect = Collect()
    collect.addFilter(wl._ContextFilter(None))
    logger.addHandler(collect)
    old_level = logger.level
    logger.setLevel(logging.INFO)
    try:
        seen_ids.clear()
        scope_headers = [(b"x-request-id", b"first"), (b"x-request-id", b"second")]
        status, headers, _ = await asgi(app, "GET", "/items/z", scope_headers)
    finally:
        logger.removeHandler(collect)
        logger.setLevel(old_level)
    assert status == 200 and headers.count((b"x-request-id", b"first")) == 1
    assert (b"x-request-id", b"second") not in headers
    assert seen_ids == ["first"]
    assert [getattr(r, "request_id", None) for r in collect.records] == ["first"]
    assert wl.request_id() is None  # not left behind after the request


async def asgi(app: Any, method: str, path: str, headers: list[tuple[bytes, bytes]],
               body: bytes = b"") -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    sent: list[Any] = []
    messages = [{"type": "http.request", "body": body, "more_body": False}]

    async def receive() -> Any:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"host", b"localhost"), *headers], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 80), "extensions": {}}
    await app(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body_out = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], list(start["headers"]), body_out


async def test_no_request_hooks_so_the_fast_path_stays_on() -> None:
    app, _ = make_app(True)
    assert not _hooked(app)
    assert not any(app.before_request_funcs.values())
    assert not any(app.after_request_funcs.values())
    old_app, _ = make_app(False)
    assert _hooked(old_app)


async def test_installing_again_keeps_one_middleware_and_takes_the_new_metrics() -> None:
    app, first = make_app(True)
    middleware = app.asgi_app
    assert isinstance(middleware, RequestMiddleware)
    second = Metrics("again")
    wl.install_request_ids(app)
    install_request_metrics(app, second)
    assert app.asgi_app is middleware and app.extensions[MIDDLEWARE_EXTENSION] is middleware
    await app.test_client().get("/items/a")
    labels = {"method": "GET", "route": "/items/<name>", "status": "200"}
    assert second.registry.get_sample_value("openred_http_requests_total", labels) == 1
    assert first.registry.get_sample_value("openred_http_requests_total", labels) is None


async def test_a_request_served_below_quart_is_labelled_by_the_rule_quart_would_match() -> None:
    """An ASGI fast path inside the middleware (like the node's P2P calls) never makes a Quart
    request: the middleware matches the app's URL map itself, with the same outcome."""
    app, metrics = make_app(True)
    quart_asgi = app.asgi_app.inner  # type: ignore[attr-defined]

    async def fast(scope: Any, receive: Any, send: Any) -> None:
        if scope["method"] == "GET" and (scope["path"].startswith("/items/")
                                         or scope["path"] == "/fast-nowhere"):
            await send({"type": "http.response.start", "status": 201,
                        "headers": [(b"content-type", b"text/plain")]})
            await send({"type": "http.response.body", "body": b"fast"})
            return
        await quart_asgi(scope, receive, send)

    app.asgi_app.inner = fast  # type: ignore[attr-defined]
    for path in ("/items/a", "/items/b", "/fast-nowhere"):
        status, headers, body = await asgi(app, "GET", path, [(b"x-request-id", b"f1")])
        assert (status, body) == (201, b"fast")
        assert headers == [(b"content-type", b"text/plain"), (b"x-request-id", b"f1")]
    await asgi(app, "POST", "/items/a", [])  # 405 from Quart itself
    get = metrics.registry.get_sample_value
    assert get("openred_http_requests_total",
               {"method": "GET", "route": "/items/<name>", "status": "201"}) == 2
    assert get("openred_http_requests_total",
               {"method": "GET", "route": "<unmatched>", "status": "201"}) == 1
    assert get("openred_http_requests_total",
               {"method": "POST", "route": "<unmatched>", "status": "405"}) == 1


async def test_other_scopes_pass_through() -> None:
    app, metrics = make_app(True)
    seen: list[str] = []

    async def inner(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["type"])

    app.asgi_app.inner = inner  # type: ignore[attr-defined]
    await app.asgi_app({"type": "lifespan"}, None, None)
    await app.asgi_app({"type": "websocket", "path": "/"}, None, None)
    assert seen == ["lifespan", "websocket"]
    assert metric_samples(metrics) == {}
