"""RFC 9457 problem details: every error a service answers, in one place (DESIGN §3).

:func:`install` registers one error handler on a Quart app that turns

* :class:`~openred.errors.RequestRefused` (raised by decisions and routes) into its status,
* the rest of the :class:`~openred.errors.OpenRedError` tree into the status of DESIGN §3
  (:data:`STATUS_BY_ERROR`, most specific class first),
* quart-schema's validation errors into 422 (wrong type, missing or unknown field) and a body
  that is not JSON into 400,
* Werkzeug's HTTP errors (404, 405, 413, …) into their own status (a JSON body that does not
  parse — not UTF-8, not JSON, nested too deep — is a 400 through :class:`JsonRequest`),

and anything else into a 500 whose body says nothing about the cause (the traceback goes to the
log only). A failure of the service's own parts (its store, its signer) is a 503 whose detail
is generic too (:data:`INTERNAL_DETAILS`): the error's text goes to the log. Every answer is
``application/problem+json`` with a stable ``type``: ``urn:openred:problem:<slug>``.
:class:`Problem` is the pydantic model routes declare with ``document_response`` so the
OpenAPI document lists every status a route can answer.
"""

from __future__ import annotations

import logging
from types import TracebackType
from typing import Any

from pydantic import BaseModel, ConfigDict
from quart import Quart, Request, Response, has_request_context
from quart.routing import QuartRule
from quart.wrappers.request import Body
from quart_schema import RequestSchemaValidationError
from werkzeug.exceptions import BadRequest, HTTPException
from werkzeug.sansio.utils import get_content_length
from werkzeug.utils import cached_property

from openred import errors
from openred.web.asgi import HTTPConnection
from openred.web.middleware import ROUTE_SCOPE_KEY
from openred.web.schema import cache_type_adapters

__all__ = [
    "LOGGED_BY_PRODUCER",
    "PROBLEM_JSON",
    "STATUS_BY_ERROR",
    "JsonRequest",
    "Problem",
    "install",
    "log_start_failures_in_one_line",
    "problem_response",
    "problem_type",
]

logger = logging.getLogger("openred.web")

PROBLEM_JSON = "application/problem+json"
TYPE_PREFIX = "urn:openred:problem:"
BUSY_RETRY_AFTER = 5
"""Seconds a 503 (busy, signer or store unavailable) asks the client to wait."""

TITLES = {
    400: "Bad Request", 401: "Unauthorized", 403: "Forbidden", 404: "Not Found",
    405: "Method Not Allowed", 409: "Conflict", 410: "Gone", 413: "Content Too Large",
    415: "Unsupported Media Type", 416: "Range Not Satisfiable", 422: "Unprocessable Content",
    429: "Too Many Requests",
    500: "Internal Server Error", 502: "Bad Gateway", 503: "Service Unavailable",
    507: "Insufficient Storage",
}

# (error class, status, slug), most specific first: the first match wins.
STATUS_BY_ERROR: tuple[tuple[type[errors.OpenRedError], int, str], ...] = (
    (errors.RequestSignatureError, 401, "bad-signature"),
    (errors.InvalidSignature, 401, "bad-signature"),
    (errors.UnsafeUrl, 422, "unsafe-url"),
    (errors.InvalidKey, 422, "invalid-key"),
    (errors.ConcurrencyConflict, 409, "conflict"),
    (errors.VerificationError, 422, "unverifiable"),
    (errors.CryptoError, 422, "invalid-crypto"),
    (errors.ServiceBusy, 503, "busy"),
    (errors.PeerUnreachable, 502, "peer-unreachable"),
    (errors.TransportError, 502, "peer-unreachable"),
    (errors.JailError, 503, "signer-unavailable"),
    (errors.StoreError, 503, "store-unavailable"),
)


INTERNAL_DETAILS: dict[str, str] = {
    "signer-unavailable": "the service's signer is unavailable; try again later",
    "store-unavailable": "the service's storage is unavailable; try again later",
}
"""The detail clients get for failures inside the service: their own text (a socket path, a
database file, an exception's words) goes to the operator's log only."""


class Problem(BaseModel):
    """An RFC 9457 problem details object."""

    model_config = ConfigDict(extra="allow")

    type: str
    title: str
    status: int
    detail: str


def problem_type(slug: str) -> str:
    """The stable ``type`` URI of a problem slug."""
    return TYPE_PREFIX + slug


def problem_response(
    status: int, slug: str, detail: str, *, headers: dict[str, str] | None = None,
    extra: dict[str, Any] | None = None,
) -> Response:
    """An ``application/problem+json`` response."""
    body: dict[str, Any] = {
        "type": problem_type(slug),
        "title": TITLES.get(status, "Error"),
        "status": status,
        "detail": detail,
    }
    if extra:
        body.update(extra)
    response = Response(
        _dumps(body), status=status, content_type=PROBLEM_JSON, headers=headers or {}
    )
    return response


def _dumps(body: dict[str, Any]) -> str:
    import json

    text = json.dumps(body, separators=(",", ":"), ensure_ascii=False)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        # A detail naming what the client sent can hold a lone surrogate (JSON's "\ud800"),
        # which UTF-8 cannot carry: the answer became a 500. Escaped, it is valid JSON.
        return json.dumps(body, separators=(",", ":"))
    return text


def classify(exc: BaseException) -> tuple[int, str, str, dict[str, str]]:
    """(status, slug, detail, headers) for an exception (the one mapping, used by the handler)."""
    if isinstance(exc, errors.RequestRefused):
        headers = {}
        if exc.retry_after is not None:
            headers["Retry-After"] = str(max(1, int(exc.retry_after)))
        return exc.status, exc.slug, exc.detail, headers
    if isinstance(exc, RequestSchemaValidationError):
        return 422, "invalid-field", _validation_detail(exc.validation_error), {}
    if isinstance(exc, HTTPException):
        code = exc.code or 500
        headers = {}
        if code == 405 and exc.response is None:
            valid = getattr(exc, "valid_methods", None)
            if valid:
                headers["Allow"] = ", ".join(valid)
        if code == 400:
            return 400, "malformed", "the request body is not valid JSON", headers
        slug = {404: "not-found", 405: "method-not-allowed", 413: "too-large",
                415: "unsupported-media-type"}.get(code, f"http-{code}")
        return code, slug, exc.description or TITLES.get(code, "Error"), headers
    if isinstance(exc, errors.OpenRedError):
        for cls, status, slug in STATUS_BY_ERROR:
            if isinstance(exc, cls):
                # Busy (e.g. one signer's nonce quota is full) clears within seconds.
                headers = {"Retry-After": str(BUSY_RETRY_AFTER)} if status == 503 else {}
                return status, slug, INTERNAL_DETAILS.get(slug, str(exc)), headers
    return 500, "internal", "the server failed to handle this request", {}


_MAX_LOC = 64
"""How much of a field's path a schema refusal quotes (an unknown field's name is the client's)."""


def _validation_detail(error: Exception) -> str:
    errors_fn = getattr(error, "errors", None)
    if callable(errors_fn):
        try:
            items = errors_fn()
        except Exception:
            items = []
        parts = []
        for item in items[:5]:
            loc = ".".join(str(p) for p in item.get("loc", ()))
            if len(loc) > _MAX_LOC:  # a client's field name, as long as its body allows
                loc = loc[:_MAX_LOC] + "…"
            parts.append(f"{loc or 'body'}: {item.get('msg', 'invalid')}")
        if parts:
            return "; ".join(parts)
    return "the request does not match the schema"


def _first(headers: Any, name: str) -> str | None:
    """``headers.get(name)`` without raising for a missing header."""
    values: list[str] = headers.getlist(name)
    return values[0] if values else None


class CompleteBody(Body):
    """Quart's request body, which can say whether it has been received in full."""

    def complete(self) -> bool:
        """Whether the whole body is here (or the request is already refused, e.g. 413)."""
        return self._complete.is_set()


class JsonRequest(Request):
    """Quart's request, whose JSON parsing turns every malformed body into a 400.

    Quart decodes the body as UTF-8 before parsing (UnicodeDecodeError) and the JSON parser
    recurses (RecursionError on ``[[[[…``): neither is a ValueError, so neither reaches Quart's
    own 400 path.

    The rule Quart matches is also left in the ASGI scope (``openred.route``) for the request
    middleware's metrics (:mod:`openred.web.middleware`).

    Reading a body that has fully arrived (almost every request: small bodies come with their
    headers) skips Quart's ``asyncio.wait_for``, which wraps the body in a new task and a timer
    on every read; awaiting a complete body returns at once, with the same bytes and the same
    413 refusal. A body still arriving takes Quart's path, with its timeout.
    """

    body_class = CompleteBody
    _url_rule: QuartRule | None = None

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # The request middleware labels metrics with the rule Quart matched (None: no match).
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        scope[ROUTE_SCOPE_KEY] = None

    @property
    def url_rule(self) -> QuartRule | None:
        """The matched rule; setting it also records its template in the ASGI scope."""
        return self._url_rule

    @url_rule.setter
    def url_rule(self, rule: QuartRule | None) -> None:
        self._url_rule = rule
        scope: dict[str, Any] = self.scope  # type: ignore[assignment]
        scope[ROUTE_SCOPE_KEY] = rule.rule if rule is not None else None

    @cached_property
    def content_length(self) -> int | None:
        r"""Werkzeug's ``content_length``, without its two raised and caught ``KeyError``\ s.

        Werkzeug reads both headers with ``headers.get``, which raises and catches a
        ``BadRequestKeyError`` for each missing one (both, on a GET); the first line of each
        header is the same value ``get`` returns.
        """
        return get_content_length(
            http_content_length=_first(self.headers, "Content-Length"),
            http_transfer_encoding=_first(self.headers, "Transfer-Encoding"),
        )

    async def get_data(  # type: ignore[override]
        self, cache: bool = True, as_text: bool = False, parse_form_data: bool = False
    ) -> str | bytes:
        body = self.body
        if parse_form_data or not isinstance(body, CompleteBody) or not body.complete():
            return await super().get_data(cache, as_text, parse_form_data)
        raw: bytes = await body
        if not cache:
            body.clear()
        return raw.decode() if as_text else raw

    async def get_json(self, force: bool = False, silent: bool = False,
                       cache: bool = True) -> Any:
        try:
            return await super().get_json(force=force, silent=silent, cache=cache)
        except (UnicodeDecodeError, RecursionError) as exc:
            if silent:
                return None
            raise BadRequest("the request body is not valid JSON") from exc


LOGGED_BY_PRODUCER = frozenset({"unhealthy"})
"""5xx slugs whose producer logs them itself, on change: the health checks log their failing
parts when those change (:class:`~openred.modules.monitoring.health.SharedChecks`), not at
every request a probe sends through an outage."""


def install(app: Quart) -> None:
    """Register the one error handler that turns every failure into a problem response."""
    app.request_class = JsonRequest
    app.asgi_http_class = HTTPConnection
    cache_type_adapters()

    @app.errorhandler(Exception)
    async def _handle(exc: Exception) -> Response:
        status, slug, detail, headers = classify(exc)
        if status >= 500:
            if slug == "internal":
                logger.exception("unhandled error", exc_info=exc)
            elif slug not in LOGGED_BY_PRODUCER:  # an internal failure's own text
                logger.warning("%s: %s", slug, exc if slug in INTERNAL_DETAILS else detail)
        extra = exc.extra if isinstance(exc, errors.RequestRefused) else None
        return problem_response(status, slug, detail, headers=headers, extra=extra)


def log_start_failures_in_one_line(app: Quart, what: str) -> None:
    """An operator's error at start (a log the jail's witness refuses, a jail that does not
    start) is logged as one line, "<what> cannot start: <message>", not a traceback; the failed
    start still raises it. Shared by the directory and the node (whose failed start logged a
    30-line traceback before the command's one error line)."""
    log_exception = app.log_exception

    def log(info: tuple[type, BaseException, TracebackType] | tuple[None, None, None]) -> None:
        error = info[1]
        if isinstance(error, errors.OpenRedError) and not has_request_context():
            app.logger.error("%s cannot start: %s", what, error)
        else:
            log_exception(info)

    app.log_exception = log  # type: ignore[method-assign, assignment]
