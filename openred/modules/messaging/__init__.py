"""The messaging module: end-to-end encrypted messages, inbox, delivery receipts (DESIGN §11).

Importing this package imports no web framework: its projections are read by audit_tools.
"""

from __future__ import annotations

from typing import Any

from openred.crypto.methods import MethodRegistry
from openred.modules import OpenRedModule
from openred.store.events import EventRegistry
from openred.store.projections import ProjectionRegistry

__all__ = ["MessagingModule"]

MESSAGING_SERVICE = "openred.messaging"
"""Key of the :class:`~openred.modules.messaging.service.Messaging` service in app.extensions."""


class MessagingModule(OpenRedModule):
    """The built-in messaging module."""

    name = "messaging"

    def register_routes(self, app: Any) -> None:
        """Offer ``messaging/send`` as an encrypted P2P action, served by the node's service."""
        from openred.modules.messaging.service import SEND
        from openred.node.p2p import P2P_ACTIONS

        service = app.extensions[MESSAGING_SERVICE]
        app.extensions[P2P_ACTIONS].add(SEND.module, SEND.action, service.receive,
                                        batchable=True)

    def register_crypto_methods(self, registry: MethodRegistry) -> None:
        """Messaging uses the node's session ciphers; it adds no method."""

    def register_middleware(self, app: Any) -> None:
        """Messaging needs no middleware."""

    def register_events(self, registry: EventRegistry) -> None:
        from openred.modules.messaging.events import register_events

        register_events(registry)

    def register_projections(self, registry: ProjectionRegistry) -> None:
        from openred.modules.messaging.projections import messaging_projections

        for projection in messaging_projections():
            registry.add(projection)
