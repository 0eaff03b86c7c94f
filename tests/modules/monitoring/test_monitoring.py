"""The monitoring module on a real node: metrics parsed with prometheus-client's own parser,
scraped under load; health with the jail or the database taken away; structured logs."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from openred.crypto.client import JailClient
from openred.errors import ConfigurationError
from openred.web.logging import Reachability, configure_logging
from openred.web.metrics import Metrics, parse_address
from tests.crypto_jail.test_server import dev_keystore, short_dir, spawn_jail
from tests.node.test_app import Served, directory_app, serve_node
from tests.node.world import Directory, JailPair
from tests.servers import free_port, serve_in_loop


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of an exposition, keyed by name and sorted labels."""
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def get(url: str) -> tuple[int, Any, str]:
    async with aiohttp.ClientSession() as session, session.get(url) as resp:
        text = await resp.text()
        return resp.status, resp.headers, text


@contextlib.asynccontextmanager
async def monitored(jail: JailClient, directory: Directory, data: Path,
                    monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[tuple[Served, str]]:
    metrics_port = free_port()
    monkeypatch.setenv("OPENRED_METRICS_ADDRESS", f"127.0.0.1:{metrics_port}")
    async with serve_in_loop(directory_app(directory)) as dir_url, serve_node(
        "m", jail, data, directory.key, dir_url, modules=("messaging", "monitoring"),
    ) as node:
        yield node, f"http://127.0.0.1:{metrics_port}/metrics"


async def test_metrics_are_served_apart_from_the_p2p_port_and_parse(
    jails: JailPair, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with JailClient(jails.procs[0].socket_path) as jail, monitored(
        jail, directory, tmp_path / "m", monkeypatch) as (node, metrics_url):
        status, headers, _ = await get(f"{node.url}/api/v3/health")
        assert status == 200 and len(headers["X-Request-Id"]) >= 16
        # An encrypted call on an unknown session: refused, counted under its route template.
        async with aiohttp.ClientSession() as session, session.post(
            f"{node.url}/api/v3/p2p/messaging/send", json={"session_id": "A" * 22,
                                                            "counter": 0, "ciphertext": ""},
        ) as resp:
            assert resp.status in (400, 404)
        status, headers, text = await get(metrics_url)
        assert status == 200 and headers["Content-Type"].startswith("text/plain")
        assert (await get(f"{node.url}/metrics"))[0] == 404  # never on the P2P port
    found = samples(text)
    health = ("openred_http_requests_total",
              (("method", "GET"), ("route", "/api/v3/health"), ("status", "200")))
    assert found[health] == 1
    p2p = [k for k in found if k[0] == "openred_http_requests_total"
           and ("route", "/api/v3/p2p/<module>/<action>") in k[1]]
    assert len(p2p) == 1 and found[p2p[0]] == 1
    assert found[("openred_http_request_duration_seconds_count",
                  (("method", "GET"), ("route", "/api/v3/health")))] == 1
    assert found[("openred_jail_call_duration_seconds_count", (("op", "public_keys"),))] >= 1
    assert found[("openred_log_entries", ())] >= 1
    assert found[("openred_sessions", (("state", "active"),))] == 0
    assert ("openred_peers", (("state", "known"),)) in found
    assert ("openred_handshakes_rejected_total", ()) not in found  # labelled: no empty sample


async def test_reachability_series_do_not_name_peers_addresses(
    jails: JailPair, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``openred_dependency_up`` was labelled ``peer host:port``: with the metrics listener on
    0.0.0.0 (as a Prometheus elsewhere needs), whoever reached that port read the address of
    every peer the node talked to. The label is now a key nobody outside the node can map
    back to an address; the node's own log names both."""
    caplog.set_level(logging.INFO, "openred")
    async with JailClient(jails.procs[0].socket_path) as jail, monitored(
        jail, directory, tmp_path / "m", monkeypatch) as (node, metrics_url):
        peer = node.url.removeprefix("http://")  # any URL that answers will do as a peer's
        reply = await node.services.http.request("GET", f"{node.url}/api/v3/health")
        assert reply.status == 200
        text = (await get(metrics_url))[2]
    up = {dict(k[1])["dependency"]: v for k, v in samples(text).items()
          if k[0] == "openred_dependency_up"}
    peers = [label for label in up if label.startswith("peer ")]
    assert len(peers) == 1 and up[peers[0]] == 1, up
    assert peer not in text and peer.split(":")[1] not in peers[0]
    assert any(getattr(r, "series", None) == peers[0] and getattr(r, "target", "") ==
               f"peer {peer}" for r in caplog.records)


async def test_scraping_under_load_counts_every_request(
    jails: JailPair, directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    async with JailClient(jails.procs[0].socket_path) as jail, monitored(
        jail, directory, tmp_path / "m", monkeypatch) as (node, metrics_url):
        async with aiohttp.ClientSession() as session:
            async def hit() -> int:
                async with session.get(f"{node.url}/api/v3/health") as resp:
                    return resp.status

            async def scrape() -> str:
                async with session.get(metrics_url) as resp:
                    assert resp.status == 200
                    return await resp.text()

            results = await asyncio.gather(*[hit() for _ in range(150)],
                                           *[scrape() for _ in range(20)])
        assert results[:150] == [200] * 150
        for text in results[150:]:
            assert isinstance(text, str)
            samples(text)  # every scrape taken during the load parses
        final = samples((await get(metrics_url))[2])
    key = ("openred_http_requests_total",
           (("method", "GET"), ("route", "/api/v3/health"), ("status", "200")))
    assert final[key] == 150


async def test_health_names_the_jail_when_it_is_gone_and_the_database_when_unwritable(
    directory: Directory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = short_dir()
    keystore, _ = dev_keystore(root)
    (root / "s").mkdir(mode=0o700)
    proc = spawn_jail(keystore, root / "s" / "j.sock")
    try:
        async with JailClient(proc.socket_path, reconnect_timeout=0.5) as jail, monitored(
            jail, directory, tmp_path / "m", monkeypatch) as (node, metrics_url):
            assert (await get(f"{node.url}/api/v3/health"))[0] == 200
            proc.stop()
            status, headers, text = await get(f"{node.url}/api/v3/health")
            assert status == 503, text
            assert headers["Content-Type"].startswith("application/problem+json")
            body = json.loads(text)
            assert body["failing"] == ["jail"] and body["type"].endswith(":unhealthy")
            assert headers["Retry-After"] == "5"

            database = node.data / "openred.db"
            moved = node.data / "moved.db"
            os.rename(database, moved)
            status, _, text = await get(f"{node.url}/api/v3/health")
            assert status == 503
            assert sorted(json.loads(text)["failing"]) == ["database", "jail"]
            os.rename(moved, database)
            failures = samples((await get(metrics_url))[2])
            assert any(k[0] == "openred_jail_call_failures_total" for k in failures)
    finally:
        proc.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_health_names_the_directory_when_it_is_unreachable(
    jails: JailPair, directory: Directory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "openred")
    async with JailClient(jails.procs[1].socket_path) as jail, serve_node(
        "n", jail, tmp_path / "n", directory.key, f"http://127.0.0.1:{free_port()}",
    ) as node:
        status, _, text = await get(f"{node.url}/api/v3/health")
    assert status == 503 and json.loads(text)["failing"] == ["directory"]


def release(handler: logging.Handler) -> None:
    root = logging.getLogger()
    root.removeHandler(handler)
    root.setLevel(logging.WARNING)


def test_reachability_logs_once_down_and_once_back() -> None:
    stream = io.StringIO()
    handler = configure_logging(fmt="json", node_id="n" * 32, stream=stream)
    changes: list[tuple[str, bool]] = []
    tracker = Reachability(on_change=lambda target, up: changes.append((target, up)))
    tracker.answered("peer example:1")
    tracker.failed("directory", "connection refused")
    tracker.failed("directory", "connection refused")
    tracker.answered("directory")
    tracker.answered("directory")
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [(x["level"], x["event"]) for x in lines] == [
        ("ERROR", "DependencyUnreachable"), ("INFO", "DependencyReachable")]
    assert all(x["node_id"] == "n" * 32 and x["target"] == "directory" for x in lines)
    assert changes == [("peer example:1", True), ("directory", False), ("directory", True)]
    release(handler)


def test_console_format_is_the_default_and_bad_formats_are_refused() -> None:
    stream = io.StringIO()
    handler = configure_logging(stream=stream, environ={})
    logging.getLogger("openred.test").warning("hello %s", "there", extra={"event": "Greeted"})
    release(handler)
    line = stream.getvalue().strip()
    assert "WARNING" in line and "[Greeted] hello there" in line and not line.startswith("{")
    with pytest.raises(ConfigurationError):
        configure_logging(environ={"OPENRED_LOG_FORMAT": "xml"})


def test_metrics_address_parsing() -> None:
    assert parse_address("127.0.0.1:9464") == ("127.0.0.1", 9464)
    assert parse_address("[::1]:9464") == ("::1", 9464)
    for bad in ("9464", "host:", "host:0", "host:70000", ":80"):
        with pytest.raises(ConfigurationError):
            parse_address(bad)


def test_each_metrics_object_has_its_own_registry() -> None:
    one, two = Metrics("node"), Metrics("node")
    one.tokens_expired.inc()
    one.file_transfer_bytes.labels("sent").inc(1024)
    first = samples(generate_latest(one.registry).decode())
    second = samples(generate_latest(two.registry).decode())
    assert first[("openred_tokens_expired_total", ())] == 1
    assert first[("openred_file_transfer_bytes_total", (("direction", "sent"),))] == 1024
    assert second[("openred_tokens_expired_total", ())] == 0


def test_reachability_forgets_the_target_heard_of_least_recently() -> None:
    forgotten: list[str] = []
    tracker = Reachability(logger=logging.getLogger("test.reachability"),
                           on_forget=forgotten.append, max_targets=2)
    tracker.failed("a", "down")
    tracker.answered("b")
    tracker.answered("a")  # a is now the most recent
    tracker.answered("c")
    assert forgotten == ["b"] and len(tracker) == 2 and not tracker.is_down("a")
    tracker.failed("d", "down")
    assert forgotten == ["b", "a"] and tracker.is_down("d")


async def test_public_health_names_the_failing_part_but_not_its_error_text(
    jails: JailPair, directory: Directory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """GET /api/v3/health is on the public port: anyone may ask. A failing check's error text
    (the data directory's path, the directory's address, the exception) is for the operator's
    log and admin status, not for the world."""
    caplog.set_level(logging.WARNING, "openred")
    dir_port = free_port()
    async with JailClient(jails.procs[1].socket_path) as jail, serve_node(
        "n", jail, tmp_path / "n", directory.key, f"http://127.0.0.1:{dir_port}",
    ) as node:
        database = node.data / "openred.db"
        moved = node.data / "moved.db"
        os.rename(database, moved)
        try:
            status, _, text = await get(f"{node.url}/api/v3/health")
        finally:
            os.rename(moved, database)
    body = json.loads(text)
    assert status == 503 and sorted(body["failing"]) == ["database", "directory"]
    for secret in (str(tmp_path), "openred.db", str(dir_port), "Error"):
        assert secret not in text, (secret, text)
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert "openred.db" in logged and str(dir_port) in logged  # the operator still learns why


async def test_a_failing_health_check_is_logged_when_it_starts_and_ends_not_per_request(
    jails: JailPair, directory: Directory, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """An outside probe asking through a directory outage wrote a WARNING per request."""
    caplog.set_level(logging.INFO, "openred")
    async with JailClient(jails.procs[1].socket_path) as jail, serve_node(
        "n", jail, tmp_path / "n", directory.key, f"http://127.0.0.1:{free_port()}",
    ) as node:
        caplog.clear()
        for _ in range(3):
            status, _, _ = await get(f"{node.url}/api/v3/health")
            assert status == 503
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "openred.health"]
    assert events == ["HealthCheckFailing"]
    # nor does the 503 problem itself log a WARNING per request
    unhealthy = [r for r in caplog.records if r.levelno >= logging.WARNING
                 and "unhealthy" in r.getMessage()]
    assert unhealthy == []


async def test_shared_checks_log_each_change_of_the_failing_parts_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from openred.modules.monitoring.health import Probe, SharedChecks

    caplog.set_level(logging.INFO, "openred.health")
    down = {"directory": True}

    async def directory_probe() -> None:
        if down["directory"]:
            raise ConnectionError("refused")

    async def fine() -> None:
        return None

    def probes() -> dict[str, Probe]:
        return {"jail": fine, "directory": directory_probe}

    shared = SharedChecks()
    for state in (True, True, False, False, True):
        down["directory"] = state
        await shared.run(probes)
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "openred.health"]
    assert events == ["HealthCheckFailing", "HealthCheckPassing", "HealthCheckFailing"]
