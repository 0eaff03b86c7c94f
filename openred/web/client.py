"""The one pooled outbound HTTP client of a process (DESIGN §10, issue 7 §5).

One aiohttp ``ClientSession`` per process: keep-alive connections, a bounded pool (in total and
per host), connect and total timeouts, no cookies, no content coding (answers are never
inflated: :data:`IDENTITY_ONLY`), no redirects followed, and a resolver that refuses addresses the
service must not call (:class:`~openred.web.urls.SafeResolver`). Requests that carry authority
are signed with RFC 9421 through the caller's ``sign_base`` (the crypto jail), with a fresh
``created`` and nonce on every attempt. Transport failures and 502/503/504 answers are retried
with exponential backoff and jitter; after the last attempt a transport failure becomes
:class:`~openred.errors.PeerUnreachable` — aiohttp's exceptions are translated here and nowhere
else. Any HTTP answer that is not retried is returned as a :class:`Reply` for the caller to
judge.

Idle connections are kept half as long as OpenRed's servers keep them
(:data:`POOL_IDLE_SECONDS`), and a request whose reused connection the server closed before
any byte of the answer came is sent once more, the same bytes, on a new connection, inside the
same attempt (:func:`_send_again_on_stale`; every user of the session, the P2P calls of
:meth:`HttpClient.session_for` too).
"""

from __future__ import annotations

import asyncio
import contextvars
import errno
import functools
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.client_proto import ResponseHandler

from openred.crypto.httpsig import HttpRequest, SignBase, new_nonce, sign_request
from openred.errors import OpenRedError, PeerUnreachable, TransportError
from openred.web.serve import SERVER_KEEP_ALIVE_SECONDS
from openred.web.urls import SafeResolver, check_address, check_url_syntax

__all__ = ["HttpClient", "Reply", "Signer", "describe"]

RETRY_STATUSES = frozenset({502, 503, 504})
_UNDONE_STATUSES = frozenset({503})
"""What a request that must not be acted on twice is retried on (``replayable=False``)."""
MAX_REPLY_BYTES = 1 << 20
IDENTITY_ONLY: Mapping[str, str] = {"Accept-Encoding": "identity"}
"""Sent with every request, and answers are never decompressed: an answer's bound (its
Content-Length, or the bytes read) is then the bound of what it occupies. aiohttp offered gzip,
deflate (and br, zstd) and inflated what came; a caller that read an answer of known length
whole got 1 GiB from a 1 MiB answer of gzip. No OpenRed server compresses; a compressed answer
now reads as bytes that are not JSON (a transport failure)."""
POOL_IDLE_SECONDS: float = SERVER_KEEP_ALIVE_SECONDS / 2
"""Seconds the pool keeps an idle connection for reuse: half as long as OpenRed's servers
(:data:`~openred.web.serve.SERVER_KEEP_ALIVE_SECONDS`). The server's idle time starts when its
answer is out, the pool's when the answer was read, so with the same 30 s a connection idle
for just under 30 s by the pool's clock was over 30 s by the server's, and a request sent on
it met the server's close. A connection another server or a proxy closes sooner is what
:func:`_send_again_on_stale` is for."""
_CHECKED_URLS_MAX = 4096
"""Outbound URLs whose syntax and literal address passed, remembered per client (bounded)."""


MAX_INFORMATIONAL = 8
"""1xx answers taken before the real one (a server sends one or two: 100, 103)."""


class _Response(aiohttp.ClientResponse):
    """aiohttp's response, reading at most :data:`MAX_INFORMATIONAL` 1xx answers.

    aiohttp reads any number of them before the final answer: a server sending ``100
    Continue`` without end kept the event loop parsing them at full CPU until the request's
    timeout (the directory's pushes, the node's calls). Past the bound the answer is a
    ``ClientResponseError`` like any answer aiohttp cannot parse, and the connection is closed.
    """

    async def start(self, connection: Any) -> aiohttp.ClientResponse:
        protocol = connection.protocol
        read = protocol.read
        seen = 0

        async def bounded() -> Any:
            nonlocal seen
            message, payload = await read()
            if 100 <= message.code < 200 and message.code != 101:
                seen += 1
                if seen > MAX_INFORMATIONAL:
                    raise aiohttp.ClientResponseError(
                        self.request_info, (), status=message.code,
                        message=f"more than {MAX_INFORMATIONAL} informational (1xx) answers")
            return message, payload

        protocol.read = bounded
        try:
            return await super().start(connection)
        finally:
            del protocol.read


class _Handler(ResponseHandler):
    """aiohttp's protocol of one connection, counting its requests and the answer's bytes."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        super().__init__(loop)
        self.requests = 0
        self.answer_bytes = 0

    def set_response_params(self, **kwargs: Any) -> None:
        # aiohttp calls this once per request, before writing it on this connection.
        self.requests += 1
        self.answer_bytes = 0
        _SENT_ON.set(self)
        super().set_response_params(**kwargs)

    def data_received(self, data: bytes) -> None:
        self.answer_bytes += len(data)
        super().data_received(data)


_SENT_ON: contextvars.ContextVar[_Handler | None] = contextvars.ContextVar(
    "openred_sent_on", default=None)
"""The connection the current task's request was last written on."""
_NEW_CONNECTION: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "openred_new_connection", default=False)
"""Set while a request is sent again after a stale connection: no pooled one is taken."""
_CLOSED_ERRNOS = frozenset({errno.ECONNRESET, errno.EPIPE, errno.ECONNABORTED})


class _Connector(aiohttp.TCPConnector):
    """aiohttp's connector, with :class:`_Handler` connections, that takes no pooled connection
    while :data:`_NEW_CONNECTION` is set (the request sent again after a stale one)."""

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        # aiohttp's own protocol factory (a private attribute since 3.0), for _Handler.
        self._factory = functools.partial(_Handler, loop=self._loop)  # type: ignore[assignment]

    async def _get(self, *args: Any, **kwargs: Any) -> Any:
        if _NEW_CONNECTION.get():
            return None
        return await super()._get(*args, **kwargs)


def _closed_unanswered(exc: BaseException, sent_on: _Handler | None) -> bool:
    """Whether ``exc`` is a REUSED connection closed before any byte of the answer came."""
    if sent_on is None or sent_on.requests < 2 or sent_on.answer_bytes:
        return False
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return True
    return isinstance(exc, ConnectionResetError) or (
        isinstance(exc, OSError) and exc.errno in _CLOSED_ERRNOS)


async def _send_again_on_stale(
    req: aiohttp.ClientRequest,
    handler: Callable[[aiohttp.ClientRequest], Awaitable[aiohttp.ClientResponse]],
) -> aiohttp.ClientResponse:
    """Session middleware: a request whose reused pooled connection closed before any byte of
    the answer came is sent once more, the same bytes, on a new connection.

    That close is the stale-connection race (the server closed the idle connection as the
    request went out: it did not act on it); browsers do the same. The same bytes: a signed
    request carries the same nonce, so in the rare case the server did act on it and then
    closed without a word, the verifier refuses the second copy as a replay (401) — a new
    signature would have it acted on twice. Any byte of an answer, a timeout, a connection
    that was new: never sent again here. Inside the one ``session.request`` call, so within
    its total timeout, and not an attempt of :meth:`HttpClient.request`. When the new
    connection cannot even be made, the first failure is the attempt's (the request was sent
    once: not "no connection was made").
    """
    token = _SENT_ON.set(None)
    try:
        try:
            return await handler(req)
        except (aiohttp.ClientConnectionError, OSError) as exc:
            if not _closed_unanswered(exc, _SENT_ON.get()) or getattr(
                    req.body, "consumed", False):
                raise
            first = exc
    finally:
        _SENT_ON.reset(token)
    await req.close()  # the first write's task, ended
    fresh, token = _NEW_CONNECTION.set(True), _SENT_ON.set(None)
    try:
        return await handler(req)
    except aiohttp.ClientConnectorError:
        raise first from None
    finally:
        _NEW_CONNECTION.reset(fresh)
        _SENT_ON.reset(token)


@dataclass(frozen=True, slots=True)
class Signer:
    """Who signs outbound requests: the ``keyid`` and the jail's signature-base signer."""

    keyid: str
    sign_base: SignBase


@dataclass(frozen=True, slots=True)
class Reply:
    """An HTTP answer: status, headers and body (parsed as JSON when it is JSON)."""

    status: int
    headers: Mapping[str, str]
    body: bytes

    def json(self) -> Any:
        """The body parsed as JSON; TransportError if it is not."""
        try:
            return json.loads(self.body)
        except (ValueError, RecursionError) as exc:  # nesting deeper than the parser goes
            raise TransportError(f"answer with status {self.status} is not JSON") from exc

    @property
    def ok(self) -> bool:
        return 200 <= self.status < 300


class HttpClient:
    """Pooled, signed, retried outbound HTTP for one process."""

    def __init__(
        self,
        *,
        signer: Signer | None = None,
        allow_private: bool = False,
        limit: int = 100,
        limit_per_host: int = 16,
        connect_timeout: float = 3.0,
        total_timeout: float = 10.0,
        attempts: int = 3,
        backoff: float = 0.1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.signer = signer
        self.allow_private = allow_private
        self.attempts = max(1, attempts)
        self.backoff = backoff
        self.clock = clock
        self._limit = limit
        self._limit_per_host = limit_per_host
        self._timeout = aiohttp.ClientTimeout(total=total_timeout, connect=connect_timeout)
        self._session: aiohttp.ClientSession | None = None
        # URLs that passed _check: the check is a pure function of the URL and allow_private
        # (fixed for this client); names are still checked by SafeResolver at each connection.
        self._checked: set[tuple[bool, str]] = set()

    async def __aenter__(self) -> HttpClient:
        self._ensure()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    def _ensure(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = _Connector(
                limit=self._limit, limit_per_host=self._limit_per_host,
                resolver=SafeResolver(allow_private=self.allow_private),
                keepalive_timeout=POOL_IDLE_SECONDS, enable_cleanup_closed=False,
            )
            # No cookie jar: no OpenRed protocol uses cookies, and one peer's Set-Cookie has no
            # business in the requests this process sends (it also spares every request the
            # jar's filtering and updating).
            # No content coding: every answer is read as sent (IDENTITY_ONLY).
            self._session = aiohttp.ClientSession(
                connector=connector, timeout=self._timeout, raise_for_status=False,
                auto_decompress=False, headers=IDENTITY_ONLY, response_class=_Response,
                cookie_jar=aiohttp.DummyCookieJar(), middlewares=(_send_again_on_stale,),
            )
        return self._session

    async def close(self) -> None:
        """Close the pool (idempotent)."""
        if self._session is not None:
            await self._session.close()
            self._session = None

    def session_for(self, url: str) -> aiohttp.ClientSession:
        """The pooled session, after the same URL check as :meth:`request`.

        For a caller whose body or answer is not this client's JSON (the binary P2P envelope
        of file chunks): it shares the pool, timeouts and :class:`SafeResolver`, and handles
        the exchange itself.
        """
        self._check(url)
        return self._ensure()

    def _check(self, url: str) -> None:
        key = (self.allow_private, url)
        if key in self._checked:
            return
        self._check_uncached(url)
        if len(self._checked) >= _CHECKED_URLS_MAX:
            self._checked.clear()
        self._checked.add(key)

    def _check_uncached(self, url: str) -> None:
        _, host, _ = check_url_syntax_for_request(url)
        from ipaddress import ip_address

        try:
            literal = ip_address(host.strip("[]"))
        except ValueError:
            return  # a name: SafeResolver checks the addresses it resolves to
        check_address(literal, allow_private=self.allow_private)

    async def request(
        self,
        method: str,
        url: str,
        *,
        json_body: Any = None,
        body: bytes | None = None,
        signed: bool = False,
        attempts: int | None = None,
        headers: Mapping[str, str] | None = None,
        replayable: bool = True,
        timeout: float | None = None,
        max_reply: int = MAX_REPLY_BYTES,
        budget: float | None = None,
    ) -> Reply:
        """Send one request (retried on transport failures and 502/503/504); its Reply.

        ``json_body`` is sent as compact JSON; ``body`` is JSON text already encoded the same
        way (UTF-8; a caller that builds one body for many requests), never both.

        ``replayable=False`` is for a request whose effect must not happen twice (a grant
        minted): it is sent again only when it cannot have been acted on — no connection was
        made, or a 503 (a refusal before anything was done) —, never after a timeout, a broken
        answer, a 502 or a 504. (Any request, this one too, is sent once more with the same
        bytes when its reused pooled connection closed before any byte of the answer came:
        :func:`_send_again_on_stale`; that is not an attempt.) ``timeout`` replaces the client's
        total time per attempt.
        ``max_reply``: the most bytes of an answer's body read (at most
        :data:`MAX_REPLY_BYTES`); a longer answer is a transport failure.
        ``budget``: the most seconds the whole request takes, every attempt and backoff
        included (each attempt gets what is left, at most its own total time; none starts
        once it is spent): a caller that must answer someone else in time.
        """
        self._check(url)
        if body is not None:
            if json_body is not None:
                raise ValueError("pass json_body or body, not both")
        elif json_body is not None:
            body = json.dumps(
                json_body, separators=(",", ":"), ensure_ascii=False
            ).encode("utf-8")
        base_headers = {"Accept": "application/json, application/problem+json"}
        if body is None:
            body = b""
        else:
            base_headers["Content-Type"] = "application/json"
        base_headers.update(headers or {})
        tries = self.attempts if attempts is None else max(1, attempts)
        retry_statuses = RETRY_STATUSES if replayable else _UNDONE_STATUSES
        per_attempt = None if timeout is None else aiohttp.ClientTimeout(
            total=timeout, connect=self._timeout.connect)
        base_timeout = per_attempt or self._timeout
        deadline = None if budget is None else time.monotonic() + budget
        last: Exception | None = None
        answered: Reply | None = None  # a retried answer, returned when no time is left
        made = 0
        for attempt in range(tries):
            pause = self.backoff * (2 ** (attempt - 1)) * (1 + random.random()) if attempt else 0
            if deadline is not None:
                left = deadline - time.monotonic() - pause
                if left <= 0:
                    if answered is not None:
                        return answered
                    last = last or TimeoutError(f"no time left of its {budget} s")
                    break
                per_attempt = aiohttp.ClientTimeout(
                    total=min(base_timeout.total or left, left),
                    connect=min(base_timeout.connect or left, left))
            if pause:
                await asyncio.sleep(pause)
            send_headers = dict(base_headers)
            if signed:
                send_headers = await self._sign(method, url, send_headers, body)
            made += 1
            try:
                reply = await self._send(method, url, send_headers, body, per_attempt,
                                         min(max_reply, MAX_REPLY_BYTES))
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last, answered = exc, None
                if replayable or isinstance(exc, aiohttp.ClientConnectorError):
                    continue
                break  # it may have been received and acted on
            if reply.status in retry_statuses and attempt + 1 < tries:
                answered = reply
                continue
            return reply
        raise PeerUnreachable(f"{method} {url} failed after {made} attempts: "
                              f"{describe(last)}") from last

    async def _sign(
        self, method: str, url: str, headers: dict[str, str], body: bytes
    ) -> dict[str, str]:
        if self.signer is None:
            raise OpenRedError("this client has no signer for signed requests")
        signed = await sign_request(
            HttpRequest(method, url, headers, body), keyid=self.signer.keyid,
            sign_base=self.signer.sign_base, now=int(self.clock()), nonce=new_nonce(),
        )
        return dict(signed.headers)

    async def _send(
        self, method: str, url: str, headers: dict[str, str], body: bytes,
        timeout: aiohttp.ClientTimeout | None = None, max_reply: int = MAX_REPLY_BYTES,
    ) -> Reply:
        session = self._ensure()
        # SafeResolver raises UnsafeUrl through aiohttp unwrapped (it is not an OSError).
        async with session.request(method, url, data=body or None, headers=headers,
                                   allow_redirects=False,
                                   timeout=timeout or self._timeout) as resp:
            data = bytearray()
            async for chunk in resp.content.iter_chunked(65536):
                data += chunk
                if len(data) > max_reply:
                    raise TransportError(f"answer from {url} larger than {max_reply} bytes")
            return Reply(resp.status, dict(resp.headers), bytes(data))


MAX_FAILURE_TEXT = 200
"""Characters of a transport failure's own text kept in its message (:func:`describe`)."""


def describe(exc: BaseException | None) -> str:
    """``Type: text`` of a transport failure, its text cut to :data:`MAX_FAILURE_TEXT`.

    aiohttp quotes what it could not parse — a status line, a header, a chunk size: up to
    8 KiB of the server's bytes, 16 KiB for a header — and these messages end up in the
    directory's signed, append-only log (``ConnectionGrantFailed``), in problems and in logs.
    """
    text = str(exc)
    if len(text) > MAX_FAILURE_TEXT:
        text = text[:MAX_FAILURE_TEXT] + f"... ({len(text)} characters)"
    return f"{type(exc).__name__}: {text}"


def check_url_syntax_for_request(url: str) -> tuple[str, str, int]:
    """Syntax check of an outbound URL (queries allowed, unlike an API base URL)."""
    base, _, _ = url.partition("?")
    return check_url_syntax(base)
