"""The monitoring module (DESIGN §11, issue 10): Prometheus metrics, structured logs, health.

Enabled on a node (``OPENRED_MODULES=messaging,monitoring``) it counts and times every request,
log append and jail call, samples sessions and peers, logs the directory or a peer becoming
unreachable (ERROR) and reachable again (INFO), and serves the metrics on the local admin API
(``GET /admin/v1/metrics``, bearer key) and, when ``OPENRED_METRICS_ADDRESS`` is set, on a
listener of their own at that address — never on the public P2P port. The
directory installs the same instruments through :func:`openred.modules.monitoring.service.
monitor_directory`. Health checks (:mod:`.health`) are part of every node and directory,
enabled or not.

Importing this package imports no web framework.
"""

from __future__ import annotations

from typing import Any

from openred.crypto.methods import MethodRegistry
from openred.store.events import EventRegistry
from openred.store.projections import ProjectionRegistry

__all__ = ["MonitoringModule"]


class MonitoringModule:
    """The built-in monitoring module (adds instruments, no events and no projections)."""

    name = "monitoring"

    def register_routes(self, app: Any) -> None:
        """Metrics are served on their own loopback listener, not on the P2P app."""

    def register_admin_routes(self, admin_app: Any) -> None:
        """``GET /admin/v1/metrics`` on the local admin API (bearer key, like every admin call)."""
        from openred.modules.monitoring.service import register_admin_metrics

        register_admin_metrics(admin_app)

    def register_crypto_methods(self, registry: MethodRegistry) -> None:
        """Monitoring adds no cipher method."""

    def register_middleware(self, app: Any) -> None:
        """Instrument the node app and its services; start the metrics listener."""
        from openred.modules.monitoring.service import monitor_node

        monitor_node(app)

    def register_events(self, registry: EventRegistry) -> None:
        """Monitoring writes no event."""

    def register_projections(self, registry: ProjectionRegistry) -> None:
        """Monitoring keeps no table."""
