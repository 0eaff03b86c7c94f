"""The file_sharing module: offer a file to one peer, who fetches it over the session (DESIGN §11).

Streamed in chunks, each verified against the offer's hash tree, the whole file against its
digest, resumable after any interruption. See :mod:`.domain` (names, tree, capability) and
:mod:`.service` (the P2P actions and the fetch). Importing this package imports no web
framework: its projections are read by audit_tools.
"""

from __future__ import annotations

from typing import Any

from openred.crypto.methods import MethodRegistry
from openred.store.events import EventRegistry
from openred.store.projections import ProjectionRegistry

__all__ = ["FILE_SHARING_SERVICE", "FileSharingModule"]

FILE_SHARING_SERVICE = "openred.file_sharing"
"""Key of the :class:`~openred.modules.file_sharing.service.FileSharing` service in
``app.extensions``."""


class FileSharingModule:
    """The built-in file_sharing module."""

    name = "file_sharing"

    def register_routes(self, app: Any) -> None:
        """Build the service over the node's services and offer its four P2P actions."""
        from openred.modules.file_sharing.service import CHUNK, DECLINE, OFFER, REVOKE, FileSharing
        from openred.node import envelope_binary
        from openred.node.envelope import Envelope, Route
        from openred.node.p2p import P2P_ACTIONS
        from openred.node.routes import EXTENSION
        from openred.node.services import _refusal_from

        node = app.extensions[EXTENSION]

        async def transport_for(peer: str) -> Any:
            info = await node.book.peer(peer)
            if info is None:
                from openred.errors import NodeRefused

                raise NodeRefused(404, "unknown-peer", "no verified record of this peer")
            base = info.api_url.rstrip("/")

            async def send(route: Route, envelope: Envelope) -> Envelope:
                url = f"{base}/api/v3/p2p/{route}"
                if route == CHUNK:  # chunk answers travel in the binary envelope
                    return await envelope_binary.post(
                        node.http, url, envelope,
                        refuse=lambda reply: _refusal_from(reply, f"the peer's {route}"))
                reply = await node.http.request("POST", url,
                                                json_body=envelope.to_json(), attempts=1)
                if not reply.ok:
                    raise _refusal_from(reply, f"the peer's {route}")
                return Envelope.from_json(reply.json())

            return send

        service = FileSharing(store=node.store, reads=node.reads, keeper=node.keeper,
                              book=node.book, data_dir=node.settings.data_dir,
                              transport_for=transport_for, clock=node.now)
        app.extensions[FILE_SHARING_SERVICE] = service
        # Stop background fetches before the node closes its log (they resume next time).
        app.after_serving_funcs.insert(0, service.close)
        actions = app.extensions[P2P_ACTIONS]
        actions.add(OFFER.module, OFFER.action, service.receive_offer)
        actions.add(CHUNK.module, CHUNK.action, service.serve_chunk)
        actions.add(REVOKE.module, REVOKE.action, service.receive_revoke)
        actions.add(DECLINE.module, DECLINE.action, service.receive_decline)
        # Expire offers on time, not only when noticed (a served node's lifecycle runs it).
        from openred.modules.file_sharing.expiry import register_expiry

        register_expiry(app, service)
        # Then remove the working files of offers that ended (a partial file that can never
        # complete, a sender's hash tree nobody may fetch from).
        from openred.modules.file_sharing.cleanup import register_cleanup

        register_cleanup(app, service)

    def register_admin_routes(self, admin_app: Any) -> None:
        """``/admin/v1/file_sharing/...``: share, list, fetch (with progress), unshare, decline."""
        from openred.modules.file_sharing.admin import register

        register(admin_app)

    def register_cli(self, group: Any) -> None:
        """``openred share | files | fetch | unshare | decline``."""
        from openred.modules.file_sharing.cli import register

        register(group)

    def register_crypto_methods(self, registry: MethodRegistry) -> None:
        """File sharing uses the node's session ciphers; it adds no method."""

    def register_middleware(self, app: Any) -> None:
        """File sharing needs no middleware."""

    def register_events(self, registry: EventRegistry) -> None:
        from openred.modules.file_sharing.events import register_events

        register_events(registry)

    def register_projections(self, registry: ProjectionRegistry) -> None:
        from openred.modules.file_sharing.projections import file_sharing_projections

        for projection in file_sharing_projections():
            registry.add(projection)
