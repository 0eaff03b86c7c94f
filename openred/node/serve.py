"""``openred node serve``: the node's P2P app, its admin API and its registrar in one process.

:func:`serve_node` starts the P2P app under Hypercorn (which connects to the node's jail, or
starts it for a development keystore, and opens the node's services), then — once the services
are open — the local admin API on 127.0.0.1, the :class:`~openred.node.lifecycle.Registrar`
(registration, heartbeats) and the :class:`~openred.node.lifecycle.Housekeeper` (the tasks
modules add, such as file_sharing's offer expiry, and the projection sweep), once both
servers take connections. The admin URL is then written to ``DATA_DIR/admin-url`` for the CLI
(and removed on exit), and ``ready`` is called ("node serving on" of the command). SIGTERM or
SIGINT stops the registrar and the housekeeper first, then both servers (requests in flight
finish), then the app closes its services, store and jail.

``OPENRED_ADMIN_PORT`` sets the admin port (default: the node's port + 100).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
from collections.abc import Callable

from hypercorn.utils import LifespanFailureError
from quart import Quart

from openred.errors import ConfigurationError
from openred.modules import install_admin_hooks
from openred.node.admin import REGISTRAR, create_admin_app, explain_missing_routes
from openred.node.admin_keys import ensure_admin_key
from openred.node.app import create_app
from openred.node.lifecycle import LIFECYCLE_TASKS, Housekeeper, LifecycleTasks, Registrar
from openred.node.routes import EXTENSION
from openred.node.services import NodeServices
from openred.node.settings import NodeSettings
from openred.settings import read_env_file
from openred.web.serve import (
    freeze_startup_objects,
    hypercorn_config,
    serve_app,
    startup_failure,
)

__all__ = ["ADMIN_URL_FILE", "admin_port", "run_node", "serve_node"]

logger = logging.getLogger("openred.node")

ADMIN_URL_FILE = "admin-url"
ADMIN_HOST = "127.0.0.1"


def admin_port(settings: NodeSettings) -> int:
    """``OPENRED_ADMIN_PORT`` (environment, then .env), else the node's port + 100."""
    raw = os.environ.get("OPENRED_ADMIN_PORT") or read_env_file(
        settings.data_dir / ".env").get("OPENRED_ADMIN_PORT")
    if not raw:
        return settings.port + 100
    try:
        port = int(raw)
    except ValueError:
        raise ConfigurationError(f"OPENRED_ADMIN_PORT={raw!r} is not an integer") from None
    if not 0 < port < 65536:
        raise ConfigurationError("OPENRED_ADMIN_PORT must be 1..65535")
    return port


async def _ready(app: Quart, task: asyncio.Task[None]) -> NodeServices:
    while True:
        services = app.extensions.get(EXTENSION)
        if isinstance(services, NodeServices):
            return services
        if task.done():
            task.result()
            raise ConfigurationError("the node stopped before it was ready")
        await asyncio.sleep(0.02)


async def _listening(events: list[asyncio.Event], servers: list[asyncio.Task[None]],
                     stop: asyncio.Event) -> bool:
    """Wait until every event is set (each server takes connections): True; False if ``stop``
    came first; a server's own error if one ended before."""
    async def all_set() -> None:
        for event in events:
            await event.wait()

    listening = asyncio.create_task(all_set())
    stopping = asyncio.create_task(stop.wait())
    try:
        await asyncio.wait({listening, stopping, *servers}, return_when=asyncio.FIRST_COMPLETED)
        for server in servers:
            if server.done():
                server.result()
                raise ConfigurationError("the node stopped before it was serving")
        return listening.done()
    finally:
        for task in (listening, stopping):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def serve_node(
    settings: NodeSettings, *, stop: asyncio.Event | None = None,
    retry_interval: float = 5.0, ready: Callable[[], None] | None = None,
) -> None:
    """Serve the node until ``stop`` is set, or SIGTERM/SIGINT when ``stop`` is None;
    ``ready`` is called once the node and its admin API take connections."""
    admin_key = ensure_admin_key(settings.data_dir)
    port = admin_port(settings)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        with contextlib.suppress(NotImplementedError, RuntimeError):
            loop.add_signal_handler(sig, stop.set)
            installed.append(sig)
    shutdown = asyncio.Event()
    app = create_app(settings)
    tasks_registry = LifecycleTasks()
    app.extensions[LIFECYCLE_TASKS] = tasks_registry  # modules add their tasks when they load
    listening = [asyncio.Event(), asyncio.Event()]  # the node's server, the admin API's
    node_task = asyncio.create_task(serve_app(
        app, hypercorn_config(settings.host, settings.port), shutdown=shutdown,
        install_signals=False, ready=listening[0].set))
    tasks: list[asyncio.Task[None]] = [node_task]
    url_file = settings.data_dir / ADMIN_URL_FILE
    try:
        waiting = asyncio.create_task(_ready(app, node_task))
        stopping = asyncio.create_task(stop.wait())
        await asyncio.wait({waiting, stopping}, return_when=asyncio.FIRST_COMPLETED)
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await waiting
            return
        stopping.cancel()
        services = waiting.result()
        admin = create_admin_app(app, admin_key)
        install_admin_hooks(admin, services.modules)
        explain_missing_routes(admin, services.modules)
        tasks.append(asyncio.create_task(serve_app(
            admin, hypercorn_config(ADMIN_HOST, port), shutdown=shutdown,
            install_signals=False, ready=listening[1].set)))
        # Registered (the directory pushes grants here), told to the CLI and said once both
        # take connections: the services are open before the sockets listen.
        if not await _listening(listening, tasks, stop):
            return
        registrar = Registrar(services, retry_interval=retry_interval)
        app.extensions[REGISTRAR] = registrar
        registering = asyncio.create_task(registrar.run())
        housekeeping = asyncio.create_task(Housekeeper(services, tasks_registry).run())
        url_file.write_text(f"http://{ADMIN_HOST}:{port}\n", encoding="utf-8")
        logger.info("node %s serving on %s, admin API on http://%s:%d", services.keys.node_id,
                    settings.base_url, ADMIN_HOST, port)
        if ready is not None:
            ready()
        await freeze_startup_objects()  # as `openred directory serve` does (openred.web.serve.run)
        stopped = asyncio.create_task(stop.wait())
        done, _ = await asyncio.wait({stopped, *tasks}, return_when=asyncio.FIRST_COMPLETED)
        stopped.cancel()
        for duty in (registering, housekeeping):
            duty.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await duty
        for task in done:
            if task is not stopped:
                task.result()  # a server that failed: raise its error after cleanup
    finally:
        with contextlib.suppress(FileNotFoundError):
            url_file.unlink()
        shutdown.set()
        results = await asyncio.gather(*tasks, return_exceptions=True)
        for sig in installed:
            loop.remove_signal_handler(sig)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(
                result, asyncio.CancelledError
            ):
                raise result


def run_node(settings: NodeSettings, *, ready: Callable[[], None] | None = None) -> None:
    """Serve the node until SIGTERM or SIGINT (blocking); a failed start is ConfigurationError.
    ``ready``: called once it and its admin API take connections."""
    try:
        asyncio.run(serve_node(settings, ready=ready))
    except LifespanFailureError as exc:
        raise ConfigurationError(f"the node failed to start: {startup_failure(exc)}") from exc
    except OSError as exc:
        raise ConfigurationError(f"cannot serve the node: {exc.strerror or exc}") from exc
