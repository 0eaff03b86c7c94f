"""The directory's Quart app: ``create_app(settings)``, served by Hypercorn (issue 7 §1)."""

from __future__ import annotations

import asyncio
import contextlib

from quart import Quart
from quart_schema import QuartSchema

from openred import __version__
from openred.crypto.client import JailClient, JailSupervisor
from openred.directory import grants, info, registry
from openred.directory.fastroutes import install_fast_routes
from openred.directory.keys import check_jail_seals_grants, open_jail
from openred.directory.routing import EXTENSION
from openred.directory.service import DirectoryService
from openred.modules.monitoring.service import monitor_directory
from openred.settings import DirectorySettings
from openred.web.problems import install, log_start_failures_in_one_line
from openred.web.serve import add_serve_cleanup

__all__ = ["create_app"]


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
    log_start_failures_in_one_line(app, "the directory")
    state: dict[str, object] = {}

    @app.before_serving
    async def open_service() -> None:
        # A jail the service manager runs (keys.jail_is_external) comes without a supervisor:
        # the directory only connects to it, and never stops it.
        supervisor, jail = await open_jail(settings)
        state["supervisor"], state["jail"] = supervisor, jail
        if supervisor is not None:  # stopped even if the shutdown below never runs
            add_serve_cleanup(app, supervisor.stop)
        try:
            await check_jail_seals_grants(jail, settings.socket_path)
            service = await DirectoryService.open(settings, jail)
        except BaseException:
            await jail.close()
            if supervisor is not None:
                await supervisor.stop()
            raise
        # Its signature check worker must not outlive it either (Hypercorn runs no shutdown
        # when it cannot bind after this start-up).
        add_serve_cleanup(app, service.checks.close)
        service.restore_nonces()
        try:
            monitor_directory(app, service)  # a metrics address it cannot bind: no start
        except BaseException:
            await service.close()
            await jail.close()
            if supervisor is not None:
                await supervisor.stop()
            raise
        app.extensions[EXTENSION] = service
        state["status_task"] = asyncio.create_task(service.run_status_task())

    @app.after_serving
    async def close_service() -> None:
        task = state.pop("status_task", None)
        if isinstance(task, asyncio.Task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        service = app.extensions.pop(EXTENSION, None)
        if isinstance(service, DirectoryService):
            service.save_nonces()
            await service.close()
        jail = state.pop("jail", None)
        if isinstance(jail, JailClient):
            await jail.close()
        supervisor = state.pop("supervisor", None)
        if isinstance(supervisor, JailSupervisor):
            await supervisor.stop()

    return app


