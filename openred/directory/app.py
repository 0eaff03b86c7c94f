"""The directory's Quart app: ``create_app(settings)``, served by Hypercorn (issue 7 §1)."""

from __future__ import annotations

import asyncio
import contextlib
import gc

from quart import Quart
from quart_schema import QuartSchema

from openred import __version__
from openred.crypto.client import JailClient, JailSupervisor
from openred.directory import grants, info, registry
from openred.directory.fastroutes import install_fast_routes
from openred.directory.keys import start_jail
from openred.directory.routing import EXTENSION
from openred.directory.service import DirectoryService
from openred.modules.monitoring.service import monitor_directory
from openred.settings import DirectorySettings
from openred.web.problems import install

__all__ = ["GC_YOUNG_THRESHOLD", "create_app"]

GC_YOUNG_THRESHOLD = 20_000
"""Allocations between young-generation collections while the directory serves (CPython's
default is 700). Every request allocates a few thousand short-lived containers (tasks,
futures, dicts, pydantic and SQLAlchemy objects), so the default ran a young collection every
few requests; most of those objects are freed by reference counting anyway. Measured with an
in-process driver, chunks alternating 700 and 20 000: 4-9 % less CPU per registration and per
grant (docs/decisions.md, "Directory speed, round 4")."""

_gc_users: list[tuple[int, ...]] = []
"""The collector's thresholds before the first directory of this process started serving,
once per directory serving (several serve in one test process)."""


def _serving_gc(change: int) -> None:
    """Raise the young-generation threshold while any directory of this process serves."""
    if change > 0:
        saved = _gc_users[0] if _gc_users else gc.get_threshold()
        _gc_users.append(saved)
        gc.set_threshold(GC_YOUNG_THRESHOLD, *saved[1:])
    elif _gc_users:
        saved = _gc_users.pop()
        if not _gc_users:
            gc.set_threshold(*saved)


def create_app(settings: DirectorySettings) -> Quart:
    """The directory app; its jail, store and clients open when serving starts."""
    app = Quart("openred.directory")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    QuartSchema(
        app,
        info={"title": "OpenRed directory", "version": __version__,
              "description": "Signed node records, discovery and paired connection grants. "
                             "Signed routes need an RFC 9421 signature (DESIGN §3)."},
    )
    install(app)
    for blueprint in (registry.blueprint, grants.blueprint, info.blueprint):
        app.register_blueprint(blueprint)
    # The hot routes below Quart, with Quart's answers (request ids and metrics wrap it).
    install_fast_routes(app)
    state: dict[str, object] = {}

    @app.before_serving
    async def open_service() -> None:
        supervisor, jail = await start_jail(settings)
        state["supervisor"], state["jail"] = supervisor, jail
        try:
            service = await DirectoryService.open(settings, jail)
        except BaseException:
            await jail.close()
            await supervisor.stop()
            raise
        app.extensions[EXTENSION] = service
        monitor_directory(app, service)
        state["status_task"] = asyncio.create_task(service.run_status_task())
        _serving_gc(+1)
        state["gc"] = True

    @app.after_serving
    async def close_service() -> None:
        task = state.pop("status_task", None)
        if isinstance(task, asyncio.Task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        service = app.extensions.pop(EXTENSION, None)
        if isinstance(service, DirectoryService):
            await service.close()
        jail = state.pop("jail", None)
        if isinstance(jail, JailClient):
            await jail.close()
        supervisor = state.pop("supervisor", None)
        if isinstance(supervisor, JailSupervisor):
            await supervisor.stop()
        if state.pop("gc", None):
            _serving_gc(-1)

    return app
