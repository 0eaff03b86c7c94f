"""The node's P2P routes (DESIGN §10): token delivery, handshake, encrypted calls, health.

Routes only parse, call a service and serialize; every refusal is a
:class:`~openred.errors.NodeRefused` the problem handler renders (RFC 9457). The P2P routes
parse their bodies strictly themselves (:func:`~openred.node.handshake.parse_handshake`,
:meth:`~openred.node.envelope.Envelope.from_json`), so malformed input is a 400 with the
node's own slug rather than a schema error; the OpenAPI document describes those bodies
(:mod:`openred.node.schemas`, documentation only) and lists every status a route answers.
"""

from __future__ import annotations

import ipaddress
import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from pydantic import BaseModel
from quart import Blueprint, current_app, request
from quart_schema import document_request, document_response, validate_response

from openred import __version__
from openred.crypto.identity import SignKey, b64url
from openred.errors import NodeRefused, RequestRefused
from openred.modules.monitoring.health import refusal
from openred.node.envelope import Route
from openred.node.envelope_binary import accept_binary
from openred.node.fastpath import problem_renderer
from openred.node.handshake import parse_handshake
from openred.node.schemas import BatchBody, DeliveryBody, EnvelopeBody, HandshakeBody
from openred.node.services import NodeServices
from openred.ratelimit import RateLimiter
from openred.web.problems import Problem
from openred.web.signatures import InboundVerifier

__all__ = [
    "EXTENSION", "HANDSHAKE_LIMITER", "HANDSHAKE_LOG_BUDGET", "VERIFIER", "blueprint", "source",
]

EXTENSION = "openred.node"
VERIFIER = "openred.node.verifier"
HANDSHAKE_LIMITER = "openred.node.handshake_limiter"
HANDSHAKE_LOG_BUDGET = "openred.node.handshake_log_budget"
LOGGED_REFUSALS_FACTOR = 10
"""Refused handshakes all addresses together may log a minute, in per-address limits."""
EVERYONE = "*"
DIRECTORY_KEYID = "directory"

blueprint = Blueprint("node", __name__, url_prefix="/api/v3")


class Received(BaseModel):
    grant_id: str
    status: str


class HandshakeReply(BaseModel):
    session_id: str
    message: str


class EnvelopeModel(BaseModel):
    session_id: str
    counter: int
    ciphertext: str


class BatchAnswer(BaseModel):
    status: int
    body: dict[str, Any]


class BatchReply(BaseModel):
    answers: list[BatchAnswer]


class Health(BaseModel):
    status: str
    version: str
    node_id: str
    modules: dict[str, list[str]]


def source(remote_addr: str | None) -> str:
    """The rate limit's key for a client address: the address, or its /64 for IPv6 (one
    subscriber's allocation: an address each per request costs nothing)."""
    try:
        address = ipaddress.ip_address(remote_addr or "")
    except ValueError:
        return remote_addr or "unknown"
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Network((address, 64), strict=False))
    return str(address)


def services() -> NodeServices:
    svc: NodeServices = current_app.extensions[EXTENSION]
    return svc


F = TypeVar("F", bound=Callable[..., Awaitable[Any]])


def _documented(*codes: int) -> Callable[[F], F]:
    """Document ``Problem`` answers with these statuses in the OpenAPI document."""

    def decorator(func: F) -> F:
        for code in codes:
            func = document_response(Problem, code)(func)
        return func

    return decorator


async def _json() -> object:
    body = await request.get_json(force=True, silent=True)
    if body is None:
        raise NodeRefused(400, "malformed", "the request body is not JSON")
    return body


@blueprint.post("/tokens/receive")
@document_request(DeliveryBody)
@validate_response(Received, 200)
@_documented(400, 401, 403, 409, 410, 413, 422, 502, 503)
async def receive_token() -> tuple[dict[str, str], int]:
    """A grant half pushed by the directory (RFC 9421, keyid ``directory``)."""
    svc = services()
    verifier: InboundVerifier = current_app.extensions[VERIFIER]
    key = svc.settings.directory_sign_key

    async def resolve(keyid: str) -> SignKey | None:
        return key if keyid == DIRECTORY_KEYID else None

    await verifier.verify(request, resolve)
    return await svc.tokens.receive(await _json(), svc.now()), 200


@blueprint.post("/p2p/handshake")
@document_request(HandshakeBody)
@validate_response(HandshakeReply, 200)
@_documented(400, 401, 403, 404, 409, 410, 413, 422, 429, 503)
async def handshake() -> dict[str, str]:
    """Noise KKpsk0 message 1 for a grant this node holds as responder; message 2.

    Every refusal is logged (``HandshakeRejected``); an address (an IPv6 /64) that caused
    more than ``OPENRED_HANDSHAKE_REFUSALS`` of them in a minute gets 429 without any log
    entry, and all addresses together cause at most :data:`LOGGED_REFUSALS_FACTOR` times that
    many entries a minute (refusals past it are answered the same and not logged), so nobody,
    however many addresses they hold, can fill the log with refusals.
    """
    svc = services()
    limiter: RateLimiter = current_app.extensions[HANDSHAKE_LIMITER]
    budget: RateLimiter = current_app.extensions[HANDSHAKE_LOG_BUDGET]
    address, moment = source(request.remote_addr), time.monotonic()
    wait = limiter.retry_after(address, moment)
    if wait is not None:
        raise RequestRefused(429, "rate-limited", "too many refused handshakes from this "
                             "address", retry_after=math.ceil(wait))
    grant_id, message, renews = parse_handshake(await _json())
    # Checked again and recorded now, before the awaits that decide whether it is refused:
    # counted only after them, a burst sent at once all passed the check (and the log budget)
    # and each put a refusal in the log. Released again when the handshake is not refused.
    wait = limiter.retry_after(address, moment)
    if wait is not None:
        raise RequestRefused(429, "rate-limited", "too many refused handshakes from this "
                             "address", retry_after=math.ceil(wait))
    limiter.hit(address, moment)
    logged = budget.retry_after(EVERYONE, moment) is None
    if logged:
        budget.hit(EVERYONE, moment)
    refused = False
    try:
        answer = await svc.handshakes.respond(grant_id, message, svc.now(), renews,
                                              log_refusal=logged)
    except NodeRefused:
        refused = True
        raise
    finally:
        if not refused:
            limiter.release(address)
            if logged:
                budget.release(EVERYONE)
    return {"session_id": answer.session_id, "message": b64url(answer.message)}


@blueprint.post("/p2p/batch")
@document_request(BatchBody)
@validate_response(BatchReply, 200)
@_documented(400, 413, 503)
async def p2p_batch() -> dict[str, Any]:
    """Several encrypted calls in one request; each one's own status and body, in order.

    Each call is ``{"route": "<module>/<action>", "session_id", "counter", "ciphertext"}`` and
    is handled exactly as ``POST /api/v3/p2p/<module>/<action>`` would handle its envelope
    (at most 64 calls; :mod:`openred.node.batch`).
    """
    app = current_app._get_current_object()  # type: ignore[attr-defined]
    return {"answers": await services().handle_batch(await _json(), problem_renderer(app))}


@blueprint.post("/p2p/<module>/<action>")
@accept_binary(lambda route, envelope: services().handle(route, envelope))  # octet-stream body
@document_request(EnvelopeBody)
@validate_response(EnvelopeModel, 200)
@_documented(400, 401, 404, 409, 410, 413, 416, 422, 429, 503, 507)
async def p2p(module: str, action: str) -> dict[str, Any]:
    """An encrypted call on an established session; the encrypted answer."""
    route = Route(module, action)
    return (await services().handle(route, await _json())).to_json()


@blueprint.get("/health")
@validate_response(Health, 200)
@_documented(503)
async def health() -> dict[str, Any]:
    """The node's id and modules; 503 naming a failing part.

    Checks first that the database is writable, the jail answers and the directory answers
    (:mod:`openred.modules.monitoring.health`). Anyone may ask, so it says nothing of the
    node's traffic: active sessions, unused tokens and the log's size are the admin API's
    (``GET /admin/v1/status``), like the metrics.
    """
    svc = services()
    failure = refusal(await svc.check_health())
    if failure is not None:
        raise failure
    return {**svc.public_health(), "version": __version__}
