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
installed on the app, so a Quart hook always sees every request (:func:`openred.web.fastpath.
ready`). Request ids and request metrics (:mod:`openred.web.middleware`) are an ASGI
middleware around this wrapper, so they see the fast path's calls too. The generic pieces
(eligibility, body reading, answers, problems) are :mod:`openred.web.fastpath`'s, shared with
the directory's fast routes.
"""

from __future__ import annotations

import re
from typing import Any, Final

from quart import Quart
from quart.json.provider import DefaultJSONProvider

from openred.errors import NodeRefused
from openred.node.batch import BATCH_PATH, Render
from openred.node.envelope import Envelope, Route
from openred.web.fastpath import (
    Answer,
    FastPath,
    Receive,
    Scope,
    Send,
    Serve,
    answer_with,
    body_is_plain,
    compact_default_response,
    hooked,
    json_answer,
    json_content,
    parse_json,
    problem_answer,
    read_body,
)

__all__ = ["FastP2P", "install_fast_p2p", "problem_renderer"]

BLUEPRINT: Final = "node"
_PATH: Final = re.compile(r"/api/v3/p2p/([a-z][a-z0-9_]{0,31})/([a-z][a-z0-9_]{0,31})")
_hooked = hooked  # its former name here (tests import it)


class FastP2P(FastPath):
    """ASGI wrapper serving eligible encrypted P2P calls without Quart's request machinery."""

    def route(self, scope: Scope) -> Serve | None:
        if scope["method"] != "POST" or scope.get("query_string"):
            return None
        path = scope["path"]
        match = _PATH.fullmatch(path)
        if (match is None and path != BATCH_PATH) or not body_is_plain(
                scope["headers"], self.app.config["MAX_CONTENT_LENGTH"], json=True):
            return None
        if match is None:
            async def serve_batch(services: Any, receive: Receive, send: Send) -> None:
                await answer_with(self.app, send, [BLUEPRINT], self._batch(services, receive))

            return serve_batch
        module, action = match[1], match[2]

        async def serve(services: Any, receive: Receive, send: Send) -> None:
            await answer_with(self.app, send, [BLUEPRINT],
                              self._call(services, module, action, receive))

        return serve

    async def _call(self, services: Any, module: str, action: str,
                    receive: Receive) -> Answer:
        body = await read_body(self.app, receive)
        route = Route(module, action)
        envelope = await services.handle(route, self._json(body))
        return await envelope_answer(self.app, envelope)

    async def _batch(self, services: Any, receive: Receive) -> Answer:
        """``POST /api/v3/p2p/batch`` (:mod:`openred.node.batch`), as the Quart route."""
        body = self._json(await read_body(self.app, receive))
        answers = await services.handle_batch(body, problem_renderer(self.app))
        return await json_answer(self.app, {"answers": answers})

    def _json(self, body: bytes) -> object:
        """``JsonRequest.get_json(force=True, silent=True)`` and the route's None check."""
        try:
            parsed = parse_json(self.app, body)
        except (ValueError, RecursionError):  # UnicodeDecodeError is a ValueError
            parsed = None
        if parsed is None:
            raise NodeRefused(400, "malformed", "the request body is not JSON")
        return parsed


async def envelope_answer(app: Quart, envelope: Envelope) -> Answer:
    """``json_answer(app, envelope.to_json())``: the same status, headers and bytes.

    With the default JSON provider's own ``dumps`` and compact answers (sorted keys or not),
    an envelope of the wire format is written directly (:meth:`Envelope.to_json_bytes`, pure
    ASCII, so ``ensure_ascii`` changes nothing) instead of a dict through ``json.dumps`` with
    a new encoder for every answer; anything else goes through :func:`json_answer` (tested
    byte for byte in ``tests/node/test_fastpath.py``).
    """
    provider = app.json
    if (envelope.plain and isinstance(provider, DefaultJSONProvider)
            and compact_default_response(app)
            and type(provider).dumps is DefaultJSONProvider.dumps
            and type(provider.sort_keys) is bool):
        return json_content(envelope.to_json_bytes(sort_keys=provider.sort_keys) + b"\n")
    return await json_answer(app, envelope.to_json())


def problem_renderer(app: Quart) -> Render:
    """A batch call's refusal as its own route answers it: the app's problem handler."""

    async def render(exc: Exception) -> tuple[int, bytes]:
        status, _, content = await problem_answer(app, exc, [BLUEPRINT])
        return status, content

    return render


def install_fast_p2p(app: Quart, services_key: str) -> FastP2P:
    """Wrap ``app``'s ASGI callable with :class:`FastP2P` (kept in ``app.extensions``)."""
    fast = FastP2P(app, app.asgi_app, services_key=services_key)
    app.asgi_app = fast  # type: ignore[method-assign]
    app.extensions[FAST_P2P] = fast
    return fast


FAST_P2P: Final = "openred.node.fast_p2p"
