"""A binary body for the P2P envelope (DESIGN §6): the same envelope, without JSON and base64.

``POST /api/v3/p2p/<module>/<action>`` with ``Content-Type: application/octet-stream`` carries
one :class:`~openred.node.envelope.Envelope` as

    ``"OREB"`` ‖ version ``0x01`` ‖ session id (16 bytes) ‖ counter (u64, big-endian) ‖ ciphertext

and is answered, on success, with the answer envelope in the same form (errors stay RFC 9457
problems). Only the wire encoding differs from the JSON body ``{session_id, counter,
ciphertext}``: the envelope is opened and sealed by the same
:class:`~openred.node.envelope.SessionChannel` through the same
:func:`~openred.node.p2p.dispatch` — same AEAD, same counter as nonce, same associated data
(session, direction, ``<module>/<action>``, an answer bound to its request's counter), same
replay window. The encoding is not part of the associated data and needs not be: both forms
carry the same three fields, so re-encoding a message gives nothing new, and a counter
accepted in one form is a replay in the other.

Why: base64 and a JSON string of a quarter-megabyte cost more CPU than the AEAD and the hashes
together (file chunks). The parse is strict: exact magic and version, a whole header, a counter
below 2^64-1, a bounded ciphertext (requests: the JSON envelope's
:data:`~openred.node.envelope.MAX_CIPHERTEXT`; answers: :data:`MAX_ANSWER_CIPHERTEXT`).
"""

from __future__ import annotations

import asyncio
import functools
import struct
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, Final, TypeVar

import aiohttp
from quart import Response, request

from openred.crypto.identity import b64url, from_b64url
from openred.crypto.session import MAX_COUNTER
from openred.errors import NodeRefused, PeerUnreachable
from openred.node.envelope import MAX_CIPHERTEXT, SESSION_ID_LEN, Envelope, Route
from openred.web.client import HttpClient, Reply, describe

__all__ = [
    "HEADER_LEN",
    "MAGIC",
    "MAX_ANSWER_CIPHERTEXT",
    "MEDIA_TYPE",
    "accept_binary",
    "decode",
    "encode",
    "header",
    "post",
]

MEDIA_TYPE: Final = "application/octet-stream"
MAGIC: Final = b"OREB\x01"
"""``OREB`` (OpenRed envelope, binary) and the format's version."""
_HEADER = struct.Struct(f">{len(MAGIC)}s{SESSION_ID_LEN}sQ")
HEADER_LEN: Final = _HEADER.size
MAX_ANSWER_CIPHERTEXT: Final = 4 * 1024 * 1024 + 64 * 1024
"""Largest answer ciphertext a binary envelope may carry (a 4 MiB file chunk and its proof)."""
MAX_PROBLEM: Final = 65536
"""Largest error answer read from a peer."""


def _malformed(detail: str) -> NodeRefused:
    return NodeRefused(400, "malformed-envelope", detail)


def _too_large(limit: int) -> NodeRefused:
    return NodeRefused(413, "envelope-too-large", f"ciphertext exceeds {limit} bytes")


def header(envelope: Envelope) -> bytes:
    """The binary form's header for ``envelope`` (the ciphertext follows it)."""
    return _HEADER.pack(MAGIC, from_b64url(envelope.session_id), envelope.counter)


def encode(envelope: Envelope) -> bytes:
    """The binary form of ``envelope``."""
    return header(envelope) + envelope.ciphertext


def _parse_header(body: bytes) -> tuple[str, int]:
    if len(body) < HEADER_LEN:
        raise _malformed(f"a binary envelope has a {HEADER_LEN}-byte header")
    magic, session_id, counter = _HEADER.unpack_from(body)
    if magic != MAGIC:
        raise _malformed("not a binary envelope of version 1")
    if counter >= MAX_COUNTER:
        raise _malformed("counter is out of range")
    return b64url(session_id), counter


def decode(body: bytes, *, max_ciphertext: int = MAX_CIPHERTEXT) -> Envelope:
    """Parse a binary envelope strictly (see the module doc); NodeRefused 400 or 413."""
    session_id, counter = _parse_header(body)
    if len(body) - HEADER_LEN > max_ciphertext:
        raise _too_large(max_ciphertext)
    return Envelope(session_id, counter, body[HEADER_LEN:])


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


async def _pieces(*pieces: bytes) -> AsyncIterator[bytes]:
    """An answer body of a few pieces, sent in turn on the event loop.

    A plain list would do, but Quart steps a synchronous iterable in a worker thread, one
    thread hop per piece.
    """
    for piece in pieces:
        yield piece


def accept_binary(handle: Callable[[Route, Envelope], Awaitable[Envelope]]) -> Callable[[F], F]:
    """Decorate the P2P view: an ``application/octet-stream`` body is a binary envelope.

    ``handle`` dispatches a parsed envelope (the node's ``NodeServices.handle``); the answer is
    sent back binary. Any other body goes to the decorated (JSON) view unchanged.
    """

    def decorator(view: F) -> F:
        @functools.wraps(view)
        async def wrapper(module: str, action: str) -> Any:
            if request.mimetype != MEDIA_TYPE:
                return await view(module=module, action=action)
            route = Route(module, action)
            length = request.content_length
            if length is not None and length > HEADER_LEN + MAX_CIPHERTEXT:
                raise _too_large(MAX_CIPHERTEXT)
            body = await request.get_data(cache=False, as_text=False, parse_form_data=False)
            envelope = decode(body)
            answer = await handle(route, envelope)
            head = header(answer)  # sent before the ciphertext: no copy of the ciphertext
            return Response(_pieces(head, answer.ciphertext), status=200,
                            content_type=MEDIA_TYPE,
                            headers={"Content-Length": str(len(head) + len(answer.ciphertext))})

        return wrapper  # type: ignore[return-value]

    return decorator


async def post(
    http: HttpClient, url: str, envelope: Envelope, *,
    refuse: Callable[[Reply], Exception],
    max_ciphertext: int = MAX_ANSWER_CIPHERTEXT,
) -> Envelope:
    """Send ``envelope`` binary to ``url`` once; the binary answer, or ``refuse(reply)`` raised.

    Uses the process's pooled client (its connection pool, timeouts and address checks):
    :class:`~openred.web.client.HttpClient` sends JSON bodies only, and reads answers in
    64 KiB pieces up to 1 MiB, so the binary exchange reads the whole answer itself, bounded
    by its Content-Length. A transport failure is :class:`~openred.errors.PeerUnreachable`.
    """
    session = http.session_for(url)
    try:
        async with session.post(
            url, data=encode(envelope), allow_redirects=False,
            headers={"Content-Type": MEDIA_TYPE,
                     "Accept": f"{MEDIA_TYPE}, application/problem+json"},
        ) as resp:
            if resp.status == 200 and resp.content_type == MEDIA_TYPE:
                size = resp.content_length
                if size is None or not HEADER_LEN <= size <= HEADER_LEN + max_ciphertext:
                    return decode(await _read(resp, HEADER_LEN + max_ciphertext),
                                  max_ciphertext=max_ciphertext)
                # The header, then the ciphertext as one bytes object (no copy to slice it).
                session_id, counter = _parse_header(await resp.content.readexactly(HEADER_LEN))
                ciphertext = await resp.content.readexactly(size - HEADER_LEN)
                return Envelope(session_id, counter, ciphertext)
            reply = Reply(resp.status, dict(resp.headers), await _read(resp, MAX_PROBLEM))
    except (aiohttp.ClientError, asyncio.IncompleteReadError, TimeoutError, OSError) as exc:
        raise PeerUnreachable(f"POST {url} failed: {describe(exc)}") from exc
    if reply.status == 200:
        raise NodeRefused(502, "malformed-envelope", "the peer's answer is not a binary envelope")
    raise refuse(reply)


async def _read(resp: aiohttp.ClientResponse, limit: int) -> bytes:
    """The whole body of ``resp`` if it has at most ``limit`` bytes; else NodeRefused 502."""
    too_large = NodeRefused(502, "peer-answer-too-large",
                            f"the peer's answer is larger than {limit} bytes")
    size = resp.content_length
    if size is not None:
        if size > limit:
            raise too_large
        return await resp.read()
    body = bytearray()
    async for piece in resp.content.iter_chunked(65536):
        body += piece
        if len(body) > limit:
            raise too_large
    return bytes(body)
