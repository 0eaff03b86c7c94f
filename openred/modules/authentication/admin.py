"""The authentication module's admin route: ask a peer for a proof now (imports Quart)."""

from __future__ import annotations

from typing import Any

from quart import Quart, current_app, request

from openred.errors import RequestRefused
from openred.modules.authentication import AUTHENTICATION_SERVICE
from openred.modules.authentication.service import PeerAuthentication
from openred.node.admin import ADMIN_PREFIX, NODE_APP, node_services, resolve_peer

__all__ = ["register"]


def register(admin_app: Quart) -> None:
    @admin_app.post(f"{ADMIN_PREFIX}/authentication/challenge")
    async def challenge() -> dict[str, Any]:
        """``{peer, purpose}``: challenge the peer on its newest active session; the proof."""
        svc = node_services()
        auth: PeerAuthentication = current_app.extensions[NODE_APP].extensions[
            AUTHENTICATION_SERVICE]
        body = await request.get_json(force=True, silent=True)
        if not isinstance(body, dict) or not isinstance(body.get("peer"), str):
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
