"""The authentication module (DESIGN §11, issue 10): peers prove their identity on demand.

``POST /api/v3/p2p/authentication/prove`` (encrypted, over a session) asks the peer's jail to
sign a fresh challenge bound to both node ids, the session and a purpose
(:mod:`.challenge`); the challenger logs ``PeerAuthenticated`` or ``PeerAuthenticationFailed``
(:mod:`.events`). Other modules find the :class:`~.service.PeerAuthentication` service in
``app.extensions[AUTHENTICATION_SERVICE]`` and call ``require_recent(peer, purpose, now,
max_age)`` before an action. The operator asks for a proof through the admin API:
``POST /admin/v1/authentication/challenge {"peer", "purpose"}`` (``openred auth challenge``).

It also holds the operator's TOTP second factor (:mod:`.operator`, :mod:`.totp`): once
enrolled (``openred auth enroll``), the admin API's ``@sensitive`` actions need an admin token
(``openred auth login``) or a code besides the bearer key.

Importing this package imports no web framework.
"""

from __future__ import annotations

from typing import Any

from openred.crypto.methods import MethodRegistry
from openred.store.events import EventRegistry
from openred.store.projections import ProjectionRegistry

__all__ = ["AUTHENTICATION_SERVICE", "AuthenticationModule"]

AUTHENTICATION_SERVICE = "openred.authentication"
"""Key of the :class:`~.service.PeerAuthentication` service in the node app's extensions."""


class AuthenticationModule:
    """The built-in authentication module."""

    name = "authentication"

    def register_routes(self, app: Any) -> None:
        """Offer ``authentication/prove`` as an encrypted P2P action."""
        from openred.modules.authentication.service import PROVE, PeerAuthentication, ProofBudget
        from openred.node.p2p import P2P_ACTIONS

        services = app.extensions["openred.node"]
        auth = PeerAuthentication(str(services.keys.node_id), services.store, services.jail,
                                  services.book, services.keeper,
                                  budget=ProofBudget(services.settings.peer_proofs_per_minute))
        app.extensions[AUTHENTICATION_SERVICE] = auth
        app.extensions[P2P_ACTIONS].add(PROVE.module, PROVE.action, auth.answer)

    def register_admin_routes(self, admin_app: Any) -> None:
        from openred.modules.authentication.admin import register

        register(admin_app)

    def register_cli(self, group: Any) -> None:
        """``openred auth enroll | login | logout | disable | status | challenge``."""
        from openred.modules.authentication.cli import register

        register(group)

    def register_crypto_methods(self, registry: MethodRegistry) -> None:
        """Authentication uses the node's sessions and identity key; it adds no method."""

    def register_middleware(self, app: Any) -> None:
        """Authentication needs no middleware."""

    def register_events(self, registry: EventRegistry) -> None:
        from openred.modules.authentication.events import register_events

        register_events(registry)

    def register_projections(self, registry: ProjectionRegistry) -> None:
        """Proofs are kept in memory (they are only useful while recent); the log keeps all."""
