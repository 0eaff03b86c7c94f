"""Module discovery and loading (DESIGN §11): built-ins by entry point, broken ones reported."""

from __future__ import annotations

import subprocess
import sys
from importlib.metadata import EntryPoint
from types import SimpleNamespace

import pytest

from openred.crypto.methods import MethodRegistry
from openred.errors import ModuleLoadError
from openred.modules import (
    ENTRY_POINT_GROUP,
    LoadReport,
    OpenRedModule,
    discover,
    install_app_hooks,
    load_modules,
    parse_enabled,
)
from openred.modules.messaging import MessagingModule
from openred.node.events import node_registry
from openred.node.projections import node_projections


def ep(name: str, target: str) -> EntryPoint:
    return EntryPoint(name=name, value=target, group=ENTRY_POINT_GROUP)


SAMPLES = "tests.modules.sample_modules"
ENTRY_POINTS = [
    ep("messaging", "openred.modules.messaging:MessagingModule"),
    ep("notes", f"{SAMPLES}:Notes"),
    ep("missing", f"{SAMPLES}:MissingHooks"),
    ep("misnamed", f"{SAMPLES}:Misnamed"),
    ep("clashing", f"{SAMPLES}:ClashingTables"),
    ep("broken_routes", f"{SAMPLES}:BrokenRoutes"),
    ep("broken_methods", f"{SAMPLES}:BrokenMethods"),
    ep("broken_import", "tests.modules.broken_import:Module"),
    ep("no_such", f"{SAMPLES}:DoesNotExist"),
]


def load(enabled: list[str]) -> tuple[LoadReport, list[str], MethodRegistry]:
    events = node_registry()
    report, projections, methods = load_modules(
        enabled, events=events, projections=node_projections(), methods=MethodRegistry(),
        entry_points=ENTRY_POINTS,
    )
    return report, projections.names, methods


def test_the_built_in_modules_are_declared_as_entry_points() -> None:
    found = {e.name: e for e in discover()}
    assert found["messaging"].value == "openred.modules.messaging:MessagingModule"
    assert isinstance(found["messaging"].load()(), OpenRedModule)


def test_only_enabled_modules_load() -> None:
    report, names, methods = load(["messaging"])
    assert list(report.loaded) == ["messaging"] and report.failed == {}
    assert "notes" in report.not_enabled
    assert "notes" not in names and "epsilon" not in methods
    # The built-in module's projections are part of the node kind, not registered twice.
    assert names.count("inbox") == 1


def test_a_working_module_registers_its_events_projections_and_methods() -> None:
    events = node_registry()
    report, projections, methods = load_modules(
        ["notes"], events=events, projections=node_projections(), methods=MethodRegistry(),
        entry_points=ENTRY_POINTS,
    )
    assert list(report.loaded) == ["notes"]
    assert "notes" in projections.names and events.known("NoteTaken")
    assert methods.suite("epsilon") == "25519_ChaChaPoly_SHA256"


@pytest.mark.parametrize(("name", "why"), [
    ("missing", "missing hooks"),
    ("misnamed", "calls itself 'something_else'"),
    ("clashing", "already belong to another projection"),
    ("broken_methods", "half way"),
    ("broken_import", "this module cannot be imported"),
    ("no_such", "DoesNotExist"),
    ("not_installed", "not installed"),
])
def test_a_broken_module_is_reported_and_the_others_still_load(name: str, why: str) -> None:
    report, names, methods = load(["messaging", name, "notes"])
    assert list(report.loaded) == ["messaging", "notes"]
    assert why in report.failed[name]
    # Nothing of the broken module stayed registered.
    assert "clash_notes" not in names and "zeta" not in methods
    assert "notes" in names and "epsilon" in methods


def test_a_module_whose_routes_fail_is_dropped_and_the_app_keeps_the_others() -> None:
    report, _, _ = load(["broken_routes", "notes"])
    app = SimpleNamespace(extensions={})
    install_app_hooks(app, report)
    assert list(report.loaded) == ["notes"]
    assert "cannot build blueprint" in report.failed["broken_routes"]
    assert app.extensions["routes"] == ["notes"]


def test_enabled_modules_come_from_a_comma_separated_setting() -> None:
    assert parse_enabled(" messaging, notes ,,messaging") == ["messaging", "notes"]
    assert parse_enabled("") == []
    with pytest.raises(ModuleLoadError):
        parse_enabled("messaging, ../evil")


def test_module_packages_import_no_web_framework() -> None:
    # audit_tools imports projections through these packages: they must stay light.
    code = (
        "import sys, openred.modules, openred.modules.messaging, openred.node, "
        "openred.node.projections, openred.modules.messaging.projections\n"
        "heavy = [m for m in ('quart', 'aiohttp', 'hypercorn') if m in sys.modules]\n"
        "assert not heavy, heavy\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_messaging_is_an_openred_module() -> None:
    assert isinstance(MessagingModule(), OpenRedModule)
    assert MessagingModule.name == "messaging"
