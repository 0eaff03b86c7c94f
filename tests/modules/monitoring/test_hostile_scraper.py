"""Health and metrics against a hostile scraper, on a real node served over HTTP.

``GET /api/v3/health`` is on the node's public port: anyone may ask, as often and as many at
once as they like. Each answer checks the database, the jail and the directory; what one
request costs the node must not be paid again for every request asked at the same moment.
The metrics listener (``OPENRED_METRICS_ADDRESS``) has no key either: the same for its scrapes.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path

import aiohttp
import pytest
from quart import Quart

from openred.crypto.client import JailClient
from openred.web.metrics import METRICS_EXTENSION, Metrics
from tests.modules.monitoring.test_monitoring import monitored
from tests.node.test_app import directory_app, serve_node
from tests.node.world import Directory, JailPair
from tests.servers import gets_at_once, serve_in_loop

SCRAPES = 40


def slow_directory(directory: Directory, hits: list[float], delay: float) -> Quart:
    """The test directory, whose health answers after ``delay`` seconds and is counted."""
    app = directory_app(directory)

    @app.get("/api/v3/health")
    async def health() -> dict[str, str]:
        hits.append(asyncio.get_running_loop().time())
        await asyncio.sleep(delay)
        return {"status": "ok"}

    return app


async def test_health_asked_at_once_asks_the_directory_and_the_jail_once(
    jails: JailPair, directory: Directory, tmp_path: Path,
) -> None:
    hits: list[float] = []
    async with JailClient(jails.procs[0].socket_path) as jail, serve_in_loop(
        slow_directory(directory, hits, 0.5)) as dir_url, serve_node(
        "h", jail, tmp_path / "h", directory.key, dir_url) as node:
        jail_calls: list[str] = []
        call = jail.call

        async def counted(op: str, args: dict[str, object], **kwargs: object) -> object:
            jail_calls.append(op)
            return await call(op, args, **kwargs)

        jail.call = counted  # type: ignore[method-assign]
        hits.clear()
        answers = await gets_at_once(f"{node.url}/api/v3/health", SCRAPES)
    assert [status for status, _ in answers] == [200] * SCRAPES
    # Before: one GET to the directory (and one jail call, one database probe in a thread)
    # per request: 40 scrapers held 16 of the node's connections to its directory (its
    # pool's limit per host) and queued its own registration and grant requests behind them.
    assert len(hits) <= 2, len(hits)
    assert jail_calls.count("public_keys") <= 2, jail_calls


async def test_metrics_scraped_at_once_are_sampled_once(
    jails: JailPair, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The metrics listener has no key (a Prometheus elsewhere may scrape it): every scrape
    read the node's sessions and peers from the database, once per request asked at once."""
    async with JailClient(jails.procs[1].socket_path) as jail, monitored(
        jail, directory, tmp_path / "m", monkeypatch) as (node, metrics_url):
        sampled: list[float] = []

        async def slow_sampler(metrics: Metrics) -> None:
            sampled.append(asyncio.get_running_loop().time())
            await asyncio.sleep(0.3)

        node.app.extensions[METRICS_EXTENSION].add_sampler(slow_sampler)
        answers = await gets_at_once(metrics_url, SCRAPES)
    assert {status for status, _ in answers} == {200}
    assert all(b"openred_sessions" in body for _, body in answers)
    assert len(sampled) <= 2, len(sampled)


@pytest.mark.parametrize("headers", [
    {"Host": "evil.example:9464"},  # a page whose name was made to resolve to 127.0.0.1
    {"Sec-Fetch-Site": "same-origin"},  # what a browser adds to the rebound page's fetch
    {"Sec-Fetch-Site": "cross-site"},
    {"Origin": "http://evil.example"},
])
async def test_a_browser_page_cannot_read_the_loopback_metrics(
    jails: JailPair, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    headers: dict[str, str],
) -> None:
    """The metrics listener on loopback has no key: every local program may read it, and so
    could any web page the operator opened, by DNS rebinding (the counts of messages received
    and sent, as they change, tell when the node talks). The admin API refuses browser pages
    already; the listener now does too, and Prometheus (which sends none of these) is served.
    """
    async with JailClient(jails.procs[0].socket_path) as jail, monitored(
        jail, directory, tmp_path / "m", monkeypatch) as (_, metrics_url), \
            aiohttp.ClientSession() as session:
        async with session.get(metrics_url, headers=headers) as resp:
            refused = (resp.status, resp.content_type, await resp.read())
        async with session.get(metrics_url,
                               headers={"User-Agent": "Prometheus/2.53"}) as resp:
            served = (resp.status, await resp.read())
    status, content_type, body = refused
    assert (status, content_type) == (403, "application/problem+json"), body[:200]
    assert b"openred_" not in body
    assert served[0] == 200 and b"openred_sessions" in served[1]


async def test_a_metrics_address_another_process_holds_is_an_error_not_a_silence(
    jails: JailPair, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Another local user listens on the metrics address first (after a reboot, before the
    node starts): Prometheus then scrapes whatever that process answers — all dependencies
    up, no failures. The node logged ``metrics on http://…`` at INFO and went on without its
    listener, its own failure to bind never said. Now the monitoring module fails with the
    reason (an ERROR line; the health's ``modules.failed`` names it) and the node serves on."""
    caplog.set_level(logging.INFO, "openred")
    squatter = socket.socket()
    squatter.bind(("127.0.0.1", 0))
    squatter.listen()
    port = squatter.getsockname()[1]
    monkeypatch.setenv("OPENRED_METRICS_ADDRESS", f"127.0.0.1:{port}")
    try:
        async with JailClient(jails.procs[0].socket_path) as jail, serve_in_loop(
            directory_app(directory)) as dir_url, serve_node(
            "q", jail, tmp_path / "q", directory.key, dir_url,
            modules=("messaging", "monitoring")) as node, aiohttp.ClientSession() as session, \
                session.get(f"{node.url}/api/v3/health") as resp:
            assert resp.status == 200
            health = await resp.json()
    finally:
        squatter.close()
    assert health["modules"]["failed"] == ["monitoring"], health
    assert not any(r.getMessage().startswith("metrics on ") for r in caplog.records)
    [error] = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert "monitoring" in error and f"OPENRED_METRICS_ADDRESS 127.0.0.1:{port}" in error, error


async def test_the_metrics_listener_answers_what_it_does_not_serve_with_a_problem(
    jails: JailPair, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A scraper asking the keyless listener for another path or with another method got
    Quart's own HTML page (no problem document, unlike every other answer of the node)."""
    async with JailClient(jails.procs[0].socket_path) as jail, monitored(
        jail, directory, tmp_path / "m", monkeypatch) as (_, metrics_url), \
            aiohttp.ClientSession() as session:
        answers = []
        for method, url in (("GET", metrics_url.replace("/metrics", "/nope")),
                            ("POST", metrics_url), ("GET", metrics_url + "/%ff")):
            async with session.request(method, url) as resp:
                answers.append((resp.status, resp.content_type, await resp.read()))
    assert [(s, t) for s, t, _ in answers] == [
        (404, "application/problem+json"), (405, "application/problem+json"),
        (404, "application/problem+json")], [a[2][:80] for a in answers]
