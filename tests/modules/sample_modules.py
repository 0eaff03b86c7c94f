"""Modules for the loader tests: one that works, and several broken in different ways."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from openred.crypto.methods import MethodRegistry
from openred.store.events import EventRegistry, RecordedEvent
from openred.store.projections import ProjectionRegistry, RowOp


class _Base:
    name = "base"

    def register_routes(self, app: Any) -> None:
        pass

    def register_crypto_methods(self, registry: MethodRegistry) -> None:
        pass

    def register_middleware(self, app: Any) -> None:
        pass

    def register_events(self, registry: EventRegistry) -> None:
        pass

    def register_projections(self, registry: ProjectionRegistry) -> None:
        pass


@dataclass(frozen=True)
class NotesProjection:
    name: str = "notes"
    tables: tuple[str, ...] = ("notes",)
    handles: frozenset[str] = field(default=frozenset({"NoteTaken"}))

    def apply(self, event: RecordedEvent) -> Iterable[RowOp]:
        return ()


class Notes(_Base):
    """A working third-party module: an event, a projection, a cipher method, a route."""

    name = "notes"

    def register_routes(self, app: Any) -> None:
        app.extensions.setdefault("routes", []).append("notes")

    def register_crypto_methods(self, registry: MethodRegistry) -> None:
        registry.register("epsilon", "25519_ChaChaPoly_SHA256")

    def register_events(self, registry: EventRegistry) -> None:
        registry.register("NoteTaken")

    def register_projections(self, registry: ProjectionRegistry) -> None:
        registry.add(NotesProjection())


class MissingHooks:
    name = "missing"

    def register_routes(self, app: Any) -> None:
        pass


class Misnamed(_Base):
    name = "something_else"


class ClashingTables(_Base):
    """Adds a good projection, then one whose table the node owns: nothing may stay."""

    name = "clashing"

    def register_projections(self, registry: ProjectionRegistry) -> None:
        registry.add(NotesProjection(name="clash_notes", tables=("clash_notes",)))
        registry.add(NotesProjection(name="clash_inbox", tables=("inbox",)))


class BrokenRoutes(_Base):
    name = "broken_routes"

    def register_routes(self, app: Any) -> None:
        raise RuntimeError("cannot build blueprint")


class BrokenMethods(_Base):
    name = "broken_methods"

    def register_crypto_methods(self, registry: MethodRegistry) -> None:
        registry.register("zeta", "25519_ChaChaPoly_SHA256")
        raise RuntimeError("half way")
