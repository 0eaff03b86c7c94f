"""Serving a Quart app's hot routes straight from ASGI, with Quart's own answers (shared pieces).

Through Quart every request pays for a request and an app context, URL matching, the session
interface, the request/response wrappers and the hook machinery — about as much CPU as a whole
trivial JSON request — although a hot route only reads its body, checks it, calls a service
and serializes the answer. :class:`FastPath` wraps the app's ASGI callable and serves the
requests a subclass claims (:meth:`FastPath.route`) itself, with the pieces Quart would use:

* :func:`read_body` — the whole body, with Quart's ``BODY_TIMEOUT`` (408) and
  ``MAX_CONTENT_LENGTH`` (413) refusals;
* :func:`request_json` — ``request.get_json()`` of a JSON request (the app's JSON provider on
  the UTF-8 text, :class:`~openred.web.problems.JsonRequest`'s 400s);
* :func:`load_body` / :func:`load_query` / :func:`dump_response` — quart-schema's own
  ``model_load`` / ``model_dump`` with the route's models and the app's quart-schema settings,
  raising quart-schema's own exceptions (as ``validate_request``, ``validate_querystring`` and
  ``validate_response`` do);
* :func:`json_answer` — ``app.json.response(obj)`` with a status, as ASGI status, headers and
  bytes;
* :func:`problem_answer` — the app's registered error handler for any exception, inside an app
  context, through the app's ``make_response`` (RFC 9457 problems, logging of 5xx).

A request is only served here when Quart would do nothing else with it (:func:`ready`): no
request hook, URL value preprocessor, teardown function or request/app-context signal receiver
on the app (so a Quart hook always sees every request), no ``SERVER_NAME``/``TRUSTED_HOSTS``
(Quart matches or refuses by ``Host``), no debug or exception trapping, the default session
interface, and an error handler for ``Exception`` (the problem handler of
:func:`openred.web.problems.install`). Everything else, and every request a subclass does not
claim, goes to Quart unchanged. Request ids and metrics (:mod:`openred.web.middleware`) are an
ASGI middleware around this wrapper, so they see these requests too.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, Final, TypeVar

from quart import Quart
from quart.json.provider import DefaultJSONProvider
from quart.sessions import SecureCookieSessionInterface
from quart.signals import (
    appcontext_popped,
    appcontext_pushed,
    appcontext_tearing_down,
    got_request_exception,
    request_finished,
    request_started,
    request_tearing_down,
)
from quart.utils import encode_headers
from quart_schema import RequestSchemaValidationError
from quart_schema.conversion import model_dump, model_load
from quart_schema.validation import QuerystringValidationError, ResponseSchemaValidationError
from werkzeug.datastructures import ImmutableMultiDict, MultiDict
from werkzeug.exceptions import BadRequest, RequestEntityTooLarge, RequestTimeout

__all__ = [
    "JSON",
    "Answer",
    "Disconnected",
    "FastPath",
    "body_is_plain",
    "compact_default_response",
    "dump_response",
    "hooked",
    "json_answer",
    "json_content",
    "load_body",
    "load_query",
    "parse_json",
    "problem_answer",
    "query_args",
    "read_body",
    "ready",
    "request_json",
    "send_answer",
]

Scope = Any  # ASGI HTTP scope and events, as Hypercorn hands them over
Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]
Answer = tuple[int, list[tuple[bytes, bytes]], bytes]
"""An answer as ASGI sends it: status, headers (lowercase names), body."""
Serve = Callable[[Any, Receive, Send], Awaitable[None]]
"""Serves one claimed request: (the app's services, receive, send)."""

M = TypeVar("M")

JSON: Final = b"application/json"
_SIGNALS: Final = (request_started, request_finished, request_tearing_down,
                   got_request_exception, appcontext_pushed, appcontext_popped,
                   appcontext_tearing_down)


def hooked(app: Quart) -> bool:
    """Whether anything on the app wants to see requests (then Quart serves them all)."""
    config = app.config
    if config.get("SERVER_NAME") or config.get("TRUSTED_HOSTS"):
        return True  # Quart matches or refuses by Host
    if app.debug or config.get("TRAP_HTTP_EXCEPTIONS") or config.get("TRAP_BAD_REQUEST_ERRORS"):
        return True  # exceptions would be trapped or described differently
    for registry in (app.before_request_funcs, app.after_request_funcs,
                     app.teardown_request_funcs, app.url_value_preprocessors):
        if registry:  # a dict of lists by blueprint: look only when something is in it
            for funcs in registry.values():
                if funcs:
                    return True
    if app.teardown_appcontext_funcs:
        return True
    return any(signal.receivers for signal in _SIGNALS)


def ready(app: Quart) -> bool:
    """Whether a claimed request may be served below Quart right now (see the module)."""
    return (not hooked(app) and Exception in app.error_handler_spec[None][None]
            and type(app.session_interface) is SecureCookieSessionInterface)


def body_is_plain(headers: Iterable[tuple[bytes, bytes]], limit: int | None, *,
                  json: bool) -> bool:
    """Whether the request's body is one Quart would simply read whole.

    ``json``: exactly one ``Content-Type: application/json`` and one valid ``Content-Length``
    are required (a POST); otherwise any content type, and no ``Content-Length`` at all is an
    empty body (HTTP/1.1). Never a chunked body, an ``Expect``, or a declared length above
    ``limit`` (Quart answers those 413 before reading).
    """
    length: int | None = None
    content_type = False
    for name, value in headers:
        if name == b"content-length":
            if length is not None or not value.isdigit() or len(value) > 9:
                return False
            length = int(value)
        elif name == b"content-type":
            if json and (content_type or value.lower() != JSON):
                return False
            content_type = True
        elif name in (b"transfer-encoding", b"expect"):
            return False
    if json and (length is None or not content_type):
        return False
    return length is None or limit is None or length <= limit


class Disconnected(Exception):
    """The client went away before its body arrived (nothing is answered)."""


async def read_body(app: Quart, receive: Receive) -> bytes:
    """The whole body, as Quart's request body would hold it.

    ``RequestTimeout`` after ``BODY_TIMEOUT``, ``RequestEntityTooLarge`` once more than
    ``MAX_CONTENT_LENGTH`` bytes arrived (Quart's ``Body``), :class:`Disconnected` if the
    client left.
    """
    limit = app.config["MAX_CONTENT_LENGTH"]
    chunks: list[bytes] = []
    size = 0
    try:
        async with asyncio.timeout(app.config["BODY_TIMEOUT"]):
            while True:
                message = await receive()
                if message["type"] == "http.disconnect":
                    raise Disconnected
                chunk = message.get("body", b"")
                if chunk:
                    size += len(chunk)
                    if limit is not None and size > limit:
                        raise RequestEntityTooLarge()
                    chunks.append(chunk)
                if not message.get("more_body", False):
                    return b"".join(chunks)
    except TimeoutError:
        raise RequestTimeout() from None


def parse_json(app: Quart, body: bytes) -> Any:
    """The app's JSON provider on the UTF-8 text (``ValueError``/``RecursionError`` raised)."""
    return app.json.loads(body.decode())


def request_json(app: Quart, body: bytes) -> Any:
    """``await request.get_json()`` for a request whose content type is JSON.

    As :class:`~openred.web.problems.JsonRequest` over Quart: a body that is not UTF-8 or is
    nested too deep is ``BadRequest("the request body is not valid JSON")``, one the parser
    refuses ``BadRequest()`` (Quart's ``on_json_loading_failed`` outside debug mode).
    """
    try:
        text = body.decode()
    except UnicodeDecodeError as exc:
        raise BadRequest("the request body is not valid JSON") from exc
    try:
        return app.json.loads(text)
    except ValueError:
        raise BadRequest() from None
    except RecursionError as exc:
        raise BadRequest("the request body is not valid JSON") from exc


def load_body(app: Quart, data: Any, model_class: type[M]) -> M:
    """quart-schema's ``validate_request(model_class)`` on parsed JSON ``data``."""
    config = app.config
    return model_load(data, model_class, RequestSchemaValidationError,
                      decamelize=config["QUART_SCHEMA_CONVERT_CASING"],
                      preference=config["QUART_SCHEMA_CONVERSION_PREFERENCE"])


def query_args(query_string: bytes) -> MultiDict[str, str]:
    """Werkzeug's ``request.args`` of a raw query string (``Request.args``, Werkzeug 3)."""
    from urllib.parse import parse_qsl

    return ImmutableMultiDict(parse_qsl(query_string.decode(), keep_blank_values=True,
                                        errors="werkzeug.url_quote"))


def load_query(app: Quart, query_string: bytes, model_class: type[M]) -> M:
    """quart-schema's ``validate_querystring(model_class)`` on a raw query string.

    The arguments are gathered exactly as its decorator gathers them from ``request.args``
    (``key[]`` and repeated keys as lists) and loaded with its ``model_load``.
    """
    args = query_args(query_string)
    request_args: dict[str, Any] = {}
    for key in args:
        if key.endswith("[]"):
            request_args[key.removesuffix("[]")] = args.getlist(key)
        else:
            request_args[key] = (args.getlist(key) if len(args.getlist(key)) > 1
                                 else args[key])
    config = app.config
    return model_load(request_args, model_class, QuerystringValidationError,
                      decamelize=config["QUART_SCHEMA_CONVERT_CASING"],
                      preference=config["QUART_SCHEMA_CONVERSION_PREFERENCE"])


def dump_response(app: Quart, value: Any, model_class: type[Any]) -> Any:
    """quart-schema's ``validate_response(model_class)`` and answer conversion of ``value``."""
    config = app.config
    if type(value) is model_class:
        model = value
    else:
        model = model_load(value, model_class, ResponseSchemaValidationError,
                           preference=config["QUART_SCHEMA_CONVERSION_PREFERENCE"])
    return model_dump(model, camelize=config["QUART_SCHEMA_CONVERT_CASING"],
                      preference=config["QUART_SCHEMA_CONVERSION_PREFERENCE"],
                      pydantic_kwargs=config["QUART_SCHEMA_PYDANTIC_DUMP_OPTIONS"])


def compact_default_response(app: Quart) -> bool:
    """Whether ``app.json.response(obj)`` is the default provider's compact answer.

    Then its bytes are ``f"{app.json.dumps(obj, separators=(',', ':'))}\\n"`` in UTF-8 with
    ``Content-Type: application/json`` (and the length), which :func:`json_answer` builds
    without a Response object.
    """
    provider = app.json
    return (isinstance(provider, DefaultJSONProvider)
            and type(provider).response is DefaultJSONProvider.response
            and provider.mimetype == "application/json" and provider.compact is not False
            and not (provider.compact is None and app.debug))


def json_content(content: bytes, status: int = 200) -> Answer:
    """A JSON answer of ``content`` as :func:`json_answer` sends it (status, headers, body)."""
    return status, [(b"content-type", JSON), (b"content-length", b"%d" % len(content))], content


async def json_answer(app: Quart, obj: Any, status: int = 200) -> Answer:
    """``app.json.response(obj)`` answered with ``status``, as ASGI status, headers and body.

    For a provider whose ``response`` is the default one (quart-schema's only adds a
    ``default`` for its models), in compact mode, these are that method's exact bytes and
    headers — its own ``dumps`` — built without a Response object; any other provider or mode
    goes through its ``response`` itself.
    """
    provider = app.json
    if not compact_default_response(app):
        response: Any = provider.response(obj)
        response.status_code = status
        return (response.status_code, encode_headers(response.headers),
                await response.get_data())
    return json_content(f"{provider.dumps(obj, separators=(',', ':'))}\n".encode(), status)


async def problem_answer(app: Quart, exc: Exception, blueprints: list[str]) -> Answer:
    """The app's error handler's answer to ``exc`` (not the hot path: a full app context)."""
    async with app.app_context():
        handler = app._find_error_handler(exc, blueprints)
        if handler is None:  # not ready without one (see ready)
            raise exc
        rv: Any = await app.ensure_async(handler)(exc)
        response: Any = await app.make_response(rv)
        return (response.status_code, encode_headers(response.headers),
                await response.get_data())


async def send_answer(send: Send, answer: Answer) -> None:
    status, headers, content = answer
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content, "more_body": False})


async def answer_with(app: Quart, send: Send, blueprints: list[str],
                      work: Awaitable[Answer]) -> None:
    """Send what ``work`` answers, or the app's problem for what it raised."""
    try:
        answer = await work
    except Disconnected:
        return
    except Exception as exc:  # rendered by the app's own handler, as Quart would
        answer = await problem_answer(app, exc, blueprints)
    await send_answer(send, answer)


class FastPath:
    """ASGI wrapper serving the requests :meth:`route` claims without Quart (see the module).

    ``enabled`` switches it off (tests force Quart's path with it); ``served`` counts the
    requests it answered.
    """

    def __init__(self, app: Quart, inner: ASGIApp, *, services_key: str) -> None:
        self.app = app
        self.inner = inner
        self.services_key = services_key
        self.enabled = True
        self.served = 0

    def route(self, scope: Scope) -> Serve | None:
        """How to serve this HTTP request, or None to leave it to Quart."""
        raise NotImplementedError

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.enabled and scope["type"] == "http" and not scope.get("root_path"):
            serve = self.route(scope)
            if serve is not None:
                app = self.app
                services = app.extensions.get(self.services_key)
                if services is not None and ready(app):
                    self.served += 1
                    await serve(services, receive, send)
                    return
        await self.inner(scope, receive, send)
