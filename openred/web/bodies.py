"""Answers that leave a kept-alive HTTP/1.1 connection usable, or say that it closes.

Hypercorn (0.18, h11) keeps a connection for the next request only once the current request's
whole body has arrived. An app may answer earlier: Quart answers 413 for a declared length
above ``MAX_CONTENT_LENGTH`` before reading anything, a route that never reads a body (a GET
sent with one), a 404, a 405, a 401 or 403 before the body is looked at; the fast paths'
:func:`~openred.web.fastpath.read_body` stops at the limit. Quart's own reader of the body is
cancelled as soon as the answer is sent. Hypercorn then closes the connection right after the
answer, although the answer did not say so (RFC 9112 §9.6: a sender SHOULD send
``Connection: close`` when it intends to close). A client keeps such a connection in its pool,
and its next request, sent before the close reaches it, gets no answer at all (Python's
``RemoteDisconnected: Remote end closed connection without response``); a request pipelined
behind the body is lost the same way.

:class:`WholeBodies` (wrapped around every served app by
:func:`openred.web.serve.serve_app`) watches the request's body messages on their way to the
app. When an answer starts before the last one was received, it first receives the rest of the
body itself and drops it — messages the app's own reader takes count too — at most
:data:`DRAIN_BYTES` (or the app's ``MAX_CONTENT_LENGTH``, if larger) of body in all, within
:data:`DRAIN_SECONDS`; then Hypercorn keeps the connection and the next request is answered. A
declared length above that, a larger body or a body that does not arrive in time is not waited
for: the answer gets ``Connection: close`` and the client knows to send its next request on a
new connection. Nothing else changes: the same status, headers and body. The wrapper costs
about 1.5 µs per request (an app that reads its body, or a fast path answering a GET without
reading: its empty last message is taken from Hypercorn's queue without waiting).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Final

__all__ = ["DRAIN_BYTES", "DRAIN_SECONDS", "WholeBodies"]

DRAIN_BYTES: Final = 1024 * 1024
"""The most body (read by the app and here together) received before an early answer, unless
the app's ``MAX_CONTENT_LENGTH`` is larger: above every service's default limit (the node's
384 KiB, its admin API's 256 KiB, the directory's 64 KiB). Quart's own reader reads an
over-long body to its end (dropping it) while the route runs."""
DRAIN_SECONDS: Final = 2.0
"""How long an early answer waits for the rest of its request's body (a loopback body of a
megabyte arrives in milliseconds, even on a loaded machine)."""

Receive = Callable[[], Awaitable[Any]]
Send = Callable[[Any], Awaitable[None]]
ASGIApp = Callable[[Any, Receive, Send], Awaitable[None]]

_CLOSE: Final = (b"connection", b"close")


class WholeBodies:
    """ASGI wrapper: an answer is sent once its request's body was received, or says that the
    connection closes (see the module)."""

    def __init__(self, app: ASGIApp, *, drain_bytes: int = DRAIN_BYTES,
                 drain_seconds: float = DRAIN_SECONDS) -> None:
        self.app = app
        self.drain_bytes = drain_bytes
        self.drain_seconds = drain_seconds

    async def __call__(self, scope: Any, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        exchange = _Exchange(self, scope, receive, send)
        await self.app(scope, exchange.receive, exchange.send)


class _Exchange:
    """One HTTP request's body messages and answer (see the module)."""

    __slots__ = ("_arrived", "_owner", "_receive", "_scope", "_send", "complete", "reading",
                 "received")

    def __init__(self, owner: WholeBodies, scope: Any, receive: Receive, send: Send) -> None:
        self._owner = owner
        self._scope = scope
        self._receive = receive
        self._send = send
        self._arrived: asyncio.Event | None = None
        self.complete = False
        """The last body message (or ``http.disconnect``) was received."""
        self.reading = 0
        """Receives in flight (the app's reader, or this exchange's own)."""
        self.received = 0
        """Body bytes received so far."""

    async def receive(self) -> Any:
        self.reading += 1
        try:
            message = await self._receive()
        finally:
            self.reading -= 1
        self._note(message)
        return message

    def _note(self, message: Any) -> None:
        if message["type"] == "http.request":
            self.received += len(message.get("body", b""))
            if not message.get("more_body", False):
                self.complete = True
        else:  # http.disconnect: nothing more comes
            self.complete = True
        if self._arrived is not None:
            self._arrived.set()

    async def send(self, message: Any) -> None:
        if (not self.complete and message["type"] == "http.response.start"
                and not await self._finish()):
            message = {**message, "headers": [*message.get("headers", ()), _CLOSE]}
        await self._send(message)

    async def _finish(self) -> bool:
        """Receive the rest of the body (see the module); whether it all arrived."""
        # Hypercorn's receive is its queue's ``get``: what has arrived already (a GET's empty
        # last message, a small body) is taken without a timer (a fast path answering a GET
        # without reading costs a microsecond, not eight). Any other receive: the loop below.
        most = self._owner.drain_bytes
        queue = getattr(self._receive, "__self__", None)
        if isinstance(queue, asyncio.Queue):
            while not self.complete and self.received <= most and not queue.empty():
                self._note(queue.get_nowait())
            if self.complete:
                return True
        declared = _declared_length(self._scope["headers"])
        if declared is not None and declared > most:
            return False
        try:
            async with asyncio.timeout(self._owner.drain_seconds):
                while not self.complete:
                    if self.received > most:
                        return False
                    if self.reading:
                        # The app's reader (Quart's, in its own task) is waiting for the next
                        # message: two readers would each take some; wait for what it takes.
                        self._arrived = arrived = asyncio.Event()
                        await arrived.wait()
                    else:
                        await self.receive()
        except TimeoutError:
            return False
        return True


def _declared_length(headers: Any) -> int | None:
    """The ``Content-Length`` the request declared (h11 has checked it is one number)."""
    for name, value in headers:
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
