"""Serve a Quart app under Hypercorn, stopping cleanly on SIGTERM or SIGINT.

A signal sets the shutdown trigger: Hypercorn stops accepting, lets requests in flight finish
(within ``graceful_timeout``), and the app's ``after_serving`` hooks run (closing the store,
signing a last checkpoint, closing the jail client), so a stopped service leaves nothing
half-written.

Every app is served inside :class:`~openred.web.bodies.WholeBodies`: an answer given before its
request's body arrived (a 413, a 404, a route that reads no body) no longer leaves a kept-alive
client to send its next request on a connection Hypercorn is closing.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import re
import signal
from collections.abc import Awaitable, Callable
from typing import Any, Final

from hypercorn.asyncio import serve
from hypercorn.config import Config
from hypercorn.logging import Logger
from hypercorn.utils import LifespanFailureError
from quart import Quart

from openred.errors import ConfigurationError
from openred.web.bodies import DRAIN_BYTES, WholeBodies
from openred.web.logging import access_logger, error_logger

__all__ = ["ACCESS_LOG_FORMAT", "GC_THRESHOLDS", "SERVER_KEEP_ALIVE_SECONDS", "SERVE_CLEANUPS",
           "add_serve_cleanup", "freeze_startup_objects", "hypercorn_config", "run", "serve_app",
           "startup_failure", "tell_when_listening", "tune_gc"]

logger = logging.getLogger("openred.web")

SERVE_CLEANUPS: Final = "openred.serve_cleanups"
"""``app.extensions`` key: what :func:`serve_app` awaits when serving ends, however it ends."""


def add_serve_cleanup(app: Quart, cleanup: Callable[[], Awaitable[None]]) -> None:
    """Have :func:`serve_app` await ``cleanup`` when serving ends, even if the app's shutdown
    never runs: Hypercorn runs none when it fails after the app's start-up (a port in use),
    nor Quart after a start-up function failed. For what a start-up started that must not
    outlive the service (its jail); ``cleanup`` must be harmless once the shutdown ran it."""
    app.extensions.setdefault(SERVE_CLEANUPS, []).append(cleanup)


async def _run_cleanups(app: Quart) -> None:
    cleanups: list[Callable[[], Awaitable[None]]] = app.extensions.pop(SERVE_CLEANUPS, [])
    for cleanup in cleanups:
        try:
            await cleanup()
        except Exception:  # the others still run; the service is stopping anyway
            logger.exception("a clean-up after serving failed")


SERVER_KEEP_ALIVE_SECONDS: Final = 30
"""Seconds an OpenRed server (Hypercorn, :func:`hypercorn_config`) keeps an idle kept-alive
connection open before closing it. :data:`openred.web.client.POOL_IDLE_SECONDS`, how long the
outbound pool keeps one, is derived from it."""

ACCESS_LOG_FORMAT = Config.access_log_format + " request_id=%({x-request-id}o)s"
"""Hypercorn's access line, with the request id the middleware echoes in the answer."""


def hypercorn_config(
    host: str, port: int, *, access_log: bool | None = None, graceful_timeout: float = 5.0
) -> Config:
    """The Hypercorn configuration every OpenRed service (and its benchmarks) uses.

    The access log (stdout) is off unless ``access_log`` or, when it is None,
    ``OPENRED_ACCESS_LOG=1`` in the environment turns it on."""
    config = Config()
    bind_host = f"[{host}]" if ":" in host and not host.startswith("[") else host
    config.bind = [f"{bind_host}:{port}"]
    if access_log is None:
        flag = os.environ.get("OPENRED_ACCESS_LOG", "0").strip().lower()
        if flag not in ("0", "1", "", "false", "true"):
            raise ConfigurationError("OPENRED_ACCESS_LOG is 1 or 0")
        access_log = flag in ("1", "true")
    # JSON logs: access lines are JSON objects too (openred.web.logging.access_logger).
    config.accesslog = (access_logger() or "-") if access_log else None
    config.access_log_format = ACCESS_LOG_FORMAT
    config.errorlog = error_logger()
    config.graceful_timeout = graceful_timeout
    config.keep_alive_timeout = SERVER_KEEP_ALIVE_SECONDS
    config.h11_max_incomplete_size = 16 * 1024
    config.include_server_header = False
    return config


def startup_failure(exc: LifespanFailureError) -> str:
    """Why the app failed to start, without Hypercorn's "Lifespan failure in startup. '…'"."""
    text = str(exc)
    match = re.fullmatch(r"Lifespan failure in \w+\. '(.*)'", text, re.DOTALL)
    return match.group(1) if match else text


def tell_when_listening(config: Config, ready: Callable[[], None]) -> None:
    """Have Hypercorn call ``ready`` once every socket of ``config`` takes connections.

    Hypercorn binds and listens only after the app's start-up (its ``before_serving``
    functions: the jail, the log) and logs one "Running on …" info line per socket right
    after that socket is served (``hypercorn.asyncio.run.worker_serve``). Nothing else marks
    that moment, so the logger it builds from ``config`` counts those lines (whether or not
    the error log is written anywhere). A "serving on" said before it was refused to a client
    that took it at its word (``tests/cli/test_serving_line.py``). Call before serving.
    """
    expected, heard = len(config.bind), 0

    class Listening(Logger):
        async def info(self, message: str, *args: Any, **kwargs: Any) -> None:
            nonlocal heard
            await super().info(message, *args, **kwargs)
            if message.startswith("Running on "):
                heard += 1
                if heard == expected:
                    ready()

    config.logger_class = Listening


async def serve_app(
    app: Quart, config: Config, *, shutdown: asyncio.Event | None = None,
    install_signals: bool = True, ready: Callable[[], None] | None = None,
) -> None:
    """Serve until ``shutdown`` is set (or SIGTERM/SIGINT arrives when ``install_signals``).
    ``ready`` is called once the app has started and its sockets take connections
    (:func:`tell_when_listening`).

    The app is served inside :class:`~openred.web.bodies.WholeBodies` (see the module)."""
    if ready is not None:
        tell_when_listening(config, ready)
    stop = shutdown or asyncio.Event()
    loop = asyncio.get_running_loop()
    installed: list[signal.Signals] = []
    if install_signals:
        for sig in (signal.SIGTERM, signal.SIGINT):
            with contextlib.suppress(NotImplementedError, RuntimeError):
                loop.add_signal_handler(sig, stop.set)
                installed.append(sig)
    trigger: Callable[[], Awaitable[None]] = stop.wait  # type: ignore[assignment]
    try:
        largest = max(DRAIN_BYTES, app.config.get("MAX_CONTENT_LENGTH") or 0)
        await serve(WholeBodies(app, drain_bytes=largest), config, shutdown_trigger=trigger,
                    mode="asgi")
    finally:
        try:
            await _run_cleanups(app)  # e.g. the jail of an app whose port was in use
        finally:
            for sig in installed:
                loop.remove_signal_handler(sig)


GC_THRESHOLDS: Final = (20_000, 20, 50)
"""The cyclic collector's thresholds once a service has started (CPython's are 700, 10, 10).

A loaded directory allocates a few thousand container objects per request, nearly all freed by
reference counting; with CPython's 700 the collector ran about 950 young and 86 middle
collections for 4,000 grants, about 6 % of the process's CPU (timed with ``gc.callbacks``).
With 20,000 it runs 13 young ones, each over the objects alive at that moment (the requests in
flight: tens of milliseconds at most under load); cycles are still collected, later.
"""


def tune_gc() -> None:
    """Move everything alive out of the cyclic GC's sight, then collect it less often.

    A started service holds some hundred thousand long-lived objects (modules, SQLAlchemy and
    pydantic schemas, the app); every full collection walked them all again while requests
    only allocate short-lived ones. ``gc.freeze`` leaves them to reference counting alone
    (they are freed as before when released; only a cycle among them is kept). Then
    :data:`GC_THRESHOLDS`. The benchmarks' baseline servers call it too, so a ratio measures
    the service's work, not this setting.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


async def freeze_startup_objects() -> None:
    """:func:`tune_gc` once the service has started (a ``before_serving`` function)."""
    tune_gc()


def run(app: Quart, host: str, port: int, *, access_log: bool | None = None,
        ready: Callable[[], None] | None = None) -> None:
    """Serve ``app`` on ``host:port`` until SIGTERM or SIGINT (blocking); ``ready`` is called
    once it takes connections (what ``openred directory serve`` says "serving on" at).

    A port that cannot be bound or an app that fails to start is a ConfigurationError.
    Once the app has started (its own ``before_serving`` functions ran first), the objects
    it keeps are frozen out of the cyclic garbage collector (:func:`freeze_startup_objects`).
    """
    app.before_serving(freeze_startup_objects)
    try:
        asyncio.run(serve_app(app, hypercorn_config(host, port, access_log=access_log),
                              ready=ready))
    except LifespanFailureError as exc:
        raise ConfigurationError(f"the service failed to start: {startup_failure(exc)}") from exc
    except OSError as exc:
        raise ConfigurationError(f"cannot serve on {host}:{port}: {exc.strerror or exc}") from exc
