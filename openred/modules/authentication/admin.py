"""The authentication module's admin routes (imports Quart).

==========================================  ===================================================
``POST /authentication/challenge``          ``{peer, purpose?}``: the peer proves its key now
``GET  /authentication/totp``               ``{enrolled, pending}``
``POST /authentication/totp/enroll``        start enrolment: ``{uri}`` (otpauth, for a QR code)
``POST /authentication/totp/confirm``       ``{code}``: the first code finishes enrolment
``POST /authentication/totp/disable``       ``{code}``: remove the second factor
``POST /authentication/token``              ``{code}``: a short-lived admin token for the CLI
``POST /authentication/token/revoke``       the token in ``X-OpenRed-Admin-Token`` stops
                                            working now: ``{revoked}`` (whether it was valid)
==========================================  ===================================================

(all under ``/admin/v1``, all behind the bearer key). The admin token's lifetime is
``OPENRED_ADMIN_TOKEN_TTL`` seconds (default 900).
"""

from __future__ import annotations

import os
from typing import Any

from quart import Quart, current_app, request

from openred.errors import ConfigurationError, RequestRefused
from openred.modules.authentication import AUTHENTICATION_SERVICE
from openred.modules.authentication.files import ADMIN_TOKEN_HEADER
from openred.modules.authentication.operator import OperatorAuth
from openred.modules.authentication.service import PeerAuthentication
from openred.node.admin import (
    ADMIN_PREFIX,
    NODE_APP,
    admin_body,
    node_services,
    resolve_peer,
)
from openred.node.admin_auth import SECOND_FACTOR
from openred.node.routes import EXTENSION

__all__ = ["TOKEN_TTL_ENV", "register"]

TOKEN_TTL_ENV = "OPENRED_ADMIN_TOKEN_TTL"  # noqa: S105 - a variable name
PREFIX = f"{ADMIN_PREFIX}/authentication"


async def _code() -> str:
    code = (await admin_body()).get("code")
    if not isinstance(code, str):
        raise RequestRefused(422, "invalid-field", "code must be a string of 6 digits")
    return code


def connection() -> tuple[Any, Any]:
    """The request's (client, server) endpoints, as the server saw them (ASGI scope)."""
    return request.scope.get("client"), request.scope.get("server")


def _token_ttl() -> int:
    text = os.environ.get(TOKEN_TTL_ENV, "900")
    if not (text.isascii() and text.isdigit()):
        raise ConfigurationError(f"{TOKEN_TTL_ENV} is a number of seconds")
    return int(text)


def register(admin_app: Quart) -> None:
    services = admin_app.extensions[NODE_APP].extensions[EXTENSION]
    operator = OperatorAuth(services.settings.data_dir, services.jail,
                            account=f"node-{str(services.keys.node_id)[:12]}",
                            token_ttl=_token_ttl())
    admin_app.extensions[SECOND_FACTOR] = operator

    @admin_app.post(f"{PREFIX}/challenge")
    async def challenge() -> dict[str, Any]:
        svc = node_services()
        auth: PeerAuthentication = current_app.extensions[NODE_APP].extensions[
            AUTHENTICATION_SERVICE]
        body = await admin_body()
        if not isinstance(body.get("peer"), str):
            raise RequestRefused(422, "invalid-field", "peer must be a node id (or a prefix)")
        purpose = body.get("purpose", "operator")
        if not isinstance(purpose, str):
            raise RequestRefused(422, "invalid-field", "purpose must be a string")
        peer = await resolve_peer(svc, body["peer"])
        rows = [r for r in await svc.book.sessions(state="active") if r.peer == peer]
        if not rows:
            raise RequestRefused(404, "no-session", f"no active session with {peer}")
        session_id = max(rows, key=lambda r: r.established_at).session_id
        info = await svc.book.peer(peer)
        if info is None:
            raise RequestRefused(404, "unknown-peer", f"no verified record of {peer}")
        proof = await auth.authenticate(
            session_id, purpose, transport=svc._p2p_transport(info.api_url), now=svc.now,
            rotate=svc.keeper.rotate)
        return {"peer": proof.peer, "session_id": proof.session_id, "purpose": proof.purpose,
                "at": proof.at}

    @admin_app.get(f"{PREFIX}/totp")
    async def totp_status() -> dict[str, bool]:
        return operator.status()

    @admin_app.post(f"{PREFIX}/totp/enroll")
    async def totp_enroll() -> tuple[dict[str, str], int]:
        return {"uri": await operator.enroll()}, 201

    @admin_app.post(f"{PREFIX}/totp/confirm")
    async def totp_confirm() -> dict[str, bool]:
        await operator.confirm(await _code(), connection=connection())
        return operator.status()

    @admin_app.post(f"{PREFIX}/totp/disable")
    async def totp_disable() -> dict[str, bool]:
        await operator.disable(await _code(), connection=connection())
        return operator.status()

    @admin_app.post(f"{PREFIX}/token")
    async def token() -> dict[str, Any]:
        value, expires_at = await operator.issue_token(await _code(), connection=connection())
        return {"token": value, "expires_at": expires_at}

    @admin_app.post(f"{PREFIX}/token/revoke")
    async def token_revoke() -> dict[str, bool]:
        # Holding the token is what lets one end it; no second factor is asked for.
        value = request.headers.get(ADMIN_TOKEN_HEADER, "")
        if not value:
            raise RequestRefused(422, "invalid-field",
                                 f"send the token to revoke in {ADMIN_TOKEN_HEADER}")
        return {"revoked": operator.revoke_token(value)}
