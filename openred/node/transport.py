"""Sending one encrypted P2P call over HTTP: ``POST /api/v3/p2p/<module>/<action>`` (DESIGN §6).

Every message is one such call, so it is sent without the general-purpose layers of
:meth:`~openred.web.client.HttpClient.request` — a dict turned into JSON by the encoder, headers
copied twice, the answer's headers copied into a dict and read in 64 KiB pieces — but through
the same pooled aiohttp session (:meth:`~openred.web.client.HttpClient.session_for`: the same
URL check, connection pool, timeouts and :class:`~openred.web.urls.SafeResolver`), with the
same headers, the same body bytes (:meth:`~openred.node.envelope.Envelope.to_json_bytes`), the
same 1 MiB bound on the answer and the same single attempt (sent once more, the same bytes, only
when its reused pooled connection closed before any byte of the answer came, as every request
of the session: :func:`openred.web.client._send_again_on_stale`). A transport failure is
:class:`~openred.errors.PeerUnreachable`; an answer that is not 2xx is handed to ``refuse`` as a
:class:`~openred.web.client.Reply`. A client whose ``request`` someone wrapped (monitoring) is
used through that wrapper instead.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Final

import aiohttp

from openred.errors import NodeRefused, PeerUnreachable, TransportError
from openred.node.envelope import Envelope
from openred.web.client import MAX_REPLY_BYTES, HttpClient, Reply, describe

__all__ = ["HEADERS", "answer_envelope", "post_envelope", "post_json", "read_answer"]

HEADERS: Final = {"Accept": "application/json, application/problem+json",
                  "Content-Type": "application/json"}
"""What :meth:`HttpClient.request` sends with a JSON body (aiohttp adds the rest)."""


async def post_envelope(
    http: HttpClient, url: str, envelope: Envelope, *, refuse: Callable[[Reply], Exception],
) -> Envelope:
    """POST ``envelope`` to ``url`` once; the peer's envelope, or ``refuse(reply)`` raised.

    An answer larger than 1 MiB or a 2xx answer that is not JSON is a TransportError, as from
    :meth:`HttpClient.request` and :meth:`Reply.json`; a 2xx envelope is parsed strictly.
    """
    reply = await post_json(http, url, envelope.to_json_bytes())
    if not reply.ok:
        raise refuse(reply)
    return answer_envelope(reply.json())


def answer_envelope(obj: object) -> Envelope:
    """The peer's answer envelope, parsed as strictly as a request's; one it got wrong is the
    peer's failure (502 ``malformed-envelope``, as for a binary answer), not the 400 or 413
    the same envelope would be as our caller's request."""
    try:
        return Envelope.from_json(obj)
    except NodeRefused as exc:
        raise NodeRefused(502, "malformed-envelope",
                          f"the peer's answer is not an envelope: {exc.detail}") from None


async def post_json(http: HttpClient, url: str, body: bytes) -> Reply:
    """POST the JSON ``body`` to ``url`` once; the answer (PeerUnreachable if none came).

    When ``http.request`` is not :class:`HttpClient`'s own method — a module wrapped it, as
    monitoring does to follow each peer's reachability — the call goes through it (with the
    same body bytes), so whoever watches outbound requests still sees every P2P call.
    """
    if "request" in vars(http) or type(http).request is not HttpClient.request:
        return await http.request("POST", url, body=body, attempts=1)
    try:
        async with http.session_for(url).post(url, data=body, headers=HEADERS,
                                              allow_redirects=False) as resp:
            return Reply(resp.status, resp.headers, await read_answer(resp, url))
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        raise PeerUnreachable(f"POST {url} failed after 1 attempts: {describe(exc)}") from exc


async def read_answer(resp: aiohttp.ClientResponse, url: str) -> bytes:
    """The answer's body, at most 1 MiB (TransportError beyond, as :class:`HttpClient`)."""
    size = resp.content_length
    if size is not None and size <= MAX_REPLY_BYTES:
        return await resp.read()
    data = bytearray()
    async for chunk in resp.content.iter_chunked(65536):
        data += chunk
        if len(data) > MAX_REPLY_BYTES:
            raise TransportError(f"answer from {url} larger than {MAX_REPLY_BYTES} bytes")
    return bytes(data)
