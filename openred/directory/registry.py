"""Routes for nodes: register, heartbeat, discover, deregister (DESIGN §4)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, Response
from quart_schema import document_response, validate_querystring, validate_request

from openred.crypto.records import SignedNodeRecord
from openred.directory.routing import (
    SIGNED_PROBLEMS,
    answer,
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
from openred.directory.service import DirectoryService
from openred.errors import CryptoError, RequestRefused

blueprint = Blueprint("registry", __name__, url_prefix="/api/v3/nodes")


@blueprint.post("/register")
@validate_request(SignedRecordBody)
@document_response(NodeItem, 201)
@document_response(NodeItem, 200)
@problems(*SIGNED_PROBLEMS, 409)
@signed_registration
async def register(data: SignedRecordBody, signer: str) -> tuple[Response, int]:
    """Register (201) or update (200) the signing node's signed record."""
    item, status = await register_record(service(), data, signer)
    return answer(item, status)


async def register_record(svc: DirectoryService, data: SignedRecordBody,
                          signer: str) -> tuple[dict[str, Any], int]:
    """What ``register`` answers (and its status), for this route and the fast route."""
    try:
        signed_record = SignedNodeRecord.from_wire(data.model_dump())
    except CryptoError as exc:
        raise RequestRefused(422, "invalid-record", str(exc)) from exc
    status, item = await svc.register(signed_record, signer=signer)
    return item, status


@blueprint.post("/heartbeat")
@validate_request(EmptyBody)
@document_response(HeartbeatReply, 200)
@problems(*SIGNED_PROBLEMS, 404)
@signed
async def heartbeat(data: EmptyBody, signer: str) -> tuple[Response, int]:
    """Refresh the signing node's last_seen (a status change is logged, a heartbeat is not)."""
    return answer(await service().heartbeat(signer=signer))


@blueprint.get("/discover")
@validate_querystring(DiscoverQuery)
@document_response(NodePage, 200)
@problems(*SIGNED_PROBLEMS, 404)
@signed
async def discover(query_args: DiscoverQuery, signer: str) -> tuple[Response, int]:
    """One node (``?node_id=``), or a page of nodes by status with a cursor."""
    return answer(await discover_nodes(service(), query_args, signer))


async def discover_nodes(svc: DirectoryService, query_args: DiscoverQuery,
                         signer: str) -> dict[str, Any]:
    """What ``discover`` answers, for this route and the fast route."""
    if query_args.node_id is not None:
        return await svc.discover_one(signer, query_args.node_id)
    return await svc.discover_page(signer, status=query_args.status, limit=query_args.limit,
                                   cursor=query_args.cursor)


@blueprint.delete("/<node_id>")
@document_response(DeregisterReply, 200)
@problems(*SIGNED_PROBLEMS, 404)
@signed
async def deregister(node_id: str, signer: str) -> tuple[Response, int]:
    """The signing node leaves the directory (only itself)."""
    return answer(await service().deregister(node_id, signer=signer))
