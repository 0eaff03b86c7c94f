"""The directory's hot routes served straight from ASGI, with Quart's answers (issue 7 speed).

``GET /api/v3/nodes/discover``, ``POST /api/v3/nodes/register``, ``POST /api/v3/nodes/heartbeat``
and ``POST /api/v3/tokens/request-connection`` are what a loaded directory mostly answers.
Through Quart each paid for a request and an app context, URL matching, the session interface,
the wrappers and the hook machinery, on top of the route's own work. :class:`DirectoryFastPath`
(a :class:`~openred.web.fastpath.FastPath`) serves them below Quart with the route's own steps,
in the route's order, each through the same code the Quart route calls:

1. the body (:func:`~openred.web.fastpath.read_body`, Quart's 408/413) and its JSON
   (:func:`~openred.web.fastpath.request_json`, the 400s of
   :class:`~openred.web.problems.JsonRequest`), validated by quart-schema's ``model_load`` with
   the route's model (:func:`~openred.web.fastpath.load_body`; the query of discover with
   :func:`~openred.web.fastpath.load_query`) — the same ``RequestSchemaValidationError``s;
2. the RFC 9421 signature and the rate limits: :func:`~openred.directory.routing.verify_signed`
   or :func:`~openred.directory.routing.verify_registration` (the self-certifying rule) on the
   request as :func:`~openred.web.signatures.scope_http_request` rebuilds it from the ASGI
   scope — the same method, headers and ``@target-uri`` (public URL + raw path + query);
3. the route's function (:func:`~openred.directory.registry.register_record`,
   :func:`~openred.directory.registry.discover_nodes`, the service's ``heartbeat``,
   :func:`~openred.directory.grants.connection_reply` and quart-schema's response validation);
4. the answer through the app's JSON provider, every refusal through the app's own problem
   handler.

Only HTTP/1.1 requests to exactly these paths and methods with a plain body (POST: one
``Content-Type: application/json`` and one valid ``Content-Length`` within the limit; GET: no
``Transfer-Encoding``, no ``Expect``) are claimed; everything else — and everything while a
hook is installed or the service is not open (:func:`~openred.web.fastpath.ready`) — is
Quart's. The Quart routes stay registered (same URL map, same ``/openapi.json``). Tests hold the
two paths to the same status, headers and bytes (``tests/directory/test_fast_routes.py``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final

from quart import Quart

from openred.directory.grants import connection_reply
from openred.directory.registry import discover_nodes, register_record
from openred.directory.routing import EXTENSION, verify_registration, verify_signed
from openred.directory.schemas import (
    ConnectionReply,
    ConnectionRequest,
    DiscoverQuery,
    EmptyBody,
    SignedRecordBody,
)
from openred.directory.service import DirectoryService
from openred.web.fastpath import (
    Answer,
    FastPath,
    Receive,
    Scope,
    Send,
    Serve,
    answer_with,
    body_is_plain,
    dump_response,
    json_answer,
    load_body,
    load_query,
    read_body,
    request_json,
)
from openred.web.middleware import ROUTE_SCOPE_KEY
from openred.web.signatures import scope_http_request

__all__ = ["FAST_ROUTES", "DirectoryFastPath", "install_fast_routes"]

FAST_ROUTES: Final = "openred.directory.fast_routes"

Handler = Callable[[DirectoryService, Scope, Receive], Any]


class DirectoryFastPath(FastPath):
    """Serves the directory's hot routes below Quart (see the module)."""

    def __init__(self, app: Quart, inner: Any) -> None:
        super().__init__(app, inner, services_key=EXTENSION)
        handlers: dict[str, Handler] = {
            "registry.discover": self._discover, "registry.register": self._register,
            "registry.heartbeat": self._heartbeat,
            "grants.request_connection": self._request_connection,
        }
        # (method, path) → (handler, blueprint, rule): taken from the app's URL map, so the
        # paths, the blueprint the error handler is looked up under and the metrics' route
        # label are the ones Quart would use.
        adapter = app.url_map.bind("localhost")
        self.routes: dict[tuple[str, str], tuple[Handler, str, str]] = {}
        for rule in app.url_map.iter_rules():
            handler = handlers.get(rule.endpoint)
            if handler is None:
                continue
            method = "GET" if "GET" in (rule.methods or ()) else "POST"
            matched, _ = adapter.match(rule.rule, method)
            if matched != rule.endpoint:  # another rule would win: leave it to Quart
                continue
            self.routes[(method, rule.rule)] = (handler, rule.endpoint.split(".")[0], rule.rule)

    def route(self, scope: Scope) -> Serve | None:
        method = scope["method"]
        found = self.routes.get((method, scope["path"]))
        if found is None or scope["http_version"] != "1.1" or not body_is_plain(
                scope["headers"], self.app.config["MAX_CONTENT_LENGTH"],
                json=method == "POST"):
            return None
        handler, blueprint, rule = found
        app = self.app

        async def serve(services: Any, receive: Receive, send: Send) -> None:
            scope[ROUTE_SCOPE_KEY] = rule  # what Quart's matched rule would have recorded
            await answer_with(app, send, [blueprint], handler(services, scope, receive))

        return serve

    def _request(self, svc: DirectoryService, scope: Scope, body: bytes) -> Any:
        return scope_http_request(svc.verifier.public_url, scope, body)

    async def _discover(self, svc: DirectoryService, scope: Scope, receive: Receive) -> Answer:
        app = self.app
        query = load_query(app, scope["query_string"], DiscoverQuery)
        body = await read_body(app, receive)
        signer = await verify_signed(svc, self._request(svc, scope, body))
        return await json_answer(app, await discover_nodes(svc, query, signer))

    async def _register(self, svc: DirectoryService, scope: Scope, receive: Receive) -> Answer:
        app = self.app
        body = await read_body(app, receive)
        data = load_body(app, request_json(app, body), SignedRecordBody)
        client = scope.get("client") or ["<local>"]
        signer = await verify_registration(svc, self._request(svc, scope, body), data,
                                           str(client[0]))
        item, status = await register_record(svc, data, signer)
        return await json_answer(app, item, status)

    async def _heartbeat(self, svc: DirectoryService, scope: Scope, receive: Receive) -> Answer:
        app = self.app
        body = await read_body(app, receive)
        load_body(app, request_json(app, body), EmptyBody)
        signer = await verify_signed(svc, self._request(svc, scope, body))
        return await json_answer(app, await svc.heartbeat(signer=signer))

    async def _request_connection(self, svc: DirectoryService, scope: Scope,
                                  receive: Receive) -> Answer:
        app = self.app
        body = await read_body(app, receive)
        data = load_body(app, request_json(app, body), ConnectionRequest)
        signer = await verify_signed(svc, self._request(svc, scope, body))
        client = scope.get("client") or ["<local>"]
        reply = dump_response(app, await connection_reply(svc, data, signer, str(client[0])),
                              ConnectionReply)
        return await json_answer(app, reply, 201)


def install_fast_routes(app: Quart) -> DirectoryFastPath:
    """Wrap ``app``'s ASGI callable with :class:`DirectoryFastPath` (in ``app.extensions``).

    Call it once the routes are registered and before any ASGI middleware that must see every
    request (request ids and metrics wrap it when serving starts).
    """
    fast = DirectoryFastPath(app, app.asgi_app)
    app.asgi_app = fast  # type: ignore[method-assign]
    app.extensions[FAST_ROUTES] = fast
    return fast
