"""The node's Quart app: ``create_app(settings)``, served by Hypercorn (DESIGN §10).

When serving starts it connects to (or starts) the node's jail, opens :class:`~openred.node.
services.NodeServices`, loads the enabled modules (a module that fails is reported in health and
the log, and the node runs without it) and starts the lifecycle task; when serving stops it
closes all of it in reverse order, so the log gets its last checkpoint.

The RFC 9421 nonces the node has seen (token deliveries signed by the directory) outlive a
clean restart: the app saves them when serving stops and restores them when it starts
(``DATA_DIR/nonces.json``; after a crash, signatures made before the start are refused), as
the directory does. Only the serving app touches that file, never a command opening the
services beside it (``openred node init``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from quart import Quart
from quart_schema import QuartSchema

from openred import __version__
from openred.crypto.client import JailClient, JailSupervisor
from openred.directory.keys import connect_jail
from openred.errors import OpenRedError
from openred.modules import install_app_hooks
from openred.node.fastpath import install_fast_p2p
from openred.node.routes import (
    EXTENSION,
    HANDSHAKE_LIMITER,
    HANDSHAKE_LOG_BUDGET,
    LOGGED_REFUSALS_FACTOR,
    VERIFIER,
    blueprint,
)
from openred.node.services import NodeServices
from openred.node.settings import NodeSettings
from openred.ratelimit import RateLimiter
from openred.web.problems import install, log_start_failures_in_one_line
from openred.web.serve import add_serve_cleanup
from openred.web.signatures import InboundVerifier, restore_nonces, save_nonces

__all__ = ["create_app"]

logger = logging.getLogger("openred.node")


async def _lifecycle(services: NodeServices, interval: float) -> None:
    while True:
        await asyncio.sleep(interval)
        try:
            await services.lifecycle()
        except OpenRedError as exc:  # the next run tries again
            logger.warning("lifecycle run failed: %s", exc)
        except Exception:  # anything else too: ended here, no session was renewed or expired
            logger.exception("lifecycle run failed")  # again until the node was restarted


def create_app(settings: NodeSettings, *, jail: JailClient | None = None) -> Quart:
    """The node app; ``jail`` is a client of an already running jail (else one is started)."""
    settings.directory_sign_key  # noqa: B018 - refuse a missing or bad pinned key up front
    app = Quart("openred.node")
    app.config["MAX_CONTENT_LENGTH"] = settings.max_body_bytes
    app.config["PROVIDE_AUTOMATIC_OPTIONS"] = False
    QuartSchema(app, info={
        "title": "OpenRed node", "version": __version__,
        "description": "Token delivery (RFC 9421 signed by the directory), the Noise KKpsk0 "
                       "handshake and encrypted P2P calls (DESIGN §6).",
    })
    install(app)
    log_start_failures_in_one_line(app, "the node")
    app.register_blueprint(blueprint)
    install_fast_p2p(app, EXTENSION)
    state: dict[str, object] = {}

    @app.before_serving
    async def open_services() -> None:
        # First of all: the earlier the floor on ``created`` after a crash, the fewer honest
        # signatures made while the node was starting it refuses.
        verifier = InboundVerifier(settings.base_url, window_seconds=settings.signature_window)
        restore_nonces(verifier, settings.data_dir)
        supervisor: JailSupervisor | None = None
        client = jail
        if client is None:
            supervisor, client = await connect_jail(settings)
            if supervisor is not None:  # stopped even if the shutdown below never runs
                add_serve_cleanup(app, supervisor.stop)
        state["supervisor"], state["jail"] = supervisor, client
        services = await NodeServices.open(settings, client)
        try:
            # Before serving: a delivery is accepted only for a grant naming this record.
            await services.current_record()
        except BaseException:
            await services.close()
            raise
        app.extensions[EXTENSION] = services
        app.extensions[VERIFIER] = verifier
        app.extensions[HANDSHAKE_LIMITER] = RateLimiter(settings.handshake_refusals, 60.0)
        app.extensions[HANDSHAKE_LOG_BUDGET] = RateLimiter(
            settings.handshake_refusals * LOGGED_REFUSALS_FACTOR, 60.0)
        app.extensions.update(services.extensions())
        install_app_hooks(app, services.modules)
        state["lifecycle"] = asyncio.create_task(
            _lifecycle(services, settings.lifecycle_interval))

    @app.after_serving
    async def close_services() -> None:
        task = state.pop("lifecycle", None)
        if isinstance(task, asyncio.Task):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        verifier = app.extensions.pop(VERIFIER, None)
        if isinstance(verifier, InboundVerifier):
            save_nonces(verifier, settings.data_dir)
        services = app.extensions.pop(EXTENSION, None)
        if isinstance(services, NodeServices):
            await services.close()
        client = state.pop("jail", None)
        if isinstance(client, JailClient) and client is not jail:
            await client.close()
        supervisor = state.pop("supervisor", None)
        if isinstance(supervisor, JailSupervisor):
            await supervisor.stop()

    return app
