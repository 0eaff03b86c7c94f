"""Hostile clients against a real served directory: replays across a restart, address limits."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from openred.directory.app import create_app
from openred.directory.keys import create_keystore
from openred.directory.routing import EXTENSION
from openred.directory.service import NONCES_FILE, DirectoryService
from openred.settings import DirectorySettings
from tests.directory.conftest import TEST_JAIL_ENV, Directory, Node
from tests.directory.test_bad_input import signed_headers
from tests.servers import HOST, free_port, serve_in_loop


@pytest.fixture
def restartable(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> DirectorySettings:
    """Settings of one directory (data directory, port) that a test may serve several times."""
    for name, value in TEST_JAIL_ENV.items():
        monkeypatch.setenv(name, value)
    port = free_port()
    data_dir = tmp_path / "directory"
    data_dir.mkdir()
    env = {"OPENRED_ALLOW_PRIVATE_URLS": "1", "OPENRED_RATE_PER_CLIENT": "100000"}
    settings = DirectorySettings.load(data_dir, environ=env, host=HOST, port=port,
                                      jail_socket=Path(f"/tmp/openred-test-{port}/j.sock"))
    create_keystore(settings)
    return settings


@contextlib.asynccontextmanager
async def serving(settings: DirectorySettings) -> AsyncIterator[Directory]:
    app = create_app(settings)
    async with serve_in_loop(app, settings.port) as url:
        service: DirectoryService = app.extensions[EXTENSION]
        yield Directory(url, settings, service.key, service)


async def send(method: str, url: str, headers: dict[str, str], body: bytes) -> Any:
    async with aiohttp.ClientSession() as s, s.request(method, url, data=body or None,
                                                       headers=headers) as r:
        return r.status, await r.json(content_type=None)


@pytest.mark.parametrize("stop", ["clean", "crash"])
async def test_a_request_captured_before_a_restart_is_not_replayed_after_it(
        restartable: DirectorySettings, stop: str) -> None:
    """A signed DELETE seen on the wire knocked out a node that came back, once the directory
    had restarted (its nonce cache started empty). A clean stop saves the live nonces and the
    next start knows them again; after a crash (nothing saved) a signature made before the
    start cannot be known fresh and is refused. Either way 401, and the node stays."""
    async with serving(restartable) as directory:
        alice = Node(directory, api_url=directory.url)
        assert (await alice.register()).status == 201
        url = directory.url + f"/api/v3/nodes/{alice.node_id}"
        captured = await signed_headers(alice, url, b"", method="DELETE")
        assert (await send("DELETE", url, captured, b""))[0] == 200
        # Replayed at once: the nonce is remembered.
        status, problem = await send("DELETE", url, captured, b"")
        assert status == 401, problem
        # Alice comes back with a newer record.
        assert (await alice.register()).status == 201
    if stop == "crash":
        # What a killed directory leaves: no saved nonces. It restarts in a later second.
        (restartable.data_dir / NONCES_FILE).unlink()
        await asyncio.sleep(1.01 - time.time() % 1)
    # The directory restarts (same data, same port) within the signature window.
    async with serving(restartable) as directory:
        alice.directory = directory
        status, problem = await send("DELETE", url, captured, b"")
        assert status == 401, problem
        assert problem["type"] == "urn:openred:problem:bad-signature"
        assert ("replayed" if stop == "clean" else "before this service started") in (
            problem["detail"])
        found = await alice.call("GET", f"/api/v3/nodes/discover?node_id={alice.node_id}")
        assert found.status == 200 and found.json()["items"][0]["status"] == "active"
        # A request signed now still goes through.
        assert (await alice.call("POST", "/api/v3/nodes/heartbeat", {})).status == 200
