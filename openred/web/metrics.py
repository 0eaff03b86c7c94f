"""Prometheus metrics for the node and the directory (issue 10, monitoring §1).

Each app gets its own :class:`Metrics` (its own ``CollectorRegistry``), so two services in one
process, or the many apps a test suite creates, never share a counter. Standard naming:
counters end in ``_total``, latencies are ``_seconds`` histograms.

What is measured, and where:

* HTTP requests by route *template* (``/api/v3/p2p/<module>/<action>``, never the raw path, so
  the label set stays bounded) and status, and their latency — :func:`install_request_metrics`
  (an ASGI middleware around the app, :mod:`openred.web.middleware`);
* the log: appends' latency, events appended by type, and the counters derived from what was
  appended (handshakes rejected by reason, tokens expired, grants issued and failed, peer
  authentications) — :meth:`Metrics.watch_store` wraps the store's ``append``;
* jail calls' latency by operation and failures by operation and error —
  :meth:`Metrics.watch_jail` wraps the jail client's ``call``;
* gauges read when scraped (log size, sessions and peers by state, directory nodes by status)
  — :meth:`Metrics.add_sampler` registers an async function :meth:`Metrics.exposition` awaits;
* file transfer bytes: :attr:`Metrics.file_transfer_bytes` for the file_sharing module.

Wrapping an instance's method (rather than adding hooks to the store and the jail client) keeps
metrics out of the domain code: the store and the jail client stay unaware of Prometheus.
The exposition is served on the node's admin interface or on a separate loopback listener
(:func:`metrics_app`, :func:`parse_address`), never on the public P2P port.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from openred.errors import ConfigurationError
from openred.store.codec import decode_payload

if TYPE_CHECKING:
    from quart import Quart

__all__ = [
    "CONTENT_TYPE",
    "METRICS_EXTENSION",
    "Metrics",
    "install_request_metrics",
    "metrics_app",
    "parse_address",
]

CONTENT_TYPE = CONTENT_TYPE_LATEST
METRICS_EXTENSION = "openred.metrics"
"""Key of the app's :class:`Metrics` in ``app.extensions``."""

# Seconds: from a cached P2P call (~100 µs) up to a slow handshake or directory push.
_LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                    2.5, 5.0, 10.0)
_UNMATCHED = "<unmatched>"
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE",
                      "PATCH"})
"""The methods counted under their own name (RFC 9110 §9, RFC 5789): a client may send any
token as a method, and each label value is a series the registry keeps forever."""
_OTHER_METHOD = "OTHER"


def grant_failure_kind(reason: object) -> str:
    """The label of a ``ConnectionGrantFailed``: ``not-signed``, ``no-checkpoint`` or ``push``.

    The reason itself names node ids, URLs and error texts (one series per pair of nodes that
    answer nothing, kept forever): the log keeps it, the metric counts its kind.
    """
    text = str(reason)
    for prefix, kind in (("not signed:", "not-signed"), ("no checkpoint:", "no-checkpoint")):
        if text.startswith(prefix):
            return kind
    return "push"
_MAX_CHILDREN = 4096
_PEER_AUTH_RESULTS = frozenset({"unknown-challenge", "challenge-expired", "session-expired",
                                "unknown-peer", "peer-authentication-failed", "bad-answer"})
"""The refusals a challenger decides itself (``challenge.decide_answer``, ``bad-answer``)."""


def peer_authentication_result(reason: object) -> str:
    """The label of a ``PeerAuthenticationFailed``: the challenger's own refusal, or
    ``peer-refused`` for whatever the peer answered instead of a signature.

    The peer chooses its refusal's slug: one series per slug it made up was kept forever.
    The log keeps the slug; the metric counts its kind.
    """
    text = str(reason)
    return text if text in _PEER_AUTH_RESULTS else "peer-refused"

Sampler = Callable[["Metrics"], Awaitable[None]]


class Metrics:
    """Every OpenRed metric, registered in a registry of its own."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "openred_http_requests", "HTTP requests answered, by route template and status.",
            ["method", "route", "status"], registry=r)
        self.request_seconds = Histogram(
            "openred_http_request_duration_seconds", "Time to answer an HTTP request.",
            ["method", "route"], buckets=_LATENCY_BUCKETS, registry=r)
        self.log_entries = Gauge(
            "openred_log_entries", "Entries in the service's signed log.", registry=r)
        self.log_append_seconds = Histogram(
            "openred_log_append_duration_seconds",
            "Time for one append to the log (queued, signed and committed).",
            buckets=_LATENCY_BUCKETS, registry=r)
        self.log_events = Counter(
            "openred_log_events", "Events appended to the log, by type.", ["type"], registry=r)
        self.log_append_failures = Counter(
            "openred_log_append_failures", "Appends that failed, by error.", ["error"],
            registry=r)
        self.jail_seconds = Histogram(
            "openred_jail_call_duration_seconds", "Time for one call to the crypto jail.",
            ["op"], buckets=_LATENCY_BUCKETS, registry=r)
        self.jail_failures = Counter(
            "openred_jail_call_failures", "Jail calls that failed, by operation and error.",
            ["op", "error"], registry=r)
        self.sessions = Gauge(
            "openred_sessions", "P2P sessions by state.", ["state"], registry=r)
        self.peers = Gauge(
            "openred_peers", "Known peers by state (connected: an active session).",
            ["state"], registry=r)
        self.nodes = Gauge(
            "openred_directory_nodes", "Registered nodes by status (directory).", ["status"],
            registry=r)
        self.grants_issued = Counter(
            "openred_grants_issued", "Connection grants issued (directory).", registry=r)
        self.grants_failed = Counter(
            "openred_grants_failed", "Connection grants whose delivery failed (directory).",
            ["reason"], registry=r)
        self.handshakes_rejected = Counter(
            "openred_handshakes_rejected", "Handshakes refused, by reason.", ["reason"],
            registry=r)
        self.tokens_expired = Counter(
            "openred_tokens_expired", "Received tokens that expired unused.", registry=r)
        self.peer_authentications = Counter(
            "openred_peer_authentications",
            "Peer challenge-responses this node asked for, by result (ok or the refusal).",
            ["role", "result"], registry=r)
        self.file_transfer_bytes = Counter(
            "openred_file_transfer_bytes", "File bytes transferred, by direction.",
            ["direction"], registry=r)
        self.dependency_up = Gauge(
            "openred_dependency_up", "Whether a dependency answered its last check (1) or not.",
            ["dependency"], registry=r)
        self._samplers: list[Sampler] = []
        self._exposing: asyncio.Future[bytes] | None = None
        # Label children by (metric, labels): prometheus_client checks and locks on every
        # labels() call; a request only needs the child. Bounded like the label sets themselves
        # (route templates, not raw paths), and cleared if it ever grows past _MAX_CHILDREN.
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}
        self._event_counters: dict[str, Callable[[dict[str, Any]], None]] = {
            "HandshakeRejected": lambda p: self.handshakes_rejected.labels(
                str(p.get("reason", "unknown"))).inc(),
            "TokenExpired": lambda p: self.tokens_expired.inc(),
            "ConnectionGranted": lambda p: self.grants_issued.inc(),
            "ConnectionGrantFailed": lambda p: self.grants_failed.labels(
                grant_failure_kind(p.get("reason"))).inc(),
            "PeerAuthenticated": lambda p: self.peer_authentications.labels(
                "challenger", "ok").inc(),
            "PeerAuthenticationFailed": lambda p: self.peer_authentications.labels(
                "challenger", peer_authentication_result(p.get("reason"))).inc(),
        }

    # -- collection --------------------------------------------------------------------------

    def add_sampler(self, sampler: Sampler) -> None:
        """Run ``sampler`` before every exposition (to set gauges read from the database)."""
        self._samplers.append(sampler)

    def count_event(self, event_type: str, handler: Callable[[dict[str, Any]], None]) -> None:
        """Call ``handler(payload)`` for every appended event of ``event_type``."""
        self._event_counters[event_type] = handler

    async def exposition(self) -> bytes:
        """The text exposition (format 0.0.4), gauges sampled first.

        One at a time, shared by every scrape that asks meanwhile: the metrics listener has
        no key, and each sampling reads the database (sessions, peers, the directory's nodes),
        so 40 scrapes at once read it 40 times. A scrape that arrives after a run started
        waits for it; one that arrives after it ended starts a new one. Shielded: a scraper
        that hangs up does not cancel the run for the others.
        """
        running = self._exposing
        if running is None or running.done():
            running = self._exposing = asyncio.ensure_future(self._expose())
        return await asyncio.shield(running)

    async def _expose(self) -> bytes:
        for sampler in self._samplers:
            await sampler(self)
        return generate_latest(self.registry)

    def observe_request(self, method: str, route: str | None, status: int,
                        seconds: float) -> None:
        template = route or _UNMATCHED
        if method not in _METHODS:
            method = _OTHER_METHOD
        self._child(self.requests, method, template, str(status)).inc()
        self._child(self.request_seconds, method, template).observe(seconds)

    def _child(self, metric: Any, *labels: str) -> Any:
        """``metric.labels(*labels)``, remembered (bounded, see ``_children``)."""
        key = (id(metric), labels)
        child = self._children.get(key)
        if child is None:
            if len(self._children) >= _MAX_CHILDREN:
                self._children.clear()
            child = self._children[key] = metric.labels(*labels)
        return child

    # -- instrumenting the store and the jail client -------------------------------------------

    def watch_store(self, store: Any) -> None:
        """Time the store's appends and count what they append (wraps ``store.append``)."""
        append = store.append

        async def timed_append(events: Sequence[Any]) -> Any:
            start = time.perf_counter()
            try:
                stored = await append(events)
            except Exception as exc:
                self.log_append_failures.labels(type(exc).__name__).inc()
                raise
            self.log_append_seconds.observe(time.perf_counter() - start)
            for event in stored:
                self._child(self.log_events, event.type).inc()
                counter = self._event_counters.get(event.type)
                if counter is not None:
                    counter(decode_payload(event.payload))
            return stored

        store.append = timed_append

        async def sample_log(metrics: Metrics) -> None:
            metrics.log_entries.set(store.head.size)

        self.add_sampler(sample_log)

    def watch_jail(self, jail: Any) -> None:
        """Time every jail call and count its failures (wraps ``jail.call``)."""
        call = jail.call

        async def timed_call(op: str, args: dict[str, Any], **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await call(op, args, **kwargs)
            except Exception as exc:
                self.jail_failures.labels(op, type(exc).__name__).inc()
                raise
            finally:
                self._child(self.jail_seconds, op).observe(time.perf_counter() - start)

        jail.call = timed_call


def install_request_metrics(app: Quart, metrics: Metrics) -> None:
    """Count and time every request of a Quart ``app`` by its route template and status.

    Done by the app's request middleware (:mod:`openred.web.middleware`), not by request hooks;
    installing again (the app served once more) replaces the metrics it reports to.
    """
    from openred.web.middleware import request_middleware

    app.extensions[METRICS_EXTENSION] = metrics
    request_middleware(app).metrics = metrics


def metrics_app(metrics: Metrics, *, loopback: bool = True) -> Any:
    """A Quart app that serves only ``GET /metrics`` (the separate listener).

    It has no key (a Prometheus elsewhere may scrape it), so it refuses what only a browser
    page sends (403 ``metrics-browser``, :func:`openred.web.browsers.from_browser`): on a
    ``loopback`` listener, any page the operator opens could otherwise read it by DNS
    rebinding, and the counts of messages as they change tell when the node talks.
    """
    from quart import Quart, Response, request

    from openred.web.browsers import from_browser
    from openred.web.problems import install, problem_response

    app = Quart("openred.metrics")
    install(app)  # another path or method, or a failing sampler: a problem, as everywhere

    @app.get("/metrics")
    async def scrape() -> Response:
        headers = request.headers
        if from_browser(headers.get("Host"), headers.get("Origin"),
                        headers.get("Sec-Fetch-Site"), loopback=loopback):
            return problem_response(403, "metrics-browser",
                                    "the metrics answer programs such as Prometheus, not web "
                                    "pages (Host, Origin or Sec-Fetch-Site say this is one)")
        return Response(await metrics.exposition(), content_type=CONTENT_TYPE)

    return app


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) from ``OPENRED_METRICS_ADDRESS``."""
    host, sep, port = text.strip().rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not (port.isascii() and port.isdigit()) or not 0 < int(port) < 65536:
        raise ConfigurationError(
            f"OPENRED_METRICS_ADDRESS must be HOST:PORT (for example 127.0.0.1:9464), "
            f"not {text!r}")
    return host, int(port)
