"""Routes for nodes: register, heartbeat, discover, deregister (DESIGN §4)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint
from quart_schema import validate_querystring, validate_request, validate_response

from openred.crypto.records import SignedNodeRecord
from openred.directory.routing import (
    SIGNED_PROBLEMS,
    problems,
    service,
    signed,
    signed_registration,
)
from openred.directory.schemas import (
    DeregisterReply,
    DiscoverQuery,
    EmptyBody,
    HeartbeatReply,
    NodeItem,
    NodePage,
    SignedRecordBody,
)
from openred.errors import CryptoError, RequestRefused

blueprint = Blueprint("registry", __name__, url_prefix="/api/v3/nodes")


@blueprint.post("/register")
@validate_request(SignedRecordBody)
@validate_response(NodeItem, 201)
@validate_response(NodeItem, 200)
@problems(*SIGNED_PROBLEMS, 409)
@signed_registration
async def register(data: SignedRecordBody, signer: str) -> tuple[dict[str, Any], int]:
    """Register (201) or update (200) the signing node's signed record."""
    try:
        signed_record = SignedNodeRecord.from_wire(data.model_dump())
    except CryptoError as exc:
        raise RequestRefused(422, "invalid-record", str(exc)) from exc
    status, item = await service().register(signed_record, signer=signer)
    return item, status


@blueprint.post("/heartbeat")
@validate_request(EmptyBody)
@validate_response(HeartbeatReply, 200)
@problems(*SIGNED_PROBLEMS, 404)
@signed
async def heartbeat(data: EmptyBody, signer: str) -> dict[str, Any]:
    """Refresh the signing node's last_seen (a status change is logged, a heartbeat is not)."""
    return await service().heartbeat(signer=signer)


@blueprint.get("/discover")
@validate_querystring(DiscoverQuery)
@validate_response(NodePage, 200)
@problems(*SIGNED_PROBLEMS, 404)
@signed
async def discover(query_args: DiscoverQuery, signer: str) -> dict[str, Any]:
    """One node (``?node_id=``), or a page of nodes by status with a cursor."""
    svc = service()
    if query_args.node_id is not None:
        return await svc.discover_one(signer, query_args.node_id)
    return await svc.discover_page(signer, status=query_args.status, limit=query_args.limit,
                                   cursor=query_args.cursor)


@blueprint.delete("/<node_id>")
@validate_response(DeregisterReply, 200)
@problems(*SIGNED_PROBLEMS, 404)
@signed
async def deregister(node_id: str, signer: str) -> dict[str, Any]:
    """The signing node leaves the directory (only itself)."""
    return await service().deregister(node_id, signer=signer)
