"""What every directory route shares: the service, signed-request checks, documented problems."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from functools import wraps
from typing import Any, TypeVar, cast

from quart import Response, current_app, request
from quart_schema import document_response

from openred.crypto.httpsig import HttpRequest
from openred.crypto.identity import NodeId, SignKey
from openred.directory.schemas import SignedRecordBody
from openred.directory.service import DirectoryService
from openred.errors import InvalidKey
from openred.ratelimit import client_key
from openred.web.problems import Problem
from openred.web.signatures import to_http_request

F = TypeVar("F", bound=Callable[..., Awaitable[Any]])
EXTENSION = "openred.directory"

SIGNED_PROBLEMS = (400, 401, 403, 413, 422, 429, 503)
"""What any signed route may answer besides its own successes."""


def service() -> DirectoryService:
    svc: DirectoryService = current_app.extensions[EXTENSION]
    return svc


def problems(*codes: int) -> Callable[[F], F]:
    """Document ``Problem`` answers with these statuses in the OpenAPI document."""

    def decorator(func: F) -> F:
        for code in codes:
            func = document_response(Problem, code)(func)
        return func

    return decorator


def answer(value: dict[str, Any], status: int = 200) -> tuple[Response, int]:
    """``value`` as the JSON answer Quart would make of it, built once (the app's JSON provider).

    Routes whose answers are built here, from values the directory checked itself, document
    their answer models with ``document_response`` (the OpenAPI document is the same as with
    ``validate_response``) instead of validating and re-serializing them on every request; the
    tests check those answers against the models. Request bodies and queries are still
    validated by quart-schema.
    """
    return cast(Response, current_app.json.response(value)), status


async def verify_signed(svc: DirectoryService, req: HttpRequest) -> str:
    """The verified ``keyid`` of a request signed by a node the directory knows; then its limit.

    Shared by the Quart routes (:func:`signed`) and the fast routes
    (:mod:`openred.directory.fastroutes`).
    """
    # The limit is checked and the request counted at once, after the signature verified and
    # before the nonce is remembered, with no await in between: requests sent at once cannot
    # all pass the check before the first is counted, and a refused one takes no room in the
    # nonce cache (429). A request refused after it was counted (a replayed nonce, a full
    # cache: the next step, still with no await) is taken back, so a replay costs its signer
    # nothing.
    admitted: list[str] = []

    def admit(keyid: str) -> None:
        svc.limit_client(keyid)
        admitted.append(keyid)

    try:
        return await svc.verifier.verify_http(req, svc.resolve_key, admit=admit)
    except BaseException:
        if admitted:
            svc.client_limit.release(admitted[0])
        raise


async def verify_registration(svc: DirectoryService, req: HttpRequest, data: SignedRecordBody,
                              remote_addr: str | None) -> str:
    """The limit per client (an IPv4 address or an IPv6 /64: :func:`client_key`), then the
    verified ``keyid`` of a registration.

    Registration is self-certifying: a ``keyid`` equal to the record's ``node_id`` is checked
    against the record's ``sign_key`` (whose id it must be); any other ``keyid`` against the
    key the directory already holds for it (so the decision can answer 403, not 401).
    """
    svc.limit_client(client_key(remote_addr))

    async def resolve(keyid: str) -> SignKey | None:
        if keyid == data.record.node_id:
            try:
                key = SignKey.from_b64url(data.record.sign_key)
            except InvalidKey:
                return None
            return key if NodeId.for_key(key) == keyid else None
        return await svc.resolve_key(keyid)

    return await svc.verifier.verify_http(req, resolve)


def signed(func: F) -> F:
    """Verify the request's RFC 9421 signature by a node the directory knows; pass ``signer``."""

    @wraps(func)
    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        svc = service()
        req = await to_http_request(svc.verifier.public_url, request)
        keyid = await verify_signed(svc, req)
        return await func(*args, signer=keyid, **kwargs)

    return wrapper  # type: ignore[return-value]


def signed_registration(func: F) -> F:
    """Like :func:`signed`, but a new node's key comes from the record it registers
    (:func:`verify_registration`)."""

    @wraps(func)
    async def wrapper(*args: Any, data: SignedRecordBody, **kwargs: Any) -> Any:
        svc = service()
        req = await to_http_request(svc.verifier.public_url, request)
        keyid = await verify_registration(svc, req, data, request.remote_addr)
        return await func(*args, data=data, signer=keyid, **kwargs)

    return wrapper  # type: ignore[return-value]
