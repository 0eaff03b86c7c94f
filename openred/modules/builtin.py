"""The built-in modules' domain parts, which every node keeps (no Quart, no aiohttp here)."""

from __future__ import annotations

from openred.store.projections import Projection

BUILTIN_MODULES = ("messaging",)
"""Names of the modules shipped with OpenRed (entry points in pyproject.toml)."""


def builtin_projections() -> list[Projection]:
    """Projections of every built-in module (the node kind keeps them all, enabled or not)."""
    from openred.modules.messaging.projections import messaging_projections

    return messaging_projections()
