"""OpenRed modules (DESIGN §11): the plugin contract, discovery and loading.

A module is an object with five hooks (:class:`OpenRedModule`). Modules are discovered through
the ``openred.modules`` entry-point group (the built-in ones are declared in pyproject.toml)
and a node loads only those its settings enable. Loading is two-phase:

1. :func:`load_modules` imports each enabled entry point, instantiates it, checks it has the
   hooks, and runs its domain hooks (events, projections, crypto methods) against trial copies
   of the registries, so a module that fails leaves nothing half-registered;
2. :func:`install_app_hooks` runs ``register_middleware`` and ``register_routes`` on the app.

A module that fails in either phase is reported in :class:`LoadReport` (and logged) and the
node carries on without it. Built-in modules' projections are part of the node kind (see
:func:`openred.node.projections.node_projections`) and are not registered a second time.

Nothing here imports Quart or aiohttp: ``app`` is whatever the node passes in, and a module's
package ``__init__`` must stay free of those imports too (audit_tools imports projections).
"""

from __future__ import annotations

import importlib.metadata
import logging
import re
from collections.abc import Callable, Collection, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol, cast, runtime_checkable

from openred.crypto.methods import MethodRegistry
from openred.errors import ModuleLoadError
from openred.modules.builtin import BUILTIN_MODULES
from openred.store.events import EventRegistry
from openred.store.projections import ProjectionRegistry

__all__ = [
    "ENTRY_POINT_GROUP",
    "HOOKS",
    "LoadReport",
    "OpenRedModule",
    "discover",
    "install_admin_hooks",
    "install_app_hooks",
    "install_cli_hooks",
    "load_modules",
    "parse_enabled",
]

logger = logging.getLogger("openred.modules")

ENTRY_POINT_GROUP = "openred.modules"
HOOKS = (
    "register_routes",
    "register_crypto_methods",
    "register_middleware",
    "register_events",
    "register_projections",
)
_NAME = re.compile(r"[a-z][a-z0-9_]{0,31}")


@runtime_checkable
class OpenRedModule(Protocol):
    """What a module offers the node; every hook may do nothing."""

    name: str

    def register_routes(self, app: Any) -> None:
        """Add the module's Blueprint (and its encrypted P2P actions) to the node app."""

    def register_crypto_methods(self, registry: MethodRegistry) -> None:
        """Add cipher methods (name → standard Noise suite) the module brings."""

    def register_middleware(self, app: Any) -> None:
        """Add before/after-request functions to the node app."""

    def register_events(self, registry: EventRegistry) -> None:
        """Declare the module's event types and upcasters."""

    def register_projections(self, registry: ProjectionRegistry) -> None:
        """Add the module's projections (their tables come from the module's migrations)."""

    # Optional hooks: a module subclassing OpenRedModule inherits these no-ops; a module that
    # does not may leave them out (they are not in HOOKS).

    def register_admin_routes(self, admin_app: Any) -> None:
        """Add routes under ``/admin/v1/<module>/...`` to the node's local admin API."""

    def register_cli(self, group: Any) -> None:
        """Add commands to the ``openred`` CLI (a click group); they use ``AdminClient``."""


@dataclass
class LoadReport:
    """Which modules loaded, which failed (name → why), and which were found but not enabled."""

    loaded: dict[str, OpenRedModule] = field(default_factory=dict)
    failed: dict[str, str] = field(default_factory=dict)
    not_enabled: list[str] = field(default_factory=list)

    def fail(self, name: str, detail: str) -> None:
        self.loaded.pop(name, None)
        self.failed[name] = detail
        logger.error("module %s disabled: %s", name, detail)


def parse_enabled(text: str) -> list[str]:
    """Module names from a setting such as ``"messaging, file_sharing"`` (validated, in order)."""
    names: list[str] = []
    for part in text.split(","):
        name = part.strip()
        if not name:
            continue
        if not _NAME.fullmatch(name):
            raise ModuleLoadError(name, "module names are lowercase letters, digits and _")
        if name not in names:
            names.append(name)
    return names


def discover() -> list[importlib.metadata.EntryPoint]:
    """The installed ``openred.modules`` entry points."""
    return list(importlib.metadata.entry_points(group=ENTRY_POINT_GROUP))


def _instantiate(entry_point: importlib.metadata.EntryPoint) -> OpenRedModule:
    target = entry_point.load()
    module = target() if isinstance(target, type) else target
    missing = [h for h in HOOKS if not callable(getattr(module, h, None))]
    if missing:
        raise ModuleLoadError(entry_point.name, f"missing hooks {missing}")
    if getattr(module, "name", None) != entry_point.name:
        named = getattr(module, "name", None)
        raise ModuleLoadError(entry_point.name, f"the module calls itself {named!r}")
    return cast(OpenRedModule, module)


def load_modules(
    enabled: Collection[str],
    *,
    events: EventRegistry,
    projections: ProjectionRegistry,
    methods: MethodRegistry,
    entry_points: Iterable[importlib.metadata.EntryPoint] | None = None,
) -> tuple[LoadReport, ProjectionRegistry, MethodRegistry]:
    """Load the enabled modules; the report and the registries with their additions.

    ``projections`` and ``methods`` are not changed: the returned registries are new ones that
    hold what every successfully loaded module added. Event types are declared on ``events``
    directly (declaring a type is idempotent and cannot clash).
    """
    report = LoadReport()
    found = {ep.name: ep for ep in (discover() if entry_points is None else entry_points)}
    report.not_enabled = sorted(set(found) - set(enabled))
    for name in enabled:
        if name not in found:
            report.fail(name, "enabled but not installed (no such entry point)")
            continue
        try:
            module = _instantiate(found[name])
            trial_methods = methods.copy()
            module.register_crypto_methods(trial_methods)
            trial_projections = ProjectionRegistry(projections)
            if name not in BUILTIN_MODULES:
                module.register_projections(trial_projections)
            module.register_events(events)
        except Exception as exc:  # a broken module must not take the node down
            report.fail(name, f"{type(exc).__name__}: {exc}")
            continue
        methods, projections = trial_methods, trial_projections
        report.loaded[name] = module
    return report, projections, methods


def install_app_hooks(app: Any, report: LoadReport) -> None:
    """Run each loaded module's middleware and route hooks; a failing module is dropped."""
    for name, module in list(report.loaded.items()):
        hook: Callable[[Any], None]
        for hook in (module.register_middleware, module.register_routes):
            try:
                hook(app)
            except Exception as exc:  # reported, the node keeps serving the others
                report.fail(name, f"{hook.__name__}: {type(exc).__name__}: {exc}")
                break


def install_admin_hooks(admin_app: Any, report: LoadReport) -> None:
    """Run each loaded module's optional ``register_admin_routes``; a failure is reported."""
    for name, module in list(report.loaded.items()):
        hook = getattr(module, "register_admin_routes", None)
        if not callable(hook):
            continue
        try:
            hook(admin_app)
        except Exception as exc:  # the admin API keeps the other modules' routes
            report.fail(name, f"register_admin_routes: {type(exc).__name__}: {exc}")


def install_cli_hooks(group: Any) -> list[str]:
    """Let every installed module add CLI commands to ``group``; the modules that failed.

    The CLI does not know which modules a node enables, so every installed one may add
    commands (they talk to the admin API, which answers 404 for a module that is not loaded).
    """
    failed: list[str] = []
    for entry_point in discover():
        try:
            module = _instantiate(entry_point)
            hook = getattr(module, "register_cli", None)
            if callable(hook):
                hook(group)
        except Exception as exc:  # a broken module must not take the CLI down
            logger.warning("module %s: register_cli failed: %s", entry_point.name, exc)
            failed.append(entry_point.name)
    return failed
