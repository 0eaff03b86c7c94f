"""Quart's ASGI HTTP connection, answering without a task and a timer per response.

Quart sends every answer inside ``asyncio.wait_for(…, RESPONSE_TIMEOUT)``, which wraps the
send in a new task with a timer on every request, and sends an in-memory body as two body
messages (the data, then an empty last one). :class:`HTTPConnection` (installed by
:func:`openred.web.problems.install` as the app's ``asgi_http_class``, the extension point Quart
offers) keeps the same timeout with ``asyncio.timeout`` in the request's own task, and sends an
in-memory body (:class:`~quart.wrappers.response.DataBody`) as one last body message: the same
status, headers and bytes on the wire (tested). Streamed bodies, Werkzeug responses and
everything else take Quart's own code.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

from quart.asgi import ASGIHTTPConnection, _handle_exception
from quart.utils import encode_headers
from quart.wrappers import Request, Response
from quart.wrappers.response import DataBody

__all__ = ["HTTPConnection"]


class HTTPConnection(ASGIHTTPConnection):
    """:class:`quart.asgi.ASGIHTTPConnection` with a cheaper answer (see the module)."""

    async def handle_request(self, request: Request, send: Any) -> None:
        try:
            response = await self.app.handle_request(request)
        except Exception as error:
            response = await _handle_exception(self.app, error)

        if isinstance(response, Response) and response.timeout != Ellipsis:
            timeout = cast(float | None, response.timeout)
        else:
            timeout = self.app.config["RESPONSE_TIMEOUT"]
        try:
            async with asyncio.timeout(timeout):
                await self._send_response(send, response)
        except TimeoutError:
            pass

    async def _send_response(self, send: Any, response: Any) -> None:
        body = getattr(response, "response", None)
        if not isinstance(response, Response) or type(body) is not DataBody:
            await super()._send_response(send, response)
            return
        await send({"type": "http.response.start", "status": response.status_code,
                    "headers": encode_headers(response.headers)})
        async with body:
            data = body.data[body.begin:body.end]
        await send({"type": "http.response.body", "body": data, "more_body": False})
