"""Log kinds: which events and projections belong to a log, named by its genesis ``kind``.

Every log says in its signed genesis ``LogOpened`` payload what kind of log it is (``"kind"``;
a genesis without it is an old node log). The kind names the Alembic branch its database is
migrated to (``f"{kind}@head"``), the event registry its entries are decoded with and the
projections kept beside it. ``audit_tools verify`` and ``replay`` read the kind from the genesis
entry they check and take everything else from here, so a log that is not a node's is checked
completely instead of against the node's set.

Imports are lazy, one kind at a time, and nothing imported through this module may import
Quart, aiohttp or an app (``app.py`` modules): ``audit_tools`` stands on it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from openred.store.chain import DEFAULT_KIND  # a genesis without "kind" (older logs): node
from openred.store.events import EventRegistry
from openred.store.projections import ProjectionRegistry


@dataclass(frozen=True, slots=True)
class _Kind:
    registry: Callable[[], EventRegistry]
    projections: Callable[[], ProjectionRegistry]


def _node_registry() -> EventRegistry:
    from openred.node.events import node_registry

    return node_registry()


def _node_projections() -> ProjectionRegistry:
    from openred.node.projections import node_projections

    return node_projections()


def _directory_registry() -> EventRegistry:
    from openred.directory.events import directory_registry

    return directory_registry()


def _directory_projections() -> ProjectionRegistry:
    from openred.directory.projections import directory_projections

    return directory_projections()


_KINDS: Mapping[str, _Kind] = {
    "node": _Kind(_node_registry, _node_projections),
    "directory": _Kind(_directory_registry, _directory_projections),
}

KINDS: tuple[str, ...] = tuple(_KINDS)
"""Every kind of log this code knows."""


def _kind(kind: str) -> _Kind:
    try:
        return _KINDS[kind]
    except KeyError:
        raise KeyError(f"unknown log kind {kind!r} (known: {', '.join(KINDS)})") from None


def registry_for(kind: str) -> EventRegistry:
    """The event registry of a ``kind`` log (KeyError for a kind this code does not know)."""
    return _kind(kind).registry()


def projections_for(kind: str) -> ProjectionRegistry:
    """The projections kept beside a ``kind`` log (KeyError for an unknown kind)."""
    return _kind(kind).projections()


__all__ = ["DEFAULT_KIND", "KINDS", "projections_for", "registry_for"]
