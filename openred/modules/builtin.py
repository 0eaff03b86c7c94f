"""The built-in modules' domain parts, which every node keeps (no Quart, no aiohttp here)."""

from __future__ import annotations

from openred.store.projections import Projection

BUILTIN_MODULES = ("messaging", "file_sharing")
"""Names of the modules shipped with OpenRed (entry points in pyproject.toml)."""


def builtin_projections() -> list[Projection]:
    """Projections of every built-in module (the node kind keeps them all, enabled or not)."""
    from openred.modules.file_sharing.projections import file_sharing_projections
    from openred.modules.messaging.projections import messaging_projections

    return [*messaging_projections(), *file_sharing_projections()]


def builtin_event_types() -> tuple[str, ...]:
    """Event types of the built-in modules not already in the node's own list."""
    from openred.modules.file_sharing.events import FILE_EVENT_TYPES

    return FILE_EVENT_TYPES
