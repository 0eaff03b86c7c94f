"""The file_sharing module's admin routes (under ``/admin/v1/file_sharing``), for the CLI.

===========================================  ================================================
``POST /share``                              ``{peer, path, expires, name?}``: offer the file
                                             at ``path`` (on this machine) to ``peer`` for
                                             ``expires`` seconds; the offer (sensitive)
``GET  /offers``                             offers sent and received, with their transfers
``POST /fetch``                              ``{offer_id, out?}``: start (or find) the fetch
                                             of an offer received; its progress (sensitive)
``GET  /fetch/<offer_id>``                   the progress: verified bytes of total, state
``POST /fetch/<offer_id>/stop``              stop a running fetch (it resumes next time)
``POST /unshare``                            ``{offer_id}``: revoke an offer sent (sensitive)
``POST /decline``                            ``{offer_id}``: decline an offer received
                                             (sensitive)
===========================================  ================================================
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from quart import Quart, current_app

from openred.errors import RequestRefused
from openred.modules.file_sharing import FILE_SHARING_SERVICE
from openred.modules.file_sharing.readmodels import FileOfferRow
from openred.modules.file_sharing.service import FileSharing
from openred.node.admin import (
    ADMIN_PREFIX,
    NODE_APP,
    admin_body,
    node_services,
    resolve_peer,
)
from openred.node.admin_auth import sensitive

__all__ = ["register"]

PREFIX = f"{ADMIN_PREFIX}/file_sharing"
MAX_EXPIRES = 365 * 86400


def _service() -> FileSharing:
    node_services()  # 503 while the node starts or stops
    node_app: Quart = current_app.extensions[NODE_APP]
    service = node_app.extensions.get(FILE_SHARING_SERVICE)
    if not isinstance(service, FileSharing):
        raise RequestRefused(404, "module-not-loaded", "the file_sharing module is not loaded")
    return service


def _text(body: dict[str, Any], name: str, *, required: bool = True) -> str | None:
    value = body.get(name)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not value or "\x00" in value:
        raise RequestRefused(422, "invalid-field", f"{name} must be a non-empty string")
    try:
        # JSON can carry lone surrogates ("\ud800"), which no path or SQLite text can hold.
        value.encode("utf-8")
    except UnicodeEncodeError:
        raise RequestRefused(422, "invalid-field", f"{name} must be valid Unicode text") from None
    return value


def _offer(row: FileOfferRow) -> dict[str, Any]:
    return {
        "offer_id": row.offer_id, "direction": row.direction, "peer": row.peer,
        "name": row.name, "size": row.size, "digest": row.digest,
        "chunk_size": row.chunk_size, "expires_at": row.expires_at, "state": row.state,
        "offered_at": row.offered_at,
    }


def register(app: Quart) -> None:
    """Add the file_sharing admin routes to the admin app."""

    @app.post(f"{PREFIX}/share")
    @sensitive
    async def share() -> tuple[dict[str, Any], int]:
        body = await admin_body()
        service = _service()
        peer = await resolve_peer(node_services(), _text(body, "peer") or "")
        path = _text(body, "path") or ""
        expires = body.get("expires", 86400)
        if isinstance(expires, bool) or not isinstance(expires, int) or not (
            1 <= expires <= MAX_EXPIRES
        ):
            raise RequestRefused(422, "invalid-field", f"expires is 1..{MAX_EXPIRES} seconds")
        row = await service.share(peer, Path(path), expires_in=expires,
                                  name=_text(body, "name", required=False))
        return _offer(row), 201

    @app.get(f"{PREFIX}/offers")
    async def offers() -> dict[str, Any]:
        service = _service()
        items = []
        for row in await service.offers():
            item = _offer(row)
            if row.direction == "received":
                item["transfer"] = (await service.fetch_progress(row.offer_id)).to_json()
            items.append(item)
        return {"items": items}

    @app.post(f"{PREFIX}/fetch")
    @sensitive
    async def fetch() -> tuple[dict[str, Any], int]:
        body = await admin_body()
        offer_id = _text(body, "offer_id") or ""
        out = _text(body, "out", required=False)
        if out is not None and not Path(out).is_absolute():
            raise RequestRefused(422, "invalid-field", "out is an absolute directory path")
        progress = await _service().start_fetch(offer_id, out=Path(out) if out else None)
        return progress.to_json(), 202

    @app.get(f"{PREFIX}/fetch/<offer_id>")
    async def fetch_progress(offer_id: str) -> dict[str, Any]:
        return (await _service().fetch_progress(offer_id)).to_json()

    @app.post(f"{PREFIX}/fetch/<offer_id>/stop")
    @sensitive
    async def stop(offer_id: str) -> dict[str, Any]:
        return (await _service().stop_fetch(offer_id)).to_json()

    @app.post(f"{PREFIX}/unshare")
    @sensitive
    async def unshare() -> dict[str, Any]:
        offer_id = _text(await admin_body(), "offer_id") or ""
        await _service().revoke(offer_id)
        return {"offer_id": offer_id, "state": "revoked"}

    @app.post(f"{PREFIX}/decline")
    @sensitive
    async def decline() -> dict[str, Any]:
        offer_id = _text(await admin_body(), "offer_id") or ""
        await _service().decline(offer_id)
        return {"offer_id": offer_id, "state": "declined"}
