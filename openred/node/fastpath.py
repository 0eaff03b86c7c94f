"""The encrypted P2P call served straight from ASGI, with Quart's answers (DESIGN §6, §10).

``POST /api/v3/p2p/<module>/<action>`` is the node's hot path: every message is one. Through
Quart each call paid for a request and an app context, URL matching, the session interface,
the request/response wrappers and quart-schema's response validation — about as much CPU as
the whole plain JSON POST of the issue's baseline — although the route only parses the body,
calls :meth:`~openred.node.services.NodeServices.handle` and serializes the answer, and needs
none of that machinery.

:class:`FastP2P` wraps the app's ASGI callable. A request it can serve exactly like Quart would
(below) it serves itself, with the *same* code for everything that matters: the same
:class:`~openred.node.envelope.Route` check, the same JSON parsing (the app's JSON provider on
the UTF-8 text, as :class:`~openred.web.problems.JsonRequest` does), the same
:meth:`NodeServices.handle` (strict envelope parsing, session cache, AEAD, replay window,
handler, durable append before the answer), the app's JSON provider for the answer, and the
app's own registered error handler for every refusal (RFC 9457 problems, logging of 5xx). Tests
hold the two paths to the same status, headers and bytes for answers and refusals alike.

Anything else goes to Quart unchanged: another method or path, a query string, a body that is
not ``application/json`` with one valid ``Content-Length`` within ``MAX_CONTENT_LENGTH``
(chunked bodies, ``Expect: 100-continue``, oversized bodies — Quart answers those 413), a root
path, services not open yet, no error handler for ``Exception`` on the app (the problem
handler of :func:`openred.web.problems.install`), and — checked on every request — a
``SERVER_NAME`` or ``TRUSTED_HOSTS`` setting (Quart matches or refuses by ``Host``), any
request hook, ``url_value_preprocessor``, teardown function or request signal receiver
installed on the app, so a Quart hook always sees every request. Request ids and request
metrics (:mod:`openred.web.middleware`) are an ASGI middleware around this wrapper, so they
see the fast path's calls too.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final

from quart import Quart
from quart.json.provider import DefaultJSONProvider
from quart.signals import (
    got_request_exception,
    request_finished,
    request_started,
    request_tearing_down,
)
from quart.utils import encode_headers
from werkzeug.exceptions import RequestTimeout

from openred.errors import NodeRefused
from openred.node.envelope import Route

__all__ = ["FastP2P", "install_fast_p2p"]

Scope = Any  # ASGI HTTP scope and events, as Hypercorn hands them over
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

BLUEPRINT: Final = "node"
_PATH: Final = re.compile(r"/api/v3/p2p/([a-z][a-z0-9_]{0,31})/([a-z][a-z0-9_]{0,31})")
_JSON: Final = b"application/json"
_SIGNALS: Final = (request_started, request_finished, request_tearing_down,
                   got_request_exception)


def _hooked(app: Quart) -> bool:
    """Whether anything on the app wants to see requests (then Quart serves them all)."""
    if app.config.get("SERVER_NAME") or app.config.get("TRUSTED_HOSTS"):
        return True  # Quart matches or refuses by Host
    for registry in (app.before_request_funcs, app.after_request_funcs,
                     app.teardown_request_funcs, app.url_value_preprocessors):
        if any(registry.values()):
            return True
    return any(signal.receivers for signal in _SIGNALS)


def _body_length(headers: Iterable[tuple[bytes, bytes]], limit: int | None) -> int | None:
    """The body length if the request is a plain JSON body Quart would read whole, else None."""
    length: int | None = None
    content_type = False
    for name, value in headers:
        if name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 9:
                return None
            length = int(value)
        elif name == b"content-type":
            if content_type or value.lower() != _JSON:
                return None
            content_type = True
        elif name in (b"transfer-encoding", b"expect"):
            return None
    if length is None or not content_type or (limit is not None and length > limit):
        return None
    return length


class FastP2P:
    """ASGI wrapper serving eligible encrypted P2P calls without Quart's request machinery."""

    def __init__(self, app: Quart, inner: ASGIApp, *, services_key: str) -> None:
        self.app = app
        self.inner = inner
        self.services_key = services_key
        self.enabled = True
        self.served = 0  # how many calls this path answered (tests read it)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.enabled and scope["type"] == "http" and scope["method"] == "POST":
            match = _PATH.fullmatch(scope["path"])
            if match is not None and not scope.get("query_string") and not scope.get(
                "root_path"
            ):
                app = self.app
                length = _body_length(scope["headers"], app.config["MAX_CONTENT_LENGTH"])
                services = app.extensions.get(self.services_key)
                if (length is not None and services is not None and not _hooked(app)
                        and Exception in app.error_handler_spec[None][None]):
                    self.served += 1
                    await self._serve(services, match[1], match[2], receive, send)
                    return
        await self.inner(scope, receive, send)

    async def _serve(self, services: Any, module: str, action: str, receive: Receive,
                     send: Send) -> None:
        try:
            body = await self._body(receive)
        except _Disconnected:
            return
        try:
            if body is None:
                raise RequestTimeout()
            route = Route(module, action)
            envelope = await services.handle(route, self._json(body))
            status, headers, content = await self._answer(envelope.to_json())
        except Exception as exc:  # rendered by the app's own handler, as Quart would
            response = await self._problem(exc)
            status, headers = response.status_code, encode_headers(response.headers)
            content = await response.get_data()
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": content, "more_body": False})

    async def _answer(self, obj: dict[str, Any]) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
        """``app.json.response(obj)`` as ASGI status, headers and body.

        For a provider whose ``response`` is the default one (quart-schema's only adds a
        ``default`` for its models), in compact mode, these are that method's exact bytes and
        headers — its own ``dumps`` — built without a Response object (a quarter of the cost);
        any other provider or mode goes through its ``response`` itself.
        """
        provider = self.app.json
        if (not isinstance(provider, DefaultJSONProvider)
                or type(provider).response is not DefaultJSONProvider.response
                or provider.mimetype != "application/json" or provider.compact is False
                or (provider.compact is None and self.app.debug)):
            response: Any = provider.response(obj)
            return (response.status_code, encode_headers(response.headers),
                    await response.get_data())
        content = f"{provider.dumps(obj, separators=(',', ':'))}\n".encode()
        return 200, [(b"content-type", _JSON), (b"content-length", b"%d" % len(content))], content

    async def _body(self, receive: Receive) -> bytes | None:
        """The whole body (None after Quart's ``BODY_TIMEOUT``)."""
        chunks: list[bytes] = []
        try:
            async with asyncio.timeout(self.app.config["BODY_TIMEOUT"]):
                while True:
                    message = await receive()
                    if message["type"] == "http.disconnect":
                        raise _Disconnected
                    chunks.append(message.get("body", b""))
                    if not message.get("more_body", False):
                        return b"".join(chunks)
        except TimeoutError:
            return None

    def _json(self, body: bytes) -> object:
        """``JsonRequest.get_json(force=True, silent=True)`` and the route's None check."""
        try:
            parsed = self.app.json.loads(body.decode())
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            parsed = None
        if parsed is None:
            raise NodeRefused(400, "malformed", "the request body is not JSON")
        return parsed

    async def _problem(self, exc: Exception) -> Any:
        """The app's error handler's answer (refusals are not the hot path: a full context)."""
        app = self.app
        async with app.app_context():
            handler = app._find_error_handler(exc, [BLUEPRINT])
            if handler is None:  # not eligible without one (see __call__)
                raise exc
            rv: Any = await app.ensure_async(handler)(exc)
            return await app.make_response(rv)


class _Disconnected(Exception):
    """The client went away before its body arrived."""


def install_fast_p2p(app: Quart, services_key: str) -> FastP2P:
    """Wrap ``app``'s ASGI callable with :class:`FastP2P` (kept in ``app.extensions``)."""
    fast = FastP2P(app, app.asgi_app, services_key=services_key)
    app.asgi_app = fast  # type: ignore[method-assign]
    app.extensions[FAST_P2P] = fast
    return fast


FAST_P2P: Final = "openred.node.fast_p2p"
