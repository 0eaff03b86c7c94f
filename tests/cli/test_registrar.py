"""The registrar against a scripted directory: versions, NodeRegistered once, 404 → register."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from quart import Quart, Response, request

from openred.crypto.client import JailClient
from openred.crypto.records import SignedNodeRecord, verify_signed_record
from openred.errors import NodeRefused
from openred.node.lifecycle import MAX_HEARTBEAT_INTERVAL, RECORD_FILE, Registrar
from openred.node.services import NodeServices
from openred.node.settings import NodeSettings
from tests.node.world import JailPair
from tests.servers import free_port, serve_in_loop

KEY = "PKQ1yLMr6W6wCGTapSUzkElojDYEehRbKcEiinBJLTM"


@pytest.fixture(scope="module")
def jails() -> Iterator[JailPair]:
    pair = JailPair()
    yield pair
    pair.stop()


class ScriptedDirectory:
    def __init__(self) -> None:
        self.records: list[SignedNodeRecord] = []
        self.heartbeats: list[int] = []  # statuses to answer, then 200
        self.bodies: list[bytes] = []  # 200 bodies to answer, then the honest one
        self.beats = 0
        self.retry_after = "7"
        self.app = Quart("scripted-directory")

        @self.app.post("/api/v3/nodes/register")
        async def register() -> tuple[dict[str, Any], int]:
            assert "Signature" in request.headers
            signed = SignedNodeRecord.from_wire(await request.get_json())
            verify_signed_record(signed)
            self.records.append(signed)
            return {"status": "active"}, 201

        @self.app.post("/api/v3/tokens/request-connection")
        async def request_connection() -> Response:
            # 429 with a Retry-After of the test's choice (Quart sends it as UTF-8).
            return Response(json.dumps({"type": "urn:openred:problem:rate-limited",
                                        "title": "Too Many Requests", "status": 429}),
                            429, {"Retry-After": self.retry_after},
                            content_type="application/problem+json")

        @self.app.post("/api/v3/nodes/heartbeat")
        async def heartbeat() -> Any:
            self.beats += 1
            if self.bodies:
                return Response(self.bodies.pop(0), 200, content_type="application/json")
            status = self.heartbeats.pop(0) if self.heartbeats else 200
            return {"node_id": "x", "status": "active", "last_seen": 1,
                    "heartbeat_interval": 1}, status


@contextlib.asynccontextmanager
async def node(jails: JailPair, data: Path, directory_url: str,
               port: int = 8710) -> AsyncIterator[NodeServices]:
    settings = NodeSettings(data_dir=data, port=port, allow_private_urls=True,
                            directory_url=directory_url, directory_key=KEY)
    data.mkdir(exist_ok=True)
    jail = JailClient(jails.procs[0].socket_path, timeout=10)
    services = await NodeServices.open(settings, jail)
    try:
        yield services
    finally:
        await services.close()
        await jail.close()


async def registered_events(services: NodeServices) -> int:
    return sum(e.type == "NodeRegistered" for e in await services.store.read())


async def test_the_record_version_grows_only_when_the_node_changes(
    jails: JailPair, tmp_path: Path,
) -> None:
    directory = ScriptedDirectory()
    async with serve_in_loop(directory.app) as url:
        async with node(jails, tmp_path / "n", url) as services:
            registrar = Registrar(services)
            assert await registrar.register()
            assert (await registrar.current_record()).record.version == 1
            assert await registrar.register()  # same record again: logged once
            assert await registered_events(services) == 1
        async with node(jails, tmp_path / "n", url) as services:
            registrar = Registrar(services)
            assert (await registrar.current_record()).record.version == 1
        async with node(jails, tmp_path / "n", url, port=8799) as services:
            registrar = Registrar(services)
            record = (await registrar.current_record()).record
            assert (record.version, record.api_url) == (2, "http://127.0.0.1:8799")
            assert await registrar.register()
            assert await registered_events(services) == 2
            saved = json.loads((tmp_path / "n" / RECORD_FILE).read_text())
            assert saved["logged_version"] == 2
            services.modules.loaded.pop("messaging")
            assert (await registrar.current_record()).record.version == 3
    assert [r.record.version for r in directory.records] == [1, 1, 2]


async def test_a_forgotten_node_registers_again_and_an_absent_directory_is_reported(
    jails: JailPair, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    directory = ScriptedDirectory()
    directory.heartbeats = [404]
    async with serve_in_loop(directory.app) as url, node(jails, tmp_path / "n", url) as svc:
        registrar = Registrar(svc, retry_interval=0.05)
        task = asyncio.create_task(registrar.run())
        for _ in range(200):
            if len(directory.records) == 2 and registrar.state.last_heartbeat:
                break
            await asyncio.sleep(0.02)
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        assert len(directory.records) == 2  # registered, forgotten (404), registered again
        assert registrar.state.registered and registrar.heartbeat_interval == 1.0
    # nobody listens at the directory's URL any more
    gone = f"http://127.0.0.1:{free_port()}"
    async with node(jails, tmp_path / "m", gone) as svc:
        registrar = Registrar(svc)
        svc.settings = replace(svc.settings, directory_url=gone)
        assert not await registrar.register()
        assert registrar.state.directory_reachable is False
        assert "directory unreachable" in caplog.text and "still serving peers" in caplog.text
        assert await svc.store.read() is not None and await registered_events(svc) == 0


async def test_a_hostile_heartbeat_answer_neither_stops_nor_stalls_the_registrar(
    jails: JailPair, tmp_path: Path,
) -> None:
    """A directory (compromised, or anyone on its path) answering a heartbeat with a body
    that is not JSON, or an interval of 10^400 s (no float holds it) or 10^9 s, stopped the
    node's heartbeats until it was restarted: the registrar task died on the exception, or
    slept for years, and stayed so once the directory was honest again."""
    directory = ScriptedDirectory()
    async with serve_in_loop(directory.app) as url, node(jails, tmp_path / "n", url) as svc:
        registrar = Registrar(svc)
        for interval in (10**400, 10**9, 0, -5, "60", True, None):
            directory.bodies = [json.dumps({"heartbeat_interval": interval}).encode()]
            assert await registrar.heartbeat() is True
            assert 1.0 <= registrar.heartbeat_interval <= MAX_HEARTBEAT_INTERVAL
        directory.bodies = [b"[1, 2]"]
        assert await registrar.heartbeat() is True
        registrar = Registrar(svc, retry_interval=0.05)
        directory.bodies, directory.beats = [b"<html>not json</html>"], 0
        task = asyncio.create_task(registrar.run())
        try:
            for _ in range(200):  # the first beat is answered badly, the next ones honestly
                if directory.beats >= 3 or task.done():
                    break
                await asyncio.sleep(0.02)
            assert not task.done(), task.exception()
            assert directory.beats >= 3 and registrar.heartbeat_interval == 1.0
            assert registrar.state.last_error is None
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task


async def test_the_node_lifecycle_survives_an_unexpected_failure() -> None:
    """The same mistake in the node app's lifecycle loop (renewals, key rotation, expiry):
    only an OpenRedError was caught, so anything else (a read model's database error, say)
    ended the task and no session was renewed or expired again until a restart."""
    from openred.node.app import _lifecycle

    runs: list[int] = []

    class Services:
        async def lifecycle(self) -> dict[str, int]:
            runs.append(1)
            if len(runs) == 1:
                raise RuntimeError("database is locked")
            return {}

    task = asyncio.create_task(_lifecycle(Services(), 0.01))  # type: ignore[arg-type]
    try:
        for _ in range(200):
            if len(runs) >= 3 or task.done():
                break
            await asyncio.sleep(0.01)
        assert not task.done(), task.exception()
        assert len(runs) >= 3
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_retry_after_that_only_looks_like_a_number_is_no_500(
    jails: JailPair, tmp_path: Path,
) -> None:
    """A 429 whose Retry-After is "²" (or another character ``str.isdigit`` accepts and
    ``int`` refuses) raised ValueError where the node reads a refusal from its directory or a
    peer (``_refusal_from``): a 500 from the admin API's connect or send, and, in a renewal,
    the end of the node's lifecycle task (it caught only OpenRedError)."""
    directory = ScriptedDirectory()
    async with serve_in_loop(directory.app) as url, node(jails, tmp_path / "n", url) as svc:
        for header, expected in (("\u00b2", None), ("\u0663", None), ("7", 7)):
            directory.retry_after = header
            with pytest.raises(NodeRefused) as refused:
                await svc.request_grant("A" * 32)
            assert (refused.value.status, refused.value.reason) == (429, "rate-limited")
            assert refused.value.retry_after == expected


async def test_a_hostile_directory_writes_neither_its_text_nor_a_line_per_round_into_the_log(
    jails: JailPair, tmp_path: Path, caplog: pytest.LogCaptureFixture,
) -> None:
    """A directory answering every heartbeat with a 5xx problem, its status alternating
    (500, 503, 502, …: a compromised one, or a flapping proxy in front of a restarting one)
    and its detail 100 000 characters with a line break: each round was a WARNING (the kind
    compared was the exact status, so every change was a new kind), each written whole into
    the node's log and its status (``last_error``), the line break starting a forged line."""
    statuses = [500, 503, 502, 504] * 5
    hostile = Quart("hostile-directory")

    @hostile.post("/api/v3/nodes/register")
    async def register() -> tuple[dict[str, Any], int]:
        return {"status": "active"}, 201

    @hostile.post("/api/v3/nodes/heartbeat")
    async def heartbeat() -> Response:
        detail = "x" * 100_000 + "\n12:00:00 ERROR   openred.node forged"
        return Response(json.dumps({"type": "urn:openred:problem:x", "detail": detail}),
                        statuses.pop(0), content_type="application/problem+json")

    caplog.set_level(logging.INFO, "openred.node.lifecycle")
    async with serve_in_loop(hostile) as url, node(jails, tmp_path / "n", url,
                                                    port=free_port()) as svc:
        registrar = Registrar(svc)
        assert await registrar.register()
        for _ in range(len(statuses)):
            assert await registrar.heartbeat() is False
        assert registrar.state.last_error is not None
        assert len(registrar.state.last_error) < 1000 and "\n" not in registrar.state.last_error
    lines = [r.getMessage() for r in caplog.records if r.name == "openred.node.lifecycle"
             and r.levelno >= logging.WARNING]
    assert 1 <= len(lines) <= 2, [line[:80] for line in lines]  # the outage, not each round
    assert all(len(line) < 1000 and "\n" not in line for line in lines)
