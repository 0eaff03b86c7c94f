"""Per-request bookkeeping as one ASGI middleware around a Quart app (request ids, metrics).

:class:`RequestMiddleware` wraps ``app.asgi_app`` (it is installed by
:func:`openred.web.logging.install_request_ids` and
:func:`openred.web.metrics.install_request_metrics`, one middleware for both). For every HTTP
request it

* takes the id from the first ``X-Request-Id`` line when that is a short token
  (``[A-Za-z0-9._-]{1,64}``), else makes a fresh one, and keeps it in the context variable the
  log records read (:func:`openred.web.logging.request_id`) while the request is handled;
* echoes it in the answer's ``X-Request-Id`` header (replacing any the app set, in place, as
  Werkzeug's ``headers[name] = value`` did);
* counts and times the request by method, route *template* and status
  (:meth:`~openred.web.metrics.Metrics.observe_request`) just before the answer's first line
  leaves, so a scrape that follows an answer always counts it.

The route template is the rule Quart matched: :class:`~openred.web.problems.JsonRequest`
records it in the ASGI scope (``openred.route``; None when nothing matched). A request that
never became a Quart request (an ASGI fast path inside, such as the node's P2P calls) is
matched against the app's URL map here, so the label is the same rule Quart would have
matched, never the raw path.

This replaces four Quart ``before_request``/``after_request`` functions, which cost a call
each through Quart's hook machinery on every request and, being request hooks, made the
node's P2P fast path step aside for every call.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any, Final

from werkzeug.exceptions import HTTPException

from openred.web.logging import _REQUEST_ID, _VALID_ID

if TYPE_CHECKING:
    from quart import Quart

    from openred.web.metrics import Metrics

__all__ = ["MIDDLEWARE_EXTENSION", "ROUTE_SCOPE_KEY", "RequestMiddleware", "request_middleware"]

MIDDLEWARE_EXTENSION: Final = "openred.request_middleware"
ROUTE_SCOPE_KEY: Final = "openred.route"
"""Scope key where :class:`~openred.web.problems.JsonRequest` leaves the matched rule."""

_HEADER: Final = b"x-request-id"
_MAX_ROUTES: Final = 4096

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]


class RequestMiddleware:
    """Request id and request metrics for every HTTP request of ``app`` (see the module)."""

    def __init__(self, app: Quart, inner: ASGIApp) -> None:
        self.app = app
        self.inner = inner
        self.request_ids = False
        self.metrics: Metrics | None = None
        self._routes: dict[tuple[str, str], str | None] = {}

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not (self.request_ids or self.metrics is not None):
            await self.inner(scope, receive, send)
            return
        start = time.perf_counter()
        rid: str | None = None
        token = None
        if self.request_ids:
            rid = self._request_id(scope["headers"])
            token = _REQUEST_ID.set(rid)
        metrics = self.metrics

        async def send_wrapper(message: Any) -> None:
            if message["type"] == "http.response.start":
                if rid is not None:
                    message = {**message, "headers": _with_id(message["headers"], rid)}
                if metrics is not None:
                    metrics.observe_request(scope["method"], self._route(scope),
                                            message["status"], time.perf_counter() - start)
            await send(message)

        try:
            await self.inner(scope, receive, send_wrapper)
        finally:
            if token is not None:
                _REQUEST_ID.reset(token)

    @staticmethod
    def _request_id(headers: Any) -> str:
        """The first ``X-Request-Id`` line when it is a short token, else a fresh id."""
        for name, value in headers:
            if name == _HEADER or name.lower() == _HEADER:
                given = value.decode("latin1")
                return given if _VALID_ID.fullmatch(given) else secrets.token_urlsafe(12)
        return secrets.token_urlsafe(12)

    def _route(self, scope: Any) -> str | None:
        """The rule Quart matched, or the one it would match (None: nothing matches)."""
        try:
            rule: str | None = scope[ROUTE_SCOPE_KEY]
        except KeyError:
            return self._match(scope["method"], scope["path"])
        return rule

    def _match(self, method: str, path: str) -> str | None:
        key = (method, path)
        try:
            return self._routes[key]
        except KeyError:
            pass
        try:
            adapter = self.app.url_map.bind("localhost")
            rule = adapter.match(path, method, return_rule=True)[0].rule
        except HTTPException:  # 404, 405, a redirect: Quart leaves url_rule None
            rule = None
        if len(self._routes) >= _MAX_ROUTES:
            self._routes.clear()
        self._routes[key] = rule
        return rule


def _with_id(headers: Any, rid: str) -> list[tuple[bytes, bytes]]:
    """``headers`` with ``x-request-id: rid``: the first such line replaced, others dropped."""
    value = rid.encode("latin1")
    out: list[tuple[bytes, bytes]] = []
    placed = False
    for name, old in headers:
        if name.lower() == _HEADER:
            if not placed:
                out.append((_HEADER, value))
                placed = True
            continue
        out.append((name, old))
    if not placed:
        out.append((_HEADER, value))
    return out


def request_middleware(app: Quart) -> RequestMiddleware:
    """The app's :class:`RequestMiddleware`, wrapped around ``app.asgi_app`` on first use."""
    found = app.extensions.get(MIDDLEWARE_EXTENSION)
    if isinstance(found, RequestMiddleware):
        return found
    middleware = RequestMiddleware(app, app.asgi_app)
    app.asgi_app = middleware  # type: ignore[method-assign]
    app.extensions[MIDDLEWARE_EXTENSION] = middleware
    return middleware
