"""Installing the monitoring instruments on the node and the directory apps (imports Quart).

:func:`monitor_node` runs from the monitoring module's ``register_middleware`` hook, once the
node's services are open; :func:`monitor_directory` from the directory app's startup. Both put
the app's :class:`~openred.web.metrics.Metrics` in ``app.extensions`` and, when
``OPENRED_METRICS_ADDRESS`` is set, serve ``GET /metrics`` on that address with a listener of
its own (stopped with the app).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
import os
import secrets
import socket
from collections import Counter
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from sqlmodel import select

from openred.errors import ConfigurationError, TransportError
from openred.web.browsers import is_loopback_host
from openred.web.logging import Reachability, bind_node_id, install_request_ids
from openred.web.metrics import (
    CONTENT_TYPE,
    METRICS_EXTENSION,
    Metrics,
    install_request_metrics,
    metrics_app,
    parse_address,
)

if TYPE_CHECKING:
    from quart import Quart

__all__ = ["METRICS_ADDRESS", "SeriesNames", "monitor_directory", "monitor_node",
           "register_admin_metrics", "watch_reachability"]

logger = logging.getLogger("openred.monitoring")

METRICS_ADDRESS = "OPENRED_METRICS_ADDRESS"
NODE_EXTENSION = "openred.node"
REACHABILITY_EXTENSION = "openred.reachability"


class SeriesNames:
    """The ``openred_dependency_up`` label of a reachability target, never its address.

    ``directory`` stays itself; ``peer host:port`` (a node's) and ``node host:port`` (the
    directory's targets) become ``peer <16 hex digits>`` and ``node <…>``: an HMAC of the
    target under a key this process draws at start. Whoever reads the metrics (a listener on
    0.0.0.0 for a Prometheus elsewhere) sees how many peers answer, not where they are; the
    first time a target gets a series, one INFO line of the service's own log names both
    (``DependencySeries``). The names change when the process restarts.
    """

    def __init__(self, key: bytes | None = None) -> None:
        self._key = key if key is not None else secrets.token_bytes(32)
        self._named: set[str] = set()

    def name(self, target: str) -> str:
        kind, space, _ = target.partition(" ")
        if not space:
            return target
        digest = hmac.new(self._key, target.encode("utf-8"), hashlib.sha256).hexdigest()
        return f"{kind} {digest[:16]}"

    def __call__(self, target: str) -> str:
        """:meth:`name`, logging the pair the first time."""
        name = self.name(target)
        if name != target and target not in self._named:
            self._named.add(target)
            logger.info("%s is %s in the metrics", target, name,
                        extra={"event": "DependencySeries", "target": target, "series": name})
        return name

    def forget(self, target: str) -> None:
        self._named.discard(target)


def _reachability(metrics: Metrics) -> Reachability:
    """Reachability whose changes set ``openred_dependency_up`` (and forget its series).

    At most ``Reachability.MAX_TARGETS`` series, each named by :class:`SeriesNames`.
    """
    names = SeriesNames()

    def forget(target: str) -> None:
        with contextlib.suppress(KeyError):
            metrics.dependency_up.remove(names.name(target))
        names.forget(target)

    return Reachability(on_change=lambda target, up: metrics.dependency_up.labels(
        names(target)).set(1 if up else 0), on_forget=forget)


def watch_reachability(http: Any, reachability: Reachability, name_of: Any) -> None:
    """Report each outbound request's target as answering or not (wraps ``http.request``).

    ``name_of(url)`` names the target (``directory``, ``peer host:port``). A transport failure
    (no connection, timeout, 502/503/504 after retries) marks it unreachable; any answer from it
    marks it reachable again.
    """
    request = http.request

    async def watched(method: str, url: str, **kwargs: Any) -> Any:
        target = name_of(url)
        try:
            reply = await request(method, url, **kwargs)
        except TransportError as exc:
            reachability.failed(target, str(exc))
            raise
        reachability.answered(target)
        return reply

    http.request = watched


def _listen(environ: Mapping[str, str]) -> tuple[str, int, int] | None:
    """Bind ``OPENRED_METRICS_ADDRESS`` now, before anything is installed: (host, port, fd).

    The listener's socket is bound here and handed to Hypercorn as ``fd://``. Hypercorn
    binding it itself, in a task of its own, failed in that task with nothing said: with
    another local process listening there first, Prometheus scraped whatever that process
    answered while the node had logged ``metrics on …``. A ConfigurationError now (the node
    reports the monitoring module failed with it; the directory does not start).
    """
    text = environ.get(METRICS_ADDRESS, "").strip()
    if not text:
        return None
    host, port = parse_address(text)
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        raise ConfigurationError(
            f"cannot listen on {METRICS_ADDRESS} {text}: {exc.strerror or exc}") from None
    return host, port, sock.detach()


def _start_listener(app: Quart, metrics: Metrics, bound: tuple[str, int, int] | None) -> None:
    if bound is None:
        return
    host, port, fd = bound
    from openred.web.serve import hypercorn_config, serve_app

    config = hypercorn_config(host, port)
    config.bind = [f"fd://{fd}"]
    stop = asyncio.Event()
    task = asyncio.get_running_loop().create_task(serve_app(
        metrics_app(metrics, loopback=is_loopback_host(host)), config, shutdown=stop,
        install_signals=False))
    logger.info("metrics on http://%s:%d/metrics", host, port, extra={"event": "MetricsServing"})

    @app.after_serving
    async def stop_listener() -> None:
        stop.set()
        with contextlib.suppress(Exception):
            await task


def _install(app: Any, metrics: Metrics, reachability: Reachability) -> None:
    install_request_ids(app)
    install_request_metrics(app, metrics)
    app.extensions[REACHABILITY_EXTENSION] = reachability


def monitor_node(app: Any, *, environ: Mapping[str, str] | None = None) -> Metrics:
    """Instrument a node app whose services are open; its Metrics."""
    from openred.node.readmodels import PeerRow

    bound = _listen(os.environ if environ is None else environ)
    services = app.extensions[NODE_EXTENSION]
    bind_node_id(str(services.keys.node_id))
    metrics = Metrics("node")
    reachability = _reachability(metrics)
    _install(app, metrics, reachability)
    metrics.watch_store(services.store)
    metrics.watch_jail(services.jail)
    directory = services.settings.directory_url

    def name_of(url: str) -> str:
        if directory and url.startswith(directory):
            return "directory"
        return f"peer {urlsplit(url).netloc}"

    watch_reachability(services.http, reachability, name_of)

    async def sample(m: Metrics) -> None:
        sessions = await services.book.sessions()
        states = Counter(row.state for row in sessions)
        for state in ("active", "expired", "closed"):
            states.setdefault(state, 0)
        for state, count in states.items():
            m.sessions.labels(state).set(count)
        connected = {row.peer for row in sessions if row.state == "active"}
        async with services.reads.session() as s:
            peers = {row.node_id for row in (await s.exec(select(PeerRow))).all()}
        m.peers.labels("connected").set(len(peers & connected))
        m.peers.labels("known").set(len(peers - connected))

    metrics.add_sampler(sample)
    _start_listener(app, metrics, bound)
    return metrics


def monitor_directory(app: Any, service: Any, *,
                      environ: Mapping[str, str] | None = None) -> Metrics:
    """Instrument the directory app and its open service; its Metrics."""
    bound = _listen(os.environ if environ is None else environ)
    bind_node_id(str(service.key.node_id))
    metrics = Metrics("directory")
    reachability = _reachability(metrics)
    _install(app, metrics, reachability)
    metrics.watch_store(service.store)
    metrics.watch_jail(service.jail)
    watch_reachability(service.http, reachability,
                       lambda url: f"node {urlsplit(url).netloc}")

    async def sample(m: Metrics) -> None:
        for status, count in (await service.counts()).items():
            m.nodes.labels(status).set(count)

    metrics.add_sampler(sample)
    _start_listener(app, metrics, bound)
    return metrics


def register_admin_metrics(admin_app: Quart) -> None:
    """Serve the node's metrics at ``GET /admin/v1/metrics`` on the admin app."""
    from quart import Response, current_app

    from openred.node.admin import ADMIN_PREFIX, NODE_APP

    @admin_app.get(f"{ADMIN_PREFIX}/metrics")
    async def admin_metrics() -> Response:
        metrics = metrics_of(current_app.extensions[NODE_APP])
        if metrics is None:
            from openred.errors import RequestRefused

            raise RequestRefused(503, "node-not-ready", "the node is starting or stopping",
                                 retry_after=1)
        return Response(await metrics.exposition(), content_type=CONTENT_TYPE)


def metrics_of(app: Any) -> Metrics | None:
    """The app's Metrics, if monitoring is installed."""
    found = app.extensions.get(METRICS_EXTENSION)
    return found if isinstance(found, Metrics) else None
