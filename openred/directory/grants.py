"""Route for paired connection grants: request-connection (DESIGN §5)."""

from __future__ import annotations

from typing import Any

from quart import Blueprint, request
from quart_schema import validate_request, validate_response

from openred.directory.routing import SIGNED_PROBLEMS, problems, service, signed
from openred.directory.schemas import ConnectionReply, ConnectionRequest
from openred.directory.service import DirectoryService

blueprint = Blueprint("grants", __name__, url_prefix="/api/v3/tokens")


@blueprint.post("/request-connection")
@validate_request(ConnectionRequest)
@validate_response(ConnectionReply, 201)
@problems(*SIGNED_PROBLEMS, 404, 409, 410, 502)
@signed
async def request_connection(data: ConnectionRequest, signer: str) -> tuple[dict[str, Any], int]:
    """Mint a grant to ``target``, push both halves; 201 when both nodes took theirs."""
    return await connection_reply(service(), data, signer, request.remote_addr), 201


async def connection_reply(svc: DirectoryService, data: ConnectionRequest, signer: str,
                           client: str | None) -> dict[str, Any]:
    """What ``request_connection`` answers (before validate_response), for it and the fast route.

    ``client``: the address the request came from (limits are charged to its network).
    """
    outcome = await svc.request_connection(signer=signer, target=data.target, client=client)
    return {"grant_id": outcome.grant_id, "expires_at": outcome.expires_at,
            "suite": outcome.suite, "delivered": outcome.delivered}
